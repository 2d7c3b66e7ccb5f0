"""dom0 as a service domain holding bonus memory for HVM guests.

HVM guests run unmodified kernels that cannot keep a repayment FIFO. The
control domain can still put the memory their sharing frees to use on
their behalf, for example as a memory-backed swap device or disk cache
for them, and keep the FIFO itself. Its volatile pages hold content of
their own (cached data no other page has), so they are never shared.

Not modelled: the speed-up the HVM guests get from that cache.
"""

from __future__ import annotations

import numpy as np

from node.guest import (
    R_ABSENT,
    R_PINNED,
    R_VOLATILE,
    ContentSource,
    Writer,
)

DOM0 = 0


class ServiceDomain:
    """dom0's bonus memory: empty GFNs it fills as a volatile cache."""

    def __init__(self, capacity: int) -> None:
        self.domid = DOM0
        self.capacity = capacity
        self.role = np.full(capacity, R_ABSENT, dtype=np.int8)
        self.refaults = 0

    def absent_bonus_gfns(self, n: int) -> np.ndarray:
        """Up to ``n`` GFNs with no frame now."""
        return np.flatnonzero(self.role == R_ABSENT)[:n]

    def fill_bonus(
        self,
        gfns: np.ndarray,
        write: Writer,
        fresh: ContentSource,
        volatile_share: float = 1.0,
    ) -> np.ndarray:
        """Fill lent pages with cached data; return the volatile ones (all
        of them, unless dom0 breaks its promise like a guest may)."""
        write(self.domid, gfns, fresh(gfns.size), False)
        n_volatile = round(volatile_share * gfns.size)
        self.role[gfns[:n_volatile]] = R_VOLATILE
        self.role[gfns[n_volatile:]] = R_PINNED
        return gfns[:n_volatile]

    def lose(self, gfns: np.ndarray, reclaimed: bool) -> None:
        """Pages given up; a reclaimed one would be read back later."""
        self.role[gfns] = R_ABSENT
        if reclaimed:
            self.refaults += int(gfns.size)
