"""Host failures: scheduled in a scenario or an actor killed by anyone.

Real Ray actors are killed with ``ray.kill``; the coordinator must
notice through ``RayActorError``, restart what fits elsewhere, finish
the run and report what was lost.
"""

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import ray

from cluster.coordinator import Coordinator
from cluster.failures import SummaryAffinity, down_row, restart_targets
from cluster.results import format_table, summarize
from cluster.scenario import PAGE_SIZE, HostSpec, ScenarioError, load_scenario
from dedup.summary import ContentSummary
from node.guest import GuestConfig
from tests.cluster.test_run import ROOT, scrape, small_scenario

MiB = 1 << 20


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def with_failure(path, extra: str):
    path.write_text(path.read_text() + extra)
    return path


def test_killed_actor_is_noticed_and_its_guests_restarted(tmp_path, local_ray):
    scenario = load_scenario(small_scenario(tmp_path, ticks=12, batch=3))
    coordinator = None

    def kill_second_host(done, samples):
        if done == 3:
            ray.kill(coordinator.actors[1])

    coordinator = Coordinator(scenario, progress=kill_second_host)
    try:
        result = coordinator.run()
    finally:
        coordinator.shutdown()

    [failure] = result.failures
    assert failure["host"] == "h-1" and failure["how"] == "died"
    assert 3 < failure["tick"] <= 12
    assert failure["guest_bytes_lost"] > 0
    # Two hosts of 32 MiB, six guests of 8 MiB: h-0 has room for one more.
    assert len(failure["restarted"]) == 1
    assert len(failure["not_restarted"]) == 2
    assert set(failure["restarted"].values()) == {"h-0"}

    rows = [r for r in result.series if r["host"] == "h-1"]
    assert rows[-1]["tick"] == 12 and rows[-1]["host_up"] == 0
    assert rows[-1]["guest_bytes"] == 0
    cluster = [r for r in result.series if r["host"] == "cluster"]
    assert cluster[0]["host_up"] == 2 and cluster[-1]["host_up"] == 1
    summary = summarize(result)
    assert [h["up"] for h in summary["hosts"]] == [True, False]
    assert summary["hosts"][0]["guests"] == [
        g for g, h in result.placement.items() if h == "h-0"
    ]
    assert len(summary["hosts"][0]["guests"]) == 4


def test_scheduled_failure_is_deterministic(tmp_path, local_ray):
    extra = '\n[[failures]]\nhost = "h-0"\nat_tick = 4\n'
    path = with_failure(small_scenario(tmp_path, ticks=8, batch=3), extra)
    scenario = load_scenario(path)
    summaries = []
    for _ in range(2):
        coordinator = Coordinator(scenario)
        try:
            summaries.append(summarize(coordinator.run()))
        finally:
            coordinator.shutdown()
    assert summaries[0] == summaries[1]
    [failure] = summaries[0]["failures"]
    assert failure["tick"] == 4 and failure["how"] == "scheduled"
    assert summaries[0]["cluster"]["hosts"] == 2


def test_restart_targets_spread_and_report_what_fits_nowhere():
    hosts = (
        HostSpec("a", 64 * MiB),
        HostSpec("b", 64 * MiB),
        HostSpec("c", 64 * MiB),
    )
    lost = [
        GuestConfig(f"g{i}", i, "img", 24 * MiB // PAGE_SIZE) for i in range(5)
    ]
    reserved = {"b": 16 * MiB, "c": 0}
    targets = restart_targets(lost, hosts, [False, True, True], reserved)
    assert targets == {
        "g0": "c",
        "g1": "b",
        "g2": "c",
        "g3": "b",
        "g4": None,
    }


def test_down_row_zeroes_gauges_and_keeps_counters():
    last = {"host": "h", "tick": 3, "sim_time_seconds": 3.0}
    last |= {"guest_bytes": 10, "cow_faults": 7, "host_up": 1}
    row = down_row(last, 5, 0.5)
    assert row["guest_bytes"] == 0 and row["cow_faults"] == 7
    assert row["host_up"] == 0 and row["sim_time_seconds"] == 2.5


@pytest.mark.parametrize(
    "extra, key",
    [
        ('[[failures]]\nhost = "nope"\nat_tick = 2\n', "failures[0].host"),
        ('[[failures]]\nhost = "h-0"\nat_tick = 99\n', "failures[0].at_tick"),
        ('[[failures]]\nhost = "h-0"\nat_tick = "2"\n', "failures[0].at_tick"),
        ('[[failures]]\nhost = "h-0"\nwhen = 2\n', "failures[0].when"),
        ("failures = 3\n", "failures"),
        (
            '[[migrations]]\nguest = "ga-0"\nto = "h-9"\nat_tick = 2\n',
            "migrations[0].to",
        ),
        ('migration_policy = "yes"\n', "migration_policy"),
    ],
)
def test_bad_events_name_the_key(tmp_path, extra, key):
    path = small_scenario(tmp_path)
    text = path.read_text()
    if extra.startswith(("failures =", "migration_policy")):
        text = extra + text
    else:
        text += "\n" + extra
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}:"), message


