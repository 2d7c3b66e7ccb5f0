"""The CoW daemon in dom0: gathers hints from guests, verifies, shares.

The daemon owns the host's hint table (``dedup.hints``). Each tick it
takes every hint the guests emitted, verifies each against the frame that
already holds the claimed content, and asks the hypervisor to mark and
share the pairs it confirms. It also keeps the running totals a cost
model needs: hints by source and outcome, bytes compared, hypercalls.

Not modelled: the daemon's own CPU time competing with guests, and a
limit on how many hints it handles per tick.
"""

from __future__ import annotations

import numpy as np

from dedup.hints import OUTCOMES, SOURCES, HintBatch, HintTable
from dedup.memory import HostMemory


class CowDaemon:
    """Hint verification and sharing for one host."""

    def __init__(self, memory: HostMemory) -> None:
        self.memory = memory
        self.table = HintTable()
        self.resident: dict[tuple[str, str], int] = {}

    def process(self, batch: HintBatch) -> None:
        """Verify and share one tick's hints."""
        self.table.process(self.memory, batch)

    def hint_counts(self) -> dict[str, dict[str, int]]:
        """Hints so far, by source, then by outcome."""
        out = self.table.outcomes
        return {
            source: {
                outcome: int(out[i, j]) for j, outcome in enumerate(OUTCOMES)
            }
            for i, source in enumerate(SOURCES)
        }

    def costs(self) -> dict[str, int]:
        """Work done so far: bytes compared, hypercalls, table size."""
        return {
            "bytes_compared": self.table.bytes_compared,
            "hypercalls": self.table.hypercalls,
            "hint_keys": len(self.table),
            "hints": int(np.sum(self.table.outcomes)),
        }
