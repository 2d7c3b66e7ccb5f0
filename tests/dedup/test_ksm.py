"""The vectorised KSM scanner against the page-by-page reference."""

from __future__ import annotations

import numpy as np
import pytest

from dedup.ksm import KsmParams, KsmScanner
from dedup.ksm_reference import ReferenceKsm
from dedup.memory import HostMemory


def _pair(n_pages: int, params: KsmParams, n_domains: int = 2):
    sides = []
    for _ in range(2):
        m = HostMemory(3 * n_pages * n_domains)
        for domid in range(1, n_domains + 1):
            m.create_domain(domid, n_pages)
        sides.append(m)
    return sides, KsmScanner(sides[0], params), ReferenceKsm(sides[1], params)


def _write(sides, domid, gfns, cids):
    for m in sides:
        m.write(domid, gfns, cids)


@pytest.mark.parametrize("seed", range(6))
def test_full_scans_equal_the_reference(seed):
    rng = np.random.default_rng(seed)
    params = KsmParams(
        max_page_sharing=int(rng.integers(2, 6)),
        use_zero_pages=bool(seed % 2),
    )
    n = 400
    sides, model, ref = _pair(n, params)
    for domid in (1, 2):
        _write(sides, domid, np.arange(n), rng.zipf(1.5, n) % 60)
    for _ in range(8):
        model.full_scan()
        ref.full_scan()
        assert model.counters() == ref.counters()
        sides[0].check()
        for domid in (1, 2):
            gfns = np.unique(rng.choice(n, 40))
            _write(sides, domid, gfns, rng.zipf(1.5, gfns.size) % 60)
        # Both hold the same contents at every GFN, whatever merged.
        assert np.array_equal(
            sides[0].read(1, np.arange(n)), sides[1].read(1, np.arange(n))
        )


def test_counters_follow_the_kernels_meaning():
    sides, model, _ = _pair(8, KsmParams(max_page_sharing=3), n_domains=1)
    _write(sides, 1, np.arange(8), np.array([5, 5, 5, 5, 5, 7, 8, 9]))
    model.full_scan()
    first = model.counters()
    assert first["pages_volatile"] == 8  # a new rmap item has no checksum
    model.full_scan()
    c = model.counters()
    # Five copies, at most three per frame: a chain of two dups.
    assert (c["pages_shared"], c["pages_sharing"]) == (2, 3)
    assert (c["stable_node_chains"], c["stable_node_dups"]) == (1, 2)
    assert c["pages_unshared"] == 3
    assert c["pages_volatile"] == 0
    assert sides[0].sharing()["sharing_mappings"] == 3


def test_batches_stop_at_the_end_of_a_scan():
    sides, model, _ = _pair(10, KsmParams(), n_domains=1)
    _write(sides, 1, np.arange(10), np.arange(10) % 3)
    model.run(1, 10)  # exactly the last page: the scan is not over
    assert model.full_scans == 0
    assert model.work.pages_scanned == 10
    model.run(1, 4)  # completes the scan with no page, as ksmd does
    assert model.full_scans == 1
    assert model.work.pages_scanned == 10
    model.run(3, 4)  # 4 + 4 + 2 and the end of the scan
    assert model.full_scans == 2
    assert model.work.pages_scanned == 20


def test_params_are_checked():
    with pytest.raises(ValueError, match="max_page_sharing"):
        KsmParams(max_page_sharing=1)
