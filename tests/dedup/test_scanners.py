"""Sampling scanner, block sharing and detection strategies, without Ray."""

from __future__ import annotations

import numpy as np
import pytest

from dedup.blocks import BlockParams, BlockScanner, block_fingerprints
from dedup.hints import BLOCK, SCAN, SOURCES
from dedup.ksm import KsmParams
from dedup.memory import HostMemory
from dedup.sampling import SamplingParams, SamplingScanner
from dedup.scan import CostModel, ScanWork, page_checksum32, page_hash64
from dedup.strategy import Detectors, Strategy


def guests(n_domains=3, pages=1024, differ=8, seed=0):
    """Domains with the same contents but a few pages of their own."""
    rng = np.random.default_rng(seed)
    m = HostMemory(n_domains * pages * 2)
    base = rng.integers(1, 10**9, pages)
    for d in range(1, n_domains + 1):
        m.create_domain(d, pages)
        c = base.copy()
        c[rng.choice(pages, differ, replace=False)] = rng.integers(
            10**10, 10**11, differ
        )
        m.write(d, np.arange(pages), c)
    return m


def contents(m):
    return [m.read(d, np.arange(m.domain_pages(d))) for d in m.domains()]


def same(a, b):
    """Every guest reads what it read before: sharing is invisible."""
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def potential(m):
    return m.guest_pages() - m.distinct_contents()


def test_hashes():
    cids = np.arange(1000, dtype=np.int64)
    assert np.unique(page_hash64(cids)).size == 1000
    assert page_checksum32(np.array([0]))[0] != 0  # fresh items hold 0
    fp = block_fingerprints(np.array([[1, 2, 3], [1, 2, 3], [3, 2, 1]]))
    assert fp[0] == fp[1] != fp[2]


def test_blocks_share_whole_blocks_and_fall_back_to_pages():
    m = guests(pages=1024, differ=3)
    before = contents(m)
    scanner = BlockScanner(m, BlockParams(pages_per_tick=1024, block_pages=64))
    for _ in range(3):
        scanner.tick()
    m.check()
    assert same(before, contents(m))
    assert m.sharing()["sharing_mappings"] == potential(m)
    saved = m.saved_by_source(len(SOURCES))
    assert saved[BLOCK] > 0 and saved[SCAN] > 0  # whole blocks, then pages
    # One operation per block shared whole, one per page in fallback.
    assert scanner.work.share_ops < m.sharing()["sharing_mappings"] // 2


def test_sampling_finds_sharing_and_depends_only_on_its_seed():
    runs = []
    for _ in range(2):
        m = guests()
        before = contents(m)
        s = SamplingScanner(m, SamplingParams(pages_per_tick=500), seed=4)
        for _ in range(10):
            s.tick()
        m.check()
        assert same(before, contents(m))
        runs.append((m.sharing(), s.work))
    assert runs[0] == runs[1]
    saved = runs[0][0]["sharing_mappings"]
    assert 0 < saved <= potential(guests())


def test_sampled_pages_change_between_hint_and_match():
    m = guests(n_domains=2, pages=64, differ=0)
    s = SamplingScanner(m, SamplingParams(pages_per_tick=64), seed=1)
    s.tick()  # every page hinted or shared
    m.write(1, np.arange(64), np.arange(64) + 10**12)  # stale entries
    s.tick()
    m.check()
    assert np.array_equal(m.read(1, np.arange(64)), np.arange(64) + 10**12)


@pytest.mark.parametrize(
    "make, what",
    [
        (lambda: BlockParams(block_pages=48), "power of 2"),
        (lambda: BlockParams(pages_per_tick=8, block_pages=16), "block_pages"),
        (lambda: SamplingParams(pages_per_tick=0), "pages_per_tick"),
    ],
)
def test_params_are_checked(make, what):
    with pytest.raises(ValueError, match=what):
        make()


def test_detectors_combine_and_cost():
    m = guests()
    strategy = Strategy(
        hints=False,
        ksm=KsmParams(pages_to_scan=200),
        sampling=SamplingParams(pages_per_tick=100),
        blocks=BlockParams(pages_per_tick=512, block_pages=64),
    )
    assert strategy.label == "ksm+sampling+blocks"
    assert Strategy().label == "hints"
    d = Detectors(m, strategy, seed=1, tick_seconds=1.0)
    assert d.ksm_batches == 50  # one wake-up every 20 ms
    for _ in range(4):
        d.tick()
    m.check()
    assert m.sharing()["sharing_mappings"] == potential(m)
    work = d.work()
    assert work.pages_hashed > 0 and work.hypercalls > 0
    assert CostModel().cpu_seconds(work) > CostModel().cpu_seconds(
        ScanWork(hints=work.pages_hashed)
    )
