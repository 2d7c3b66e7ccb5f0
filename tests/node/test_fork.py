"""Clones of a stub domain, without Ray: all memory starts shared, and
the clones diverge as they write."""

import numpy as np

from node.guest import GuestConfig
from node.host import Host
from tests.node.test_host import images  # noqa: F401

KW = dict(
    pages=512,
    boot_read_fraction=0.7,
    read_pages_per_tick=8,
    disk_write_pages_per_tick=2,
    anon_write_pages_per_tick=24,
    free_pages_per_tick=8,
)


def forked(images, n_clones=4):  # noqa: F811
    host = Host("h", 0, 4096, seed=5)
    stub = GuestConfig("stub", 0, "a", stub=True, **KW)
    clones = [
        GuestConfig(f"c{i}", i + 1, "a", clone_of="stub", **KW)
        for i in range(n_clones)
    ]
    host.boot([stub, *clones], images, {"a": 1, "b": 2})
    return host


def test_clones_start_with_all_memory_shared(images):  # noqa: F811
    host = forked(images)
    stub = host.guest("stub")
    gfns = np.arange(512)
    content = host.memory.read(stub.domid, gfns)
    for i in range(4):
        clone = host.guest(f"c{i}")
        assert np.array_equal(host.memory.read(clone.domid, gfns), content)
        p2m = host.memory.domain_p2m(clone.domid)
        assert np.array_equal(p2m, host.memory.domain_p2m(stub.domid))
    row = host.sample()
    alone = forked(images, n_clones=0).sample()
    # Four clones add 4 x 512 guest pages and no frame. Stub frames
    # already shared (zero pages) keep the source that shared them.
    assert row["machine_bytes_used"] == alone["machine_bytes_used"]
    assert row["saved_bytes"] == alone["saved_bytes"] + 4 * 512 * 4096
    assert row["saved_fork_bytes"] > 0
    assert row["guests_paused"] == 0


def test_clones_diverge_and_the_stub_stays_put(images):  # noqa: F811
    host = forked(images)
    stub = host.guest("stub")
    before = host.memory.read(stub.domid, np.arange(512))
    rows = host.step(10)
    used = [r["machine_bytes_used"] for r in rows]
    fork = [r["saved_fork_bytes"] for r in rows]
    assert used == sorted(used) and used[-1] > used[0]
    assert fork == sorted(fork, reverse=True) and fork[-1] < fork[0]
    assert np.array_equal(host.memory.read(stub.domid, np.arange(512)), before)
    a = host.memory.read(host.guest("c0").domid, np.arange(512))
    b = host.memory.read(host.guest("c1").domid, np.arange(512))
    assert not np.array_equal(a, b)
