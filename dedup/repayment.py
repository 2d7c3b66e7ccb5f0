"""Bonus pages and repayment FIFOs: where CoW faults get their frames.

Sharing frees frames, but every write to a shared frame needs one back;
in the worst case all of them at once. The host does not overcommit, so
before it lends freed frames to guests as *bonus pages* it must know
where the frames will come from when the writes arrive. Each domain that
holds bonus pages keeps a *repayment FIFO* of volatile pages (clean page
cache it can lose at any moment), never shorter than its bonus pages.
When the free pool runs dry during a fault, the host takes the oldest
volatile page of any FIFO: the domain loses that page's content and the
frame serves the fault.

Why that suffices: frames lent as bonus pages came from the free pool,
and each lent frame is matched by a FIFO entry that gives a frame back,
so free frames plus FIFO entries never fall below what the free pool held
before lending, which, without overcommit, covers every CoW fault.

Volatile pages are kept private (their domains send no hint for them), so
giving one up always frees exactly one frame.

Data structures, per domain: a FIFO as two numpy arrays, the GFNs in
insertion order and their insertion sequence numbers (global to the host,
so "oldest" compares across domains), plus the domain's bonus page count.
"""

from __future__ import annotations

import numpy as np

from dedup.memory import HostMemory


class RepaymentFifo:
    """Volatile pages of one domain, oldest first."""

    def __init__(self) -> None:
        self.gfns = np.empty(0, dtype=np.int64)
        self.seqs = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.gfns.size)

    def push(self, gfns: np.ndarray, seqs: np.ndarray) -> None:
        """Append pages, newest last."""
        self.gfns = np.concatenate([self.gfns, gfns])
        self.seqs = np.concatenate([self.seqs, seqs])

    def pop_oldest(self, n: int) -> np.ndarray:
        """Remove and return the ``n`` oldest pages."""
        out = self.gfns[:n]
        self.gfns = self.gfns[n:]
        self.seqs = self.seqs[n:]
        return out

    def discard(self, gfns: np.ndarray) -> None:
        """Drop pages that are no longer volatile."""
        keep = ~np.isin(self.gfns, gfns)
        self.gfns = self.gfns[keep]
        self.seqs = self.seqs[keep]


class Repayment:
    """Bonus pages and repayment FIFOs of every domain on one host."""

    def __init__(self, memory: HostMemory) -> None:
        self.memory = memory
        self.fifos: dict[int, RepaymentFifo] = {}
        self.bonus: dict[int, int] = {}
        self.repaid_pages = 0
        self._seq = 0
        self._lost: dict[int, list[np.ndarray]] = {}

    def fifo(self, domid: int) -> RepaymentFifo:
        """The FIFO of ``domid``, created empty on first use."""
        return self.fifos.setdefault(domid, RepaymentFifo())

    def lend(self, domid: int, gfns: np.ndarray) -> np.ndarray:
        """Populate bonus GFNs of ``domid`` from the free pool.

        Returns the GFNs that got a frame; the domain must fill them and
        make them volatile (``push``) to keep its promise.
        """
        left = self.memory.populate(domid, gfns)
        got = gfns[~np.isin(gfns, left)]
        self.bonus[domid] = self.bonus.get(domid, 0) + int(got.size)
        return got

    def push(self, domid: int, gfns: np.ndarray) -> None:
        """Promise pages of ``domid`` as volatile."""
        seqs = np.arange(self._seq, self._seq + gfns.size, dtype=np.int64)
        self._seq += int(gfns.size)
        self.fifo(domid).push(np.asarray(gfns, np.int64), seqs)

    def give_back(self, domid: int, n: int) -> np.ndarray:
        """The domain returns ``n`` bonus pages, oldest volatile first."""
        gfns = self.fifo(domid).pop_oldest(n)
        self.memory.balloon_out(domid, gfns)
        self.bonus[domid] = self.bonus.get(domid, 0) - int(gfns.size)
        return gfns

    def reclaim(self, n: int) -> int:
        """Free ``n`` frames from the globally oldest volatile pages.

        The owners lose those pages (see ``take_lost``). Returns the
        number of frames freed, fewer when the FIFOs run out.
        """
        doms = [d for d, f in self.fifos.items() if len(f)]
        if not doms or n <= 0:
            return 0
        seqs = np.concatenate([self.fifos[d].seqs for d in doms])
        owner = np.repeat(doms, [len(self.fifos[d]) for d in doms])
        n = min(n, seqs.size)
        cutoff = np.partition(seqs, n - 1)[n - 1]
        freed = 0
        for d in np.unique(owner[seqs <= cutoff]).tolist():
            fifo = self.fifos[d]
            k = int(np.count_nonzero(fifo.seqs <= cutoff))
            gfns = fifo.pop_oldest(k)
            freed += self.memory.balloon_out(d, gfns)
            self.bonus[d] = self.bonus.get(d, 0) - k
            self._lost.setdefault(d, []).append(gfns)
            self.repaid_pages += k
        return freed

    def take_lost(self, domid: int) -> np.ndarray:
        """GFNs of ``domid`` reclaimed since the last call."""
        lost = self._lost.pop(domid, [])
        if not lost:
            return np.empty(0, dtype=np.int64)
        return np.concatenate(lost)

    def shortfall(self) -> dict[int, int]:
        """Domains whose FIFO is shorter than their bonus pages, by how
        many pages. Empty while the repayment invariant holds."""
        return {
            d: b - len(self.fifo(d))
            for d, b in self.bonus.items()
            if len(self.fifo(d)) < b
        }

    def forget(self, domid: int) -> None:
        """Drop a domain that shut down (its frames went with it)."""
        self.fifos.pop(domid, None)
        self.bonus.pop(domid, None)
        self._lost.pop(domid, None)

    def totals(self) -> dict[str, int]:
        """Bonus pages lent and FIFO pages promised, over all domains."""
        return {
            "bonus_pages": sum(self.bonus.values()),
            "fifo_pages": sum(len(f) for f in self.fifos.values()),
            "repaid_pages": self.repaid_pages,
        }
