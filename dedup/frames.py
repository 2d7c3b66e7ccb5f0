"""The frame table of one host: every machine frame and its state.

Data structures, one numpy entry per MFN (no Python object per page, so a
64 GiB host of 16 M frames costs about 400 MB):

- ``owner``: ``FREE`` for a frame in the host's free pool, ``COW_DOMAIN``
  for a shared frame (the synthetic cow domain owns every shared frame),
  otherwise the id of the domain that owns it privately.
- ``count``: how many GFNs map the frame; the size of its reverse map.
- ``ro``: the frame is write-protected; a write to it faults.
- ``content``: the content id of the frame's bytes (see ``dedup.content``).
- ``marked``: the content recorded by ``mark_page_ro``; ``NOT_MARKED``
  otherwise. A frame whose content no longer equals its mark was written
  since it was nominated and cannot be shared.
- ``source``: which kind of hint made the frame shared, to split the memory
  saved by source.
- ``mapper``: one slot (see ``dedup.memory``) known to map the frame, or
  -1. Exact while ``count`` is 1, which is the case the sharing path needs
  at speed; the full reverse map of a frame is recovered from the p2m maps.

The free pool is a stack of MFNs. Frames pushed last are taken first,
which keeps allocation deterministic.

Not modelled: NUMA nodes, frame sizes other than 4 KiB, and memory the
hypervisor keeps for itself.
"""

from __future__ import annotations

import numpy as np

FREE = -1
COW_DOMAIN = -2
NOT_MARKED = -1
NO_SOURCE = -1


class FrameTable:
    """Per-MFN state arrays and the host's pool of free frames."""

    def __init__(self, n_frames: int) -> None:
        if n_frames <= 0:
            raise ValueError(f"a host needs frames, got {n_frames}")
        self.n_frames = n_frames
        self.owner = np.full(n_frames, FREE, dtype=np.int32)
        self.count = np.zeros(n_frames, dtype=np.int32)
        self.ro = np.zeros(n_frames, dtype=bool)
        self.content = np.zeros(n_frames, dtype=np.int64)
        self.marked = np.full(n_frames, NOT_MARKED, dtype=np.int64)
        self.source = np.full(n_frames, NO_SOURCE, dtype=np.int8)
        self.mapper = np.full(n_frames, -1, dtype=np.int64)
        # Highest MFNs at the bottom of the stack: a fresh host hands out
        # frames 0, 1, 2, ... in order.
        self._free = np.arange(n_frames - 1, -1, -1, dtype=np.int64)
        self._n_free = n_frames

    @property
    def free_frames(self) -> int:
        """Frames in the free pool."""
        return self._n_free

    def take(self, n: int) -> np.ndarray:
        """Take up to ``n`` frames from the free pool (fewer if short)."""
        n = min(n, self._n_free)
        top = self._n_free
        self._n_free = top - n
        return self._free[top - n : top][::-1].copy()

    def give_back(self, mfns: np.ndarray) -> None:
        """Scrub frames and return them to the free pool."""
        if mfns.size == 0:
            return
        self.owner[mfns] = FREE
        self.count[mfns] = 0
        self.ro[mfns] = False
        self.content[mfns] = 0
        self.marked[mfns] = NOT_MARKED
        self.source[mfns] = NO_SOURCE
        self.mapper[mfns] = -1
        top = self._n_free
        self._free[top : top + mfns.size] = mfns[::-1]
        self._n_free = top + mfns.size

    def allocate(self, n: int, domid: int) -> np.ndarray:
        """Take ``n`` frames for ``domid``, logically zero and writable."""
        mfns = self.take(n)
        self.owner[mfns] = domid
        self.content[mfns] = 0
        return mfns

    def shared_mask(self) -> np.ndarray:
        """Boolean mask of frames owned by the cow domain."""
        return self.owner == COW_DOMAIN

    def census(self) -> dict[str, int]:
        """Frames by state: free, private and shared."""
        shared = int(np.count_nonzero(self.owner == COW_DOMAIN))
        private = int(np.count_nonzero(self.owner >= 0))
        return {
            "free": self._n_free,
            "private": private,
            "shared": shared,
        }

    def check(self) -> None:
        """Raise AssertionError unless the frame table is consistent.

        Frames are conserved (free + private + shared = host memory), the
        free pool holds exactly the frames marked free, a free frame has
        no mapping, a private frame exactly one, and a shared frame is
        write-protected.
        """
        census = self.census()
        total = census["free"] + census["private"] + census["shared"]
        assert total == self.n_frames, f"frames not conserved: {census}"
        pool = self._free[: self._n_free]
        assert np.all(self.owner[pool] == FREE), "pool holds a used frame"
        assert (
            np.bincount(pool, minlength=self.n_frames).max(initial=0) <= 1
        ), "pool holds a frame twice"
        free = self.owner == FREE
        assert not self.count[free].any(), "a free frame is still mapped"
        private = self.owner >= 0
        assert np.all(self.count[private] == 1), "private frame count != 1"
        shared = self.owner == COW_DOMAIN
        assert np.all(self.ro[shared]), "a shared frame is writable"
        assert np.all(self.count[shared] >= 1), "a shared frame is unmapped"
