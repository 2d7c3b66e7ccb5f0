"""A host's detectors: scanners beside or instead of hints, transient
data and guest hints; sharing stays invisible to guests."""

import dataclasses

import numpy as np
import pytest

from dedup.blocks import BlockParams
from dedup.content import ContentStore
from dedup.hints import GUEST, SCAN, SOURCES
from dedup.ksm import KsmParams
from dedup.sampling import SamplingParams
from dedup.strategy import Strategy
from node.host import Host
from node.image import load_image
from tests.cluster.test_run import write_tree
from tests.node.test_host import configs

KSM_ONLY = dict(hints=False, ksm=KsmParams(pages_to_scan=400))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("img")
    store = ContentStore()
    out = {}
    for name, seed in (("a", 1), ("b", 2)):
        write_tree(root / name, seed=seed)
        out[name] = load_image(name, [str(root / name)], store)
    return out


def run(images, strategy=None, transient=0, ticks=12) -> Host:
    host = Host("h", 0, 4096, seed=5, strategy=Strategy(**(strategy or {})))
    cfgs = [
        dataclasses.replace(c, transient_pages=transient, transient_ticks=4)
        for c in configs()
    ]
    host.boot(cfgs, images, {"a": 1, "b": 2})
    host.step(ticks)
    host.memory.check()
    return host


def reads(host):
    return [
        host.memory.read(g.domid, np.arange(g.config.pages))
        for g in host.guests
    ]


def test_transient_data_is_shared_through_guest_hints(images):
    host = run(images, transient=64)
    s = host.sample()
    assert s["saved_guest_bytes"] > 0
    assert s["hints_guest_shared"] > 0
    assert s["pages_hashed"] == 0 and s["pages_scanned"] == 0


@pytest.mark.parametrize("transient", [0, 64])
def test_a_scanner_alone_finds_sharing_invisibly(images, transient):
    hinted = run(images, transient=transient)
    scanned = run(images, KSM_ONLY, transient=transient)
    s = scanned.sample()
    assert s["saved_scan_bytes"] > 0
    assert all(s[f"hints_{src}_shared"] == 0 for src in SOURCES)
    assert s["pages_hashed"] > 0 and s["daemon_cpu_seconds"] > 0
    # The same guests read the same contents whoever found the sharing.
    for a, b in zip(reads(hinted), reads(scanned), strict=True):
        assert np.array_equal(a, b)
    saved = scanned.memory.saved_by_source(len(SOURCES))
    assert saved[SCAN] == s["saved_scan_bytes"] // 4096
    assert saved[GUEST] == 0


def test_saved_and_potential_are_integrated_over_ticks(images):
    host = Host("h", 0, 4096, seed=5, tick_seconds=0.5)
    host.boot(configs(), images, {"a": 1, "b": 2})
    rows = host.step(6)
    last = rows[-1]
    assert last["saved_byte_seconds"] == sum(
        0.5 * r["saved_bytes"] for r in rows
    )
    assert last["potential_byte_seconds"] == sum(
        0.5 * r["potential_bytes"] for r in rows
    )
    assert 0 < last["saved_byte_seconds"] <= last["potential_byte_seconds"]


def test_every_scanner_is_deterministic(images):
    strategy = dict(
        hints=False,
        ksm=KsmParams(pages_to_scan=50),
        sampling=SamplingParams(pages_per_tick=300),
        blocks=BlockParams(pages_per_tick=256, block_pages=64),
    )
    first = run(images, strategy, transient=64).sample()
    again = run(images, strategy, transient=64).sample()
    assert first == again
    assert first["saved_scan_bytes"] > 0


def test_samples_carry_the_ksm_scanners_counters(images):
    host = run(images, KSM_ONLY)
    s = host.sample()
    counters = host.detectors.ksm.counters()
    assert counters["pages_sharing"] > 0
    assert {k: s[f"ksm_{k}"] for k in counters} == counters
    plain = run(images).sample()
    assert plain["ksm_pages_sharing"] == 0 and plain["ksm_full_scans"] == 0
