"""A sampling scanner in the style of VMware ESX, on a host's memory.

Each tick the scanner picks ``pages_per_tick`` guest pages at random
(from a seeded generator), skips those already mapping a shared frame,
hashes the others and offers them to a ``ContentTable`` (``dedup.scan``):
a page whose hash is new becomes a hint entry, a page matching a hint
entry or a shared frame is compared and shared. Random sampling finds
sharing at a rate proportional to its budget whatever the page order,
and a page identical to others only briefly is found only if it is
sampled, twice over, while the copies last.

Not modelled: ESX's per-VM rate shares and its idle-memory tax.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dedup.arrays import unique
from dedup.frames import COW_DOMAIN
from dedup.hints import SCAN
from dedup.memory import HostMemory
from dedup.scan import ContentTable, ScanWork


@dataclass(frozen=True)
class SamplingParams:
    """How many pages the sampler reads per tick."""

    pages_per_tick: int = 4096

    def __post_init__(self) -> None:
        if self.pages_per_tick < 1:
            raise ValueError(
                f"pages_per_tick must be >= 1, got {self.pages_per_tick}"
            )


class SamplingScanner:
    """Random pages into a hash table, within a rate limit."""

    def __init__(
        self,
        memory: HostMemory,
        params: SamplingParams,
        seed: int,
        stream: int = 0,
    ) -> None:
        """``seed`` is the run's; ``stream`` tells hosts apart."""
        self.memory = memory
        self.params = params
        self.rng = np.random.default_rng([seed, stream, 0x5A3])
        self.table = ContentTable(SCAN)
        self.work = ScanWork()

    def tick(self) -> None:
        """Sample and share one tick's worth of pages."""
        m = self.memory
        n = m.p2m.size
        if n == 0:
            return
        k = min(self.params.pages_per_tick, n)
        slots = unique(self.rng.integers(0, n, k))
        mfns = m.p2m[slots]
        mfns = mfns[mfns >= 0]
        self.work.pages_scanned += int(mfns.size)
        private = mfns[m.frames.owner[mfns] != COW_DOMAIN]
        self.work.pages_hashed += int(private.size)
        self.table.offer(m, private, self.work)
