"""Paravirtual hints and their verification by the CoW daemon.

A hint claims that a guest page holds known content: a block of a base
disk image read unmodified through the guest's copy-on-write disk, a page
of a shared library, or a page the guest reports as logically zero. Hints
are cheap: no page is hashed to produce them. They are never trusted.

Data structures:

- a ``HintBatch`` is four parallel arrays: the domain and GFN the hint is
  about, the hint *key* naming the claimed content (for a disk block, the
  image and block number; for a library page, the library's digest and the
  page index; one key for all zero pages) and the hint source;
- the ``HintTable`` maps each key seen so far to the frame that holds that
  content on this host and the content id the frame had when recorded,
  as sorted numpy arrays searched with ``searchsorted``.

Verification: a hint whose key is known is verified by comparing the
content of the guest's frame with the content of the recorded frame.
Content ids are exact (``dedup.content`` interns pages by comparing their
bytes), so equal ids mean equal bytes; a stale claim, a guest that wrote
the page after the hint, or two keys that collide can never merge
different pages. Only verified pairs are marked read-only and shared.

Not modelled: the hint transport (ring buffers between guests and dom0)
and its latency beyond one tick.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dedup.content import PAGE_SIZE
from dedup.frames import FREE
from dedup.memory import SAME_FRAME, SHARED, HostMemory

ZERO, DISK, LIBRARY = range(3)
SOURCES = ("zero", "disk", "library")

# What became of a hint.
OUTCOMES = (
    "shared",
    "already",
    "first",
    "mismatch",
    "unpopulated",
    "refused",
)
O_SHARED, O_ALREADY, O_FIRST, O_MISMATCH, O_UNPOPULATED, O_REFUSED = range(6)

ZERO_KEY = np.int64(0x5A45524F)  # one key for every logically zero page

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads keys so unrelated ones rarely meet."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        x = x ^ (x >> np.uint64(31))
    return x.view(np.int64)


def disk_keys(image_uid: int, blocks: np.ndarray) -> np.ndarray:
    """Keys of blocks of one base image."""
    blocks = np.asarray(blocks, dtype=np.uint64)
    return _mix((np.uint64(image_uid) << np.uint64(40)) ^ blocks)


def library_keys(digest: int, pages: np.ndarray) -> np.ndarray:
    """Keys of pages of a shared library, named by its content digest."""
    pages = np.asarray(pages, dtype=np.uint64)
    with np.errstate(over="ignore"):
        base = _mix(np.array([digest], dtype=np.uint64)).view(np.uint64)
    return _mix(base ^ pages)


@dataclass
class HintBatch:
    """Hints gathered from guests, as parallel arrays."""

    domids: np.ndarray
    gfns: np.ndarray
    keys: np.ndarray
    sources: np.ndarray

    @classmethod
    def empty(cls) -> HintBatch:
        """A batch with no hint."""
        return cls(
            np.empty(0, np.int32),
            np.empty(0, np.int64),
            np.empty(0, np.int64),
            np.empty(0, np.int8),
        )

    @classmethod
    def concat(cls, batches: list[HintBatch]) -> HintBatch:
        """Join batches in order."""
        if not batches:
            return cls.empty()
        return cls(
            *(
                np.concatenate([getattr(b, name) for b in batches])
                for name in ("domids", "gfns", "keys", "sources")
            )
        )

    def __len__(self) -> int:
        return int(self.gfns.size)


class HintTable:
    """Known content per hint key on one host, and hint verification."""

    def __init__(self) -> None:
        self.keys = np.empty(0, dtype=np.int64)
        self.mfns = np.empty(0, dtype=np.int64)
        self.cids = np.empty(0, dtype=np.int64)
        self.outcomes = np.zeros((len(SOURCES), len(OUTCOMES)), np.int64)
        self.bytes_compared = 0
        self.hypercalls = 0

    def __len__(self) -> int:
        return int(self.keys.size)

    def process(self, memory: HostMemory, batch: HintBatch) -> None:
        """Verify a batch of hints and share the pages they confirm.

        Hints with the same key are grouped. The group's target is the
        recorded frame when it still holds the recorded content, else the
        frame of the group's first hint. Every other hint whose frame holds
        exactly the target's content is shared into the target.
        """
        if len(batch) == 0:
            return
        f = memory.frames
        order = np.argsort(batch.keys, kind="stable")
        keys = batch.keys[order]
        sources = batch.sources[order]
        slots = memory.slots_of(batch.domids[order], batch.gfns[order])
        mfns = np.where(slots >= 0, memory.p2m[np.maximum(slots, 0)], -1)
        outcome = np.full(keys.size, O_SHARED, dtype=np.int8)
        outcome[mfns < 0] = O_UNPOPULATED

        # One target frame per key: the recorded one if still valid.
        live = mfns >= 0
        ukeys, starts, group = _group_starts(keys)
        target = self._recorded(f, ukeys)
        lead = _leaders(mfns, starts)
        fresh = target < 0
        target[fresh] = np.append(mfns, -1)[lead[fresh]]
        hint_target = target[group]

        # Verify: equal content ids are equal bytes.
        ok = live & (hint_target >= 0)
        same_frame = ok & (mfns == hint_target)
        compare = ok & ~same_frame
        self.bytes_compared += int(compare.sum()) * PAGE_SIZE
        equal = compare & (
            f.content[np.maximum(mfns, 0)]
            == f.content[np.maximum(hint_target, 0)]
        )
        outcome[compare & ~equal] = O_MISMATCH
        outcome[same_frame] = O_ALREADY
        first = lead[fresh & (lead < keys.size)]
        outcome[first[same_frame[first]]] = O_FIRST

        pairs = np.flatnonzero(equal)
        if pairs.size:
            # Marking a frame twice is harmless: no need to dedupe.
            memory.mark_page_ro(
                np.concatenate([hint_target[pairs], mfns[pairs]])
            )
            codes = memory.share_mfns(
                hint_target[pairs], mfns[pairs], sources[pairs]
            )
            self.hypercalls += 2
            outcome[pairs[codes == SAME_FRAME]] = O_ALREADY
            refused = (codes != SHARED) & (codes != SAME_FRAME)
            outcome[pairs[refused]] = O_REFUSED
        self._record(f, ukeys, target)
        np.add.at(self.outcomes, (sources, outcome), 1)

    def _recorded(self, f, ukeys: np.ndarray) -> np.ndarray:
        """Recorded frame per key, or -1 where unknown or no longer valid."""
        out = np.full(ukeys.size, -1, dtype=np.int64)
        pos, hit = self._find(ukeys)
        mfn = self.mfns[pos[hit]]
        valid = (f.owner[mfn] != FREE) & (
            f.content[mfn] == self.cids[pos[hit]]
        )
        out[np.flatnonzero(hit)[valid]] = mfn[valid]
        return out

    def _record(self, f, ukeys: np.ndarray, target: np.ndarray) -> None:
        """Remember each key's frame. A target merged away in this batch
        is not recorded; the key is learnt again from its next hint."""
        keep = target >= 0
        keep[keep] = f.owner[target[keep]] != FREE
        ukeys, target = ukeys[keep], target[keep]
        pos, hit = self._find(ukeys)
        self.mfns[pos[hit]] = target[hit]
        self.cids[pos[hit]] = f.content[target[hit]]
        new = ~hit
        self.keys = np.insert(self.keys, pos[new], ukeys[new])
        self.mfns = np.insert(self.mfns, pos[new], target[new])
        self.cids = np.insert(self.cids, pos[new], f.content[target[new]])

    def _find(self, ukeys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Insertion positions of keys and whether each is present."""
        pos = np.searchsorted(self.keys, ukeys)
        hit = np.zeros(ukeys.size, dtype=bool)
        inside = pos < self.keys.size
        hit[inside] = self.keys[pos[inside]] == ukeys[inside]
        return pos, hit


def _group_starts(
    keys: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct keys of a sorted array, where each group starts, and the
    group of every key."""
    boundary = np.ones(keys.size, dtype=bool)
    boundary[1:] = keys[1:] != keys[:-1]
    starts = np.flatnonzero(boundary)
    group = np.cumsum(boundary) - 1
    return keys[starts], starts, group


def _leaders(mfns: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per group, the index of its first hint with a populated frame, or
    ``mfns.size`` when the group has none."""
    n = mfns.size
    idx = np.where(mfns >= 0, np.arange(n), n)
    return np.minimum.reduceat(idx, starts)
