"""Block sharing: aligned runs of pages fingerprinted and shared whole.

A block is an aligned run of ``block_pages`` GFNs of one domain (512 by
default: 2 MiB, a superpage). Each tick the scanner reads the next
``pages_per_tick`` pages' worth of fully populated blocks, round robin
over every domain. A block's fingerprint combines the hashes of its
pages in order; blocks with equal fingerprints are compared page by page
and, when equal, shared in one operation: every page of one block is
merged into the frame at the same offset of the other. A block with no
equal block falls back to single pages, offered to a page ``ContentTable``
with the hashes already computed. Whole-block sharing keeps the guest's
superpage layout possible and costs one operation per block; it finds
nothing in blocks that differ by a single page, which is what the
fallback catches.

Not modelled: the hypervisor keeping a shared block as a real superpage
(frames here stay 4 KiB).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dedup.arrays import unique
from dedup.content import PAGE_SIZE
from dedup.hints import BLOCK, SCAN
from dedup.memory import SAME_FRAME, HostMemory
from dedup.scan import ContentTable, ScanWork, page_hash64, tree_depth

_POS = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class BlockParams:
    """Block size and how many pages the block scanner reads per tick."""

    pages_per_tick: int = 8192
    block_pages: int = 512

    def __post_init__(self) -> None:
        b = self.block_pages
        if b < 2 or b & (b - 1):
            raise ValueError(f"block_pages must be a power of 2 >= 2, got {b}")
        if self.pages_per_tick < b:
            raise ValueError(
                f"pages_per_tick must be >= block_pages ({b}), "
                f"got {self.pages_per_tick}"
            )


def block_fingerprints(cids: np.ndarray) -> np.ndarray:
    """Fingerprint of each row of a (blocks, pages) array of contents."""
    h = page_hash64(cids).view(np.uint64)
    pos = np.arange(cids.shape[1], dtype=np.uint64)
    with np.errstate(over="ignore"):
        mixed = (h ^ (pos * _POS)) * _POS
        return mixed.sum(axis=1, dtype=np.uint64).view(np.int64)


class BlockScanner:
    """Aligned blocks fingerprinted as one unit, single pages as fallback."""

    def __init__(self, memory: HostMemory, params: BlockParams) -> None:
        self.memory = memory
        self.params = params
        self.work = ScanWork()
        self.pages = ContentTable(SCAN)
        self.keys = np.empty(0, dtype=np.int64)
        self.first = np.empty(0, dtype=np.int64)  # first slot of a block
        self._cursor = 0

    def tick(self) -> None:
        """Read the next blocks, share equal ones, fall back to pages."""
        starts = self._next_blocks()
        if starts.size == 0:
            return
        m = self.memory
        b = self.params.block_pages
        slots = starts[:, None] + np.arange(b)
        mfns = m.p2m[slots]
        full = (mfns >= 0).all(axis=1)
        starts, slots, mfns = starts[full], slots[full], mfns[full]
        self.work.pages_scanned += int(mfns.size)
        self.work.pages_hashed += int(mfns.size)
        if starts.size == 0:
            return
        cids = m.frames.content[mfns]
        fps = block_fingerprints(cids)
        matched = self._share_blocks(starts, fps, cids, mfns)
        rest = mfns[~matched].ravel()
        self.pages.offer(m, rest, self.work)

    def _next_blocks(self) -> np.ndarray:
        """First slots of the next aligned blocks, round robin."""
        m = self.memory
        b = self.params.block_pages
        all_starts = []
        for domid in m.domains():
            base = int(m.slots(domid, np.array([0]))[0])
            n = m.domain_pages(domid) // b
            all_starts.append(base + b * np.arange(n, dtype=np.int64))
        if not all_starts:
            return np.empty(0, dtype=np.int64)
        every = np.concatenate(all_starts)
        if every.size == 0:
            return every
        k = min(self.params.pages_per_tick // b, every.size)
        take = (self._cursor + np.arange(k)) % every.size
        self._cursor = int((self._cursor + k) % every.size)
        return every[take]

    def _share_blocks(self, starts, fps, cids, mfns) -> np.ndarray:
        """Share blocks equal to a recorded or earlier block; return which
        blocks were matched."""
        m = self.memory
        b = self.params.block_pages
        order = np.argsort(fps, kind="stable")
        s_fps = fps[order]
        head = np.r_[True, s_fps[1:] != s_fps[:-1]]
        group = np.cumsum(head) - 1
        ufps = s_fps[head]
        self.work.lookups += int(ufps.size) * tree_depth(self.keys.size + 1)

        # Target block per fingerprint: the recorded one, else the first.
        pos = np.searchsorted(self.keys, ufps)
        pos_c = np.minimum(pos, max(self.keys.size - 1, 0))
        hit = np.zeros(ufps.size, dtype=bool)
        if self.keys.size:
            hit = self.keys[pos_c] == ufps
        first_of = order[np.flatnonzero(head)]
        t_slots = starts[first_of][:, None] + np.arange(b)
        rec = self.first[pos_c[hit]][:, None] + np.arange(b)
        t_slots[hit] = rec
        t_mfns = m.p2m[t_slots]
        t_ok = (t_mfns >= 0).all(axis=1)
        t_cids = np.where(
            t_mfns >= 0, m.frames.content[np.maximum(t_mfns, 0)], -1
        )

        # Compare every block with its target, page by page.
        g = group[np.argsort(order)]
        same = t_ok[g] & (cids == t_cids[g]).all(axis=1)
        is_target = (starts[:, None] + np.arange(b) == t_slots[g]).all(axis=1)
        # A block mapping the target's frames already needs no compare.
        already = (mfns == t_mfns[g]).all(axis=1)
        compared = ~is_target & ~already
        self.work.bytes_compared += int(np.count_nonzero(compared)) * (
            b * PAGE_SIZE
        )
        share = same & compared
        if share.any():
            src = t_mfns[g[share]].ravel()
            cli = mfns[share].ravel()
            differ = src != cli
            src, cli = src[differ], cli[differ]
            m.mark_page_ro(unique(np.concatenate([src, cli])))
            codes = m.share_mfns(src, cli, BLOCK)
            self.work.hypercalls += 2
            self.work.share_ops += int(np.count_nonzero(share))
            if np.any(codes > SAME_FRAME):
                raise AssertionError("block share refused a verified pair")

        # Record the first slot of each fingerprint's block.
        self._record(ufps, np.where(t_ok, t_slots[:, 0], starts[first_of]))
        return same & ~is_target

    def _record(self, keys: np.ndarray, first: np.ndarray) -> None:
        pos = np.searchsorted(self.keys, keys)
        hit = np.zeros(keys.size, dtype=bool)
        inside = pos < self.keys.size
        hit[inside] = self.keys[pos[inside]] == keys[inside]
        self.first[pos[hit]] = first[hit]
        self.keys = np.insert(self.keys, pos[~hit], keys[~hit])
        self.first = np.insert(self.first, pos[~hit], first[~hit])
