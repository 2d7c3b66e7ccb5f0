"""What content scanners share: page checksums, work counters, CPU model.

A content scanner finds duplicate pages by reading them, where hints are
told. Three live beside this module: ``dedup.ksm`` (Linux KSM's stable
and unstable trees), ``dedup.sampling`` (random sampling into a hash
table, after VMware ESX) and ``dedup.blocks`` (aligned runs of pages
fingerprinted as one unit).

Checksums. A frame's content is an exact content id (``dedup.content``),
so a scanner derives a page's checksum from that id with a splitmix64
mix instead of hashing 4 KiB of bytes it does not hold. The mix is a
bijection, so 64-bit page hashes never collide; KSM's 32-bit checksum is
its low half and can. Hashing is still *counted* per page read, and a
scanner still compares bytes (equal content ids) before every merge and
counts the bytes compared, so the work is accounted as if the bytes were
there.

Costs. ``ScanWork`` holds the running totals of what a detector did;
``CostModel`` turns them into an estimate of the daemon's CPU seconds.
The per-operation times are the model's assumptions, stated where they
are defined; the estimate ranks strategies, it does not time a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from dedup.arrays import unique
from dedup.content import PAGE_SIZE
from dedup.frames import COW_DOMAIN, FREE
from dedup.memory import SHARED, HostMemory

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
# Mixed in before hashing so that the all-zero page does not hash to 0,
# which is the value a fresh KSM rmap item holds as its old checksum.
_SALT = np.uint64(0x9E3779B97F4A7C15)


def page_hash64(cids: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each content id (a bijection: no collisions)."""
    x = np.asarray(cids, dtype=np.int64).view(np.uint64) ^ _SALT
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        x = x ^ (x >> np.uint64(31))
    return x.view(np.int64)


def page_checksum32(cids: np.ndarray) -> np.ndarray:
    """KSM-style 32-bit checksum of each content id, as uint32."""
    return (page_hash64(cids).view(np.uint64) & np.uint64(0xFFFFFFFF)).astype(
        np.uint32
    )


@dataclass
class ScanWork:
    """Running totals of the work a duplicate detector did."""

    pages_scanned: int = 0
    """Pages visited (KSM's pages_scanned)."""
    pages_hashed: int = 0
    """Pages whose 4 KiB were read to compute a checksum or hash."""
    bytes_compared: int = 0
    """Bytes compared: full compares before merges, tree and table
    compares that find equal pages."""
    lookups: int = 0
    """Steps of tree walks or table probes (one key compare each)."""
    hypercalls: int = 0
    """Hypercall batches issued (mark_page_ro, share_mfns)."""
    share_ops: int = 0
    """Share operations: one per page pair, one per block shared whole."""
    hints: int = 0
    """Hints handled (for the hint daemon)."""

    def as_dict(self, prefix: str) -> dict[str, int]:
        """The totals as ``{prefix + name: value}``."""
        return {prefix + f.name: getattr(self, f.name) for f in fields(self)}

    def add(self, other: ScanWork) -> None:
        """Add another detector's totals to these."""
        for f in fields(self):
            setattr(
                self, f.name, getattr(self, f.name) + getattr(other, f.name)
            )


WORK_FIELDS = tuple(f.name for f in fields(ScanWork))


@dataclass(frozen=True)
class CostModel:
    """Seconds of daemon CPU per unit of work.

    Hashing and comparing were measured on a 2-core VM from Python (mmh3
    of 4 KiB: 1.7 us; comparing two 4 KiB buffers: 0.35 us). The others
    are assumptions of the model: a key compare in a tree or table that
    misses the cache (0.1 us), a page visit with its page-table walk and
    rmap item (0.1 us), a hypercall round trip (1 us), remapping one page
    and flushing its TLB entries (0.5 us), and looking a hint up
    (0.2 us).
    """

    hash_page_seconds: float = 1.7e-6
    compare_page_seconds: float = 0.35e-6
    lookup_seconds: float = 0.1e-6
    visit_seconds: float = 0.1e-6
    hypercall_seconds: float = 1.0e-6
    share_op_seconds: float = 0.5e-6
    hint_seconds: float = 0.2e-6

    def cpu_seconds(self, work: ScanWork) -> float:
        """Estimated CPU seconds the daemon spent on ``work``."""
        return (
            work.pages_hashed * self.hash_page_seconds
            + work.bytes_compared / PAGE_SIZE * self.compare_page_seconds
            + work.lookups * self.lookup_seconds
            + work.pages_scanned * self.visit_seconds
            + work.hypercalls * self.hypercall_seconds
            + work.share_ops * self.share_op_seconds
            + work.hints * self.hint_seconds
        )


