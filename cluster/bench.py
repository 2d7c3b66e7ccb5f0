"""Benchmarks of the sharing engine, reported as ratios measured in one run.

``cowsim bench`` builds one host's memory (by default 4 Mi frames, a
16 GiB host; ``--frames 16777216`` is the 64 GiB host of the design),
fills its guests with disk blocks of a shared base image and logically
zero pages, and measures on those same pages:

- **allocator**: one hint batch with glibc's and numpy's default
  allocation settings, then with the settings host actors use
  (``node.tuning``: freed memory kept for reuse, no huge-page advice);
- **hints**: the CoW daemon verifying and sharing a batch of disk and zero
  hints with the vectorised engine (``HintTable.process``), against a
  per-page Python loop doing the same work on a sample of the same hints.
  Both must leave the same number of frames in use on the sample: the
  benchmark checks it, so a fast but wrong engine fails here;
- **distinct**: counting distinct page contents (the sharing potential)
  by sorting, against ``np.unique``;
- **memory**: bytes of engine state per frame, against the size of the
  frame itself (no Python object per page);
- **ksm**: full scans of the KSM-style scanner (``dedup.ksm``) over
  guests holding duplicated contents, against the page-by-page port of
  the kernel's loop (``dedup.ksm_reference``) on a sample host of the
  same make-up. Both must report the same KSM counters on the sample.
  The reference merges each pair with its own ``share_mfns`` call, as a
  daemon working a page at a time would; most of its time goes there.

Absolute rates depend on the machine and its load; the ratios, measured
back to back in one process, are what to compare across changes.

The per-page reference trusts the hints' content check and skips the
write-protection bookkeeping (marking, reverse-map moves), so it is if
anything faster than a faithful per-page loop: the ratio understates the
engine's advantage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from dedup.arrays import unique
from dedup.content import PAGE_SIZE
from dedup.hints import DISK, ZERO, ZERO_KEY, HintBatch, HintTable, disk_keys
from dedup.ksm import KsmParams, KsmScanner
from dedup.ksm_reference import ReferenceKsm
from dedup.memory import HostMemory
from node.tuning import tune_allocator

GUESTS = 8
IMAGE_BLOCKS = 1 << 18
# Content ids of disk blocks start past the zero content.
BLOCK_BASE = 16


@dataclass
class BenchRow:
    """One measurement: a workload, two ways, and their ratio."""

    name: str
    items: int
    fast_per_second: float
    slow_per_second: float
    unit: str

    @property
    def ratio(self) -> float:
        """How many times faster the engine is than the reference."""
        return self.fast_per_second / self.slow_per_second

    def as_dict(self) -> dict:
        """Plain values for JSON."""
        return {
            "name": self.name,
            "items": self.items,
            "fast_per_second": round(self.fast_per_second, 1),
            "slow_per_second": round(self.slow_per_second, 1),
            "ratio": round(self.ratio, 2),
            "unit": self.unit,
        }


def build_host(n_frames: int, seed: int) -> tuple[HostMemory, HintBatch]:
    """A host whose guests hold half disk blocks, half zero pages, and
    the hints that describe them (disk hints first, then zero hints)."""
    rng = np.random.default_rng(seed)
    memory = HostMemory(n_frames)
    per = n_frames // GUESTS
    half = per // 2
    gfns = np.arange(half, dtype=np.int64)
    blocks = []
    for domid in range(1, GUESTS + 1):
        memory.create_domain(domid, per)
        block = rng.integers(0, IMAGE_BLOCKS, half)
        memory.write(domid, gfns, block + BLOCK_BASE)
        blocks.append(block)
    domids = np.repeat(np.arange(1, GUESTS + 1, dtype=np.int32), half)
    disk = HintBatch(
        domids,
        np.tile(gfns, GUESTS),
        disk_keys(7, np.concatenate(blocks)).astype(np.int64),
        np.full(domids.size, DISK, np.int8),
    )
    zero = HintBatch(
        domids,
        np.tile(gfns + half, GUESTS),
        np.full(domids.size, ZERO_KEY, np.int64),
        np.full(domids.size, ZERO, np.int8),
    )
    return memory, HintBatch.concat([disk, zero])


def reference_process(memory: HostMemory, batch: HintBatch) -> int:
    """Share a batch page by page in Python; return frames in use after."""
    content = memory.frames.content
    count = memory.frames.count
    p2m = memory.p2m
    in_use = memory.frames_in_use()
    bases = {d: int(memory.slots(d, [0])[0]) for d in memory.domains()}
    table: dict[int, int] = {}
    for domid, gfn, key in zip(
        batch.domids.tolist(),
        batch.gfns.tolist(),
        batch.keys.tolist(),
        strict=True,
    ):
        slot = bases[domid] + gfn
        mfn = int(p2m[slot])
        target = table.setdefault(key, mfn)
        if target == mfn or content[target] != content[mfn]:
            continue
        p2m[slot] = target
        count[target] += 1
        count[mfn] -= 1
        if count[mfn] == 0:
            in_use -= 1
    return in_use


def bench_hints(n_frames: int, seed: int, sample: int) -> BenchRow:
    """Vectorised hint processing against the per-page reference."""
    memory, batch = build_host(n_frames, seed)
    start = time.perf_counter()
    HintTable().process(memory, batch)
    fast = len(batch) / (time.perf_counter() - start)
    memory.check()

    # Same sample of hints, both ways, on two fresh copies of the host.
    pick = np.sort(
        np.random.default_rng(seed).choice(len(batch), sample, replace=False)
    )
    part = HintBatch(
        batch.domids[pick],
        batch.gfns[pick],
        batch.keys[pick],
        batch.sources[pick],
    )
    reference, _ = build_host(n_frames, seed)
    start = time.perf_counter()
    expected = reference_process(reference, part)
    slow = sample / (time.perf_counter() - start)
    engine, _ = build_host(n_frames, seed)
    HintTable().process(engine, part)
    if engine.frames_in_use() != expected:
        raise AssertionError(
            f"hints: engine leaves {engine.frames_in_use()} frames in use, "
            f"per-page reference {expected}"
        )
    return BenchRow("hints", len(batch), fast, slow, "hints")


def bench_distinct(n_frames: int, seed: int) -> BenchRow:
    """Distinct contents by sorting against ``np.unique``."""
    rng = np.random.default_rng(seed)
    contents = rng.integers(0, n_frames // 4, n_frames)
    start = time.perf_counter()
    fast_count = unique(contents).size
    fast = n_frames / (time.perf_counter() - start)
    start = time.perf_counter()
    slow_count = np.unique(contents).size
    slow = n_frames / (time.perf_counter() - start)
    if fast_count != slow_count:
        raise AssertionError(f"distinct: {fast_count} != {slow_count}")
    return BenchRow("distinct", n_frames, fast, slow, "pages")


def bench_memory(n_frames: int, seed: int) -> BenchRow:
    """Engine state per frame against the 4 KiB the frame holds."""
    memory, _ = build_host(n_frames, seed)
    state = sum(
        a.nbytes
        for a in (*vars(memory.frames).values(), memory.p2m, memory.slot_dom)
        if isinstance(a, np.ndarray)
    )
    # "Rates" here are bytes per frame: the ratio is the frame size over
    # the engine's overhead for it.
    return BenchRow("memory", n_frames, PAGE_SIZE, state / n_frames, "bytes")


def _ksm_host(n_frames: int, seed: int) -> HostMemory:
    """Guests with skewed duplicate contents filling half the host."""
    rng = np.random.default_rng(seed)
    memory = HostMemory(n_frames)
    per = n_frames // (2 * GUESTS)
    for domid in range(1, GUESTS + 1):
        memory.create_domain(domid, per)
        cids = rng.zipf(1.3, per) % max(per // 4, 2)
        memory.write(domid, np.arange(per), cids)
    return memory


def bench_ksm(n_frames: int, seed: int, sample: int) -> BenchRow:
    """Two full KSM scans, vectorised against page by page."""
    params = KsmParams()
    memory = _ksm_host(n_frames, seed)
    scanner = KsmScanner(memory, params)
    start = time.perf_counter()
    scanner.full_scan()
    scanner.full_scan()
    fast = 2 * memory.guest_pages() / (time.perf_counter() - start)
    memory.check()

    small = max(sample, 2 * GUESTS * 64)
    reference = ReferenceKsm(_ksm_host(small, seed), params)
    start = time.perf_counter()
    reference.full_scan()
    reference.full_scan()
    slow = 2 * reference.m.guest_pages() / (time.perf_counter() - start)
    engine = KsmScanner(_ksm_host(small, seed), params)
    engine.full_scan()
    engine.full_scan()
    if engine.counters() != reference.counters():
        raise AssertionError(
            f"ksm: engine counters {engine.counters()}, "
            f"page-by-page reference {reference.counters()}"
        )
    return BenchRow("ksm", 2 * memory.guest_pages(), fast, slow, "pages")


def bench_allocator(n_frames: int, seed: int) -> BenchRow:
    """One hint batch with the allocator's defaults, then tuned as host
    actors tune it (``node.tuning``); leaves the process tuned."""
    rates = []
    for tune in (False, True):
        if tune:
            tune_allocator()
        memory, batch = build_host(n_frames, seed)
        start = time.perf_counter()
        HintTable().process(memory, batch)
        rates.append(len(batch) / (time.perf_counter() - start))
    return BenchRow("allocator", len(batch), rates[1], rates[0], "hints")


def run_bench(
    n_frames: int = 1 << 22, seed: int = 0, sample: int = 100_000
) -> list[BenchRow]:
    """Every benchmark, in one process, back to back. The allocator row
    comes first, while the process still has glibc's defaults; the
    others run tuned, as in a host actor."""
    sample = min(sample, n_frames // 2)
    return [
        bench_allocator(n_frames, seed),
        bench_hints(n_frames, seed, sample),
        bench_distinct(n_frames, seed),
        bench_memory(n_frames, seed),
        bench_ksm(n_frames, seed, sample),
    ]


def format_bench(rows: list[BenchRow]) -> str:
    """A table of the rows."""
    lines = [
        f"{'benchmark':<10} {'items':>12} {'engine/s':>14} "
        f"{'reference/s':>14} {'ratio':>8}"
    ]
    for r in rows:
        if r.unit == "bytes":
            lines.append(
                f"{r.name:<10} {r.items:>12,} {'':>14} {'':>14} "
                f"{r.ratio:>8.1f}  (frame {r.fast_per_second:,.0f} B, "
                f"engine {r.slow_per_second:.1f} B per frame)"
            )
            continue
        lines.append(
            f"{r.name:<10} {r.items:>12,} {r.fast_per_second:>14,.0f} "
            f"{r.slow_per_second:>14,.0f} {r.ratio:>8.1f}"
        )
    return "\n".join(lines)