def test_shipped_failure_scenario_end_to_end(tmp_path):
    results = tmp_path / "out"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "run", "failure"]
        + ["--results", str(results), "--metrics-port", "0"]
        + ["--linger", "20", "--quiet"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url = None
        while url is None:
            line = proc.stderr.readline()
            assert line, proc.communicate()
            m = re.search(r"(http://127\.0\.0\.1:\d+/metrics)", line)
            url = m.group(1) if m else None
        for line in proc.stdout:
            if line.startswith("results:"):
                break
        text = None
        deadline = time.monotonic() + 10
        while not text and time.monotonic() < deadline:
            text = scrape(url)
    finally:
        proc.terminate()
        proc.communicate()
    assert 'cowsim_host_up{host="host-1"} 0.0' in text
    assert 'cowsim_host_up{host="host-0"} 1.0' in text
    assert "cowsim_cluster_host_up 3.0" in text
    summary = json.loads((results / "summary.json").read_text())
    [failure] = summary["failures"]
    assert failure["host"] == "host-1" and failure["tick"] == 15
    assert failure["guests"] and not failure["not_restarted"]
    assert sorted(failure["restarted"]) == sorted(failure["guests"])
    running = sum(len(h["guests"]) for h in summary["hosts"])
    assert running == 12


def test_sharing_aware_restarts_next_to_guests_of_the_same_image():
    hosts = tuple(HostSpec(n, 256 * MiB) for n in ("a", "b", "c"))
    lost = [GuestConfig("x", 0, "img", 16 * MiB // PAGE_SIZE)]
    placement = {"y": "b", "z": "c", "x": "a"}
    images = {"x": "img", "y": "other", "z": "img"}
    reserved = {"b": 0, "c": 64 * MiB}
    up = [False, True, True]
    spread = restart_targets(lost, hosts, up, reserved)
    aware = restart_targets(
        lost, hosts, up, reserved, "sharing-aware", images, placement
    )
    assert spread == {"x": "b"} and aware == {"x": "c"}


def test_summary_affinity_prefers_the_host_holding_the_content():

    hosts = tuple(HostSpec(n, 256 * MiB) for n in ("a", "b", "c"))
    held = {"b": np.arange(1000), "c": np.arange(5000, 6000)}
    summaries = {}
    for name in ("b", "c"):
        summaries[name] = ContentSummary(1 << 14)
        summaries[name].add(held[name])
    lost = [
        GuestConfig(f"x{i}", i, "img", 16 * MiB // PAGE_SIZE) for i in range(2)
    ]
    affinity = SummaryAffinity(summaries, lambda c: np.arange(5100, 5400))
    reserved = {"b": 0, "c": 128 * MiB}
    targets = restart_targets(
        lost,
        hosts,
        [False, True, True],
        reserved,
        "sharing-aware",
        affinity=affinity,
    )
    assert targets == {"x0": "c", "x1": "c"}


def test_sharing_aware_restart_in_a_run_reads_host_summaries(
    tmp_path, local_ray
):
    extra = '\n[[failures]]\nhost = "h-1"\nat_tick = 3\n'
    path = with_failure(small_scenario(tmp_path, ticks=6, batch=3), extra)
    path.write_text('placement_policy = "sharing-aware"\n' + path.read_text())
    coordinator = Coordinator(load_scenario(path))
    try:
        result = coordinator.run()
    finally:
        coordinator.shutdown()
    [failure] = result.failures
    assert failure["summary_bytes"] > 0
    assert set(failure["restarted"].values()) <= {"h-0"}


def test_guests_that_fit_nowhere_are_reported_lost(tmp_path, local_ray):
    extra = (
        '\n[[failures]]\nhost = "h-0"\nat_tick = 2\n'
        '\n[[failures]]\nhost = "h-1"\nat_tick = 4\n'
    )
    path = with_failure(small_scenario(tmp_path, ticks=6, batch=3), extra)
    coordinator = Coordinator(load_scenario(path))
    try:
        summary = summarize(coordinator.run())
    finally:
        coordinator.shutdown()
    cluster = summary["cluster"]
    assert cluster["guests"] == 0
    assert cluster["guests_lost"] == len(load_scenario(path).guests)
    table = format_table(summary)
    assert "h-1 (down)" in table
    assert "lost (" in table