def tree_depth(n_nodes: int) -> int:
    """Key compares of a search in a balanced tree of ``n_nodes``."""
    return max(1, int(n_nodes).bit_length())


class ContentTable:
    """A hash table of page contents: shared frames and hint entries.

    After VMware ESX: a page whose hash is new is recorded as a *hint
    entry* (the frame that held it, not write-protected); a later page
    with the same hash is compared with that frame, re-hashed first since
    it may have changed, and when equal both are shared and the entry
    becomes a *shared* entry, which later pages join after one compare.
    Entries are sorted numpy arrays searched with ``searchsorted``; an
    entry whose frame was freed or rewritten is replaced when met.
    """

    def __init__(self, source: int) -> None:
        self.source = source
        self.keys = np.empty(0, dtype=np.int64)
        self.mfns = np.empty(0, dtype=np.int64)
        self.cids = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.keys.size)

    def offer(
        self, memory: HostMemory, mfns: np.ndarray, work: ScanWork
    ) -> None:
        """Look up hashed pages (their frames), share what matches."""
        if mfns.size == 0:
            return
        f = memory.frames
        cids = f.content[mfns]
        keys = page_hash64(cids)
        order = np.argsort(keys, kind="stable")
        keys, mfns, cids = keys[order], mfns[order], cids[order]
        start = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        ukeys = keys[start]
        group = np.repeat(
            np.arange(start.size), np.diff(np.r_[start, keys.size])
        )

        # The recorded frame of each key, if it still holds the content.
        pos = np.searchsorted(self.keys, ukeys)
        pos_c = np.minimum(pos, max(self.keys.size - 1, 0))
        hit = np.zeros(ukeys.size, dtype=bool)
        if self.keys.size:
            hit = self.keys[pos_c] == ukeys
        target = np.full(ukeys.size, -1, dtype=np.int64)
        rec = self.mfns[pos_c[hit]]
        hinted = f.owner[rec] != COW_DOMAIN
        # A hint entry's frame is read again before it is trusted.
        work.pages_hashed += int(np.count_nonzero(hinted))
        ok = (f.owner[rec] != FREE) & (f.content[rec] == self.cids[pos_c[hit]])
        target[np.flatnonzero(hit)[ok]] = rec[ok]
        fresh = target < 0
        target[fresh] = mfns[start[fresh]]
        work.lookups += int(ukeys.size) * tree_depth(len(self) + 1)

        # Every other page of the key is compared with the target.
        t = target[group]
        pairs = np.flatnonzero((mfns != t) & (f.content[t] == cids))
        work.bytes_compared += int(pairs.size) * PAGE_SIZE
        if pairs.size:
            both = unique(np.concatenate([t[pairs], mfns[pairs]]))
            memory.mark_page_ro(both)
            codes = memory.share_mfns(t[pairs], mfns[pairs], self.source)
            work.hypercalls += 2
            work.share_ops += int(np.count_nonzero(codes == SHARED))

        # Record the target of each key (shared now, or a hint entry).
        alive = f.owner[target] != FREE
        self._record(ukeys[alive], target[alive], f.content[target[alive]])

    def _record(self, keys, mfns, cids) -> None:
        pos = np.searchsorted(self.keys, keys)
        hit = np.zeros(keys.size, dtype=bool)
        inside = pos < self.keys.size
        hit[inside] = self.keys[pos[inside]] == keys[inside]
        self.mfns[pos[hit]] = mfns[hit]
        self.cids[pos[hit]] = cids[hit]
        new = ~hit
        self.keys = np.insert(self.keys, pos[new], keys[new])
        self.mfns = np.insert(self.mfns, pos[new], mfns[new])
        self.cids = np.insert(self.cids, pos[new], cids[new])
