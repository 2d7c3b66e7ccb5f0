"""How a host finds duplicate pages: hints, scanners, or several at once.

A ``Strategy`` says which detectors a host's CoW daemon runs: verified
hints (``dedup.hints``), a KSM-style scanner (``dedup.ksm``), a sampling
scanner (``dedup.sampling``) and block sharing (``dedup.blocks``), each
with its rate limit. ``Detectors`` runs the scanners of one host once
per tick and adds up their work, which ``CostModel`` (``dedup.scan``)
turns into an estimate of the daemon's CPU time.

The hint daemon's own work (hints handled, bytes compared, hypercalls)
is kept by the hint table; ``hint_work`` expresses it as a ``ScanWork``
so that every strategy is costed on the same scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from dedup.blocks import BlockParams, BlockScanner
from dedup.hints import HintTable
from dedup.ksm import KsmParams, KsmScanner
from dedup.memory import HostMemory
from dedup.sampling import SamplingParams, SamplingScanner
from dedup.scan import CostModel, ScanWork

DETECTORS = ("hints", "ksm", "sampling", "blocks")


@dataclass(frozen=True)
class Strategy:
    """The detectors one host runs; None turns a scanner off."""

    hints: bool = True
    ksm: KsmParams | None = None
    sampling: SamplingParams | None = None
    blocks: BlockParams | None = None

    @property
    def label(self) -> str:
        """The detectors in use, joined by '+', e.g. ``hints+ksm``."""
        on = [name for name in DETECTORS if self._on(name)]
        return "+".join(on) or "none"

    def _on(self, name: str) -> bool:
        return (
            self.hints if name == "hints" else getattr(self, name) is not None
        )


class Detectors:
    """The content scanners of one host, run once per tick."""

    def __init__(
        self,
        memory: HostMemory,
        strategy: Strategy,
        seed: int,
        tick_seconds: float,
        index: int = 0,
    ) -> None:
        self.strategy = strategy
        self.ksm = None
        self.ksm_batches = 0
        if strategy.ksm is not None:
            self.ksm = KsmScanner(memory, strategy.ksm)
            # ksmd wakes every sleep_millisecs and scans pages_to_scan.
            self.ksm_batches = max(
                1, round(tick_seconds * 1000 / strategy.ksm.sleep_millisecs)
            )
        self.sampling = (
            SamplingScanner(memory, strategy.sampling, seed, index)
            if strategy.sampling is not None
            else None
        )
        self.blocks = (
            BlockScanner(memory, strategy.blocks)
            if strategy.blocks is not None
            else None
        )

    def tick(self) -> None:
        """One tick of every scanner, in a fixed order."""
        if self.ksm is not None:
            self.ksm.run(self.ksm_batches, self.strategy.ksm.pages_to_scan)
        if self.sampling is not None:
            self.sampling.tick()
        if self.blocks is not None:
            self.blocks.tick()

    def work(self) -> ScanWork:
        """What the scanners did so far, summed."""
        total = ScanWork()
        for scanner in (self.ksm, self.sampling, self.blocks):
            if scanner is not None:
                total.add(scanner.work)
        return total


def hint_work(table: HintTable) -> ScanWork:
    """The hint daemon's work so far, on the scanners' scale."""
    return ScanWork(
        bytes_compared=table.bytes_compared,
        hypercalls=table.hypercalls,
        hints=int(table.outcomes.sum()),
    )


def cpu_seconds(work: ScanWork, model: CostModel | None = None) -> float:
    """Estimated daemon CPU seconds for ``work``."""
    return (model or CostModel()).cpu_seconds(work)
