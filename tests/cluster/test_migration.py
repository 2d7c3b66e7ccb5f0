"""Migration policies: decisions without Ray, a rebalance of a guest
with bonus pages in a run, and the shipped migration scenario."""

import json

import ray

import cluster.migration
from cluster.coordinator import Coordinator
from cluster.migration import consolidate, rebalance
from cluster.results import summarize
from cluster.scenario import GuestSpec, HostSpec, WorkloadSpec, load_scenario
from tests.cluster.test_run import run_shipped, small_scenario

MiB = 1 << 20


def guest(name: str, image: str, mib: int) -> GuestSpec:
    return GuestSpec(name, image, mib * MiB, "pv", 0.5, True, WorkloadSpec())


HOSTS = tuple(HostSpec(f"h{i}", 256 * MiB) for i in range(3))
GUESTS = (
    guest("a0", "a", 64),
    guest("b0", "b", 64),
    guest("a1", "a", 64),
    guest("b1", "b", 64),
    guest("a2", "a", 32),
)


def test_consolidate_empties_the_least_loaded_host():
    placement = {"a0": "h0", "b0": "h1", "a1": "h2", "b1": "h0", "a2": "h1"}
    # h1 (96 MiB) and h2 (64 MiB): h2 is emptied; a1 joins the a guest.
    moves = consolidate(HOSTS, [True] * 3, GUESTS, placement)
    assert moves == [("a1", "h0")]


def test_consolidate_does_nothing_when_a_guest_fits_nowhere():
    hosts = tuple(HostSpec(f"h{i}", 128 * MiB) for i in range(2))
    placement = {"a0": "h0", "b0": "h1", "a1": "h0", "b1": "h1"}
    assert consolidate(hosts, [True] * 2, GUESTS[:4], placement) == []


def test_rebalance_moves_the_largest_guest_off_a_short_host():
    placement = {"a0": "h0", "b0": "h0", "a1": "h1", "b1": "h2", "a2": "h0"}
    samples = [
        {"machine_bytes": 256 * MiB, "machine_bytes_used": 250 * MiB},
        {"machine_bytes": 256 * MiB, "machine_bytes_used": 40 * MiB},
        {"machine_bytes": 256 * MiB, "machine_bytes_used": 60 * MiB},
    ]
    moves = rebalance(HOSTS, [True] * 3, GUESTS, placement, samples)
    assert moves == [("a0", "h1")]
    assert (
        rebalance(HOSTS, [True, False, False], GUESTS, placement, samples)
        == []
    )


def test_shipped_migration_scenario_end_to_end(tmp_path):
    results = tmp_path / "out"
    done = run_shipped("migration", results)
    assert done.returncode == 0, done.stderr
    summary = json.loads((results / "summary.json").read_text())
    moves = summary["migrations"]
    assert {m["reason"] for m in moves} == {"consolidate", "scripted"}
    assert all("refused" not in m for m in moves)
    for m in moves:
        assert 0 < m["pages_sent_skipping_known"] < m["pages_sent"]
        assert m["sharing_lost_bytes"] > 0 and m["sharing_gained_bytes"] > 0
    running = [h for h in summary["hosts"] if h["guests"]]
    assert len(running) == 2
    assert sum(len(h["guests"]) for h in running) == 8
    scripted = [m for m in moves if m["reason"] == "scripted"]
    assert scripted == [m for m in moves if m["tick"] == 20]
    host = next(h for h in summary["hosts"] if h["name"] == "host-2")
    assert "web-0" in host["guests"]


def test_rebalance_moves_a_bonus_guest_off_a_short_host(tmp_path, monkeypatch):
    path = small_scenario(tmp_path, ticks=9, batch=3)
    text = 'migration_policy = "rebalance"\nplacement_policy = "first-fit"\n'
    text += path.read_text().replace(
        '[[guests]]\nname = "ga"',
        '[[hosts]]\nname = "spare"\nmemory = "32MiB"\n\n'
        '[[guests]]\nname = "ga"\nbonus = "proportional"\n'
        "bonus_fraction = 1.0",
        1,
    )
    path.write_text(text)
    # First-fit fills h-0 and bonus pages eat its free frames, to about
    # 18% free: a higher threshold makes it short.
    monkeypatch.setattr(cluster.migration, "SHORT_FRACTION", 0.2)
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        coordinator = Coordinator(load_scenario(path))
        try:
            summary = summarize(coordinator.run())
        finally:
            coordinator.shutdown()
    finally:
        ray.shutdown()
    [move] = summary["migrations"]
    assert move["reason"] == "rebalance" and move["from"] == "h-0"
    assert move["to"] == "spare" and "refused" not in move
    spare = next(h for h in summary["hosts"] if h["name"] == "spare")
    assert spare["guests"] == [move["guest"]]
    assert spare["bonus_pages"] > 0
