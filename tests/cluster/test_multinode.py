"""Hosts spread over the nodes of a real multi-node Ray cluster
(``ray.cluster_utils.Cluster``: several raylets on loopback).

A scheduled failure and the migrations that follow give the same
summary on one node and on three; losing a whole Ray node kills the
hosts on it, and the coordinator restarts their guests elsewhere.
"""

import json
import subprocess
import sys

import pytest
import ray
from ray.cluster_utils import Cluster

from cluster.coordinator import Coordinator
from cluster.results import summarize
from cluster.scenario import load_scenario
from tests.cluster.test_run import ROOT, small_scenario

EVENTS = """
migration_policy = "consolidate"
"""
FAILURE = """
[[hosts]]
name = "spare"
memory = "32MiB"

[[failures]]
host = "h-1"
at_tick = 3

[[migrations]]
guest = "ga-0"
to = "spare"
at_tick = 6
"""


def scenario_with_events(tmp_path):
    path = small_scenario(tmp_path, ticks=9, batch=3)
    text = path.read_text()
    # Top-level keys go before the first table, the rest at the end.
    path.write_text(
        EVENTS + text.replace("[[guests]]", FAILURE + "\n[[guests]]", 1)
    )
    return load_scenario(path)


def run(scenario):
    coordinator = Coordinator(scenario)
    try:
        return coordinator.run()
    finally:
        coordinator.shutdown()


@pytest.fixture(scope="module")
def three_nodes():
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def test_events_give_the_same_summary_on_one_node_and_three(
    tmp_path, three_nodes
):
    scenario = scenario_with_events(tmp_path)
    spread = run(scenario)
    text = json.dumps(summarize(spread), indent=2)
    summary = json.loads(text)
    assert [f["host"] for f in summary["failures"]] == ["h-1"]
    assert any(m["reason"] == "scripted" for m in summary["migrations"])

    # The same scenario on a single-node instance, in a subprocess so
    # that this module's Ray connection stays as it is.
    out = tmp_path / "single"
    code = (
        "import json, sys, ray\n"
        "from cluster.coordinator import Coordinator\n"
        "from cluster.results import summarize\n"
        "from cluster.scenario import load_scenario\n"
        "ray.init(address='local', num_cpus=2, include_dashboard=False)\n"
        "c = Coordinator(load_scenario(sys.argv[1]))\n"
        "r = c.run(); c.shutdown()\n"
        "open(sys.argv[2], 'w').write(json.dumps(summarize(r), indent=2))\n"
    )
    path = tmp_path / "small.toml"
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text() == text


def test_losing_a_ray_node_loses_its_hosts_not_the_run(tmp_path, three_nodes):
    cluster, workers = three_nodes
    scenario = load_scenario(small_scenario(tmp_path, ticks=9, batch=3))
    on_victim = []

    def remove_a_node(done, samples):
        if done != 3:
            return
        nodes = ray.get([a.node_id.remote() for a in coordinator.actors])
        for worker in workers:
            hosts = [
                i for i, node in enumerate(nodes) if node == worker.node_id
            ]
            if hosts:
                on_victim.extend(scenario.hosts[i].name for i in hosts)
                cluster.remove_node(worker)
                return

    coordinator = Coordinator(scenario, progress=remove_a_node)
    try:
        result = coordinator.run()
    finally:
        coordinator.shutdown()
    assert on_victim, "no host ran on a worker node"
    assert sorted(f["host"] for f in result.failures) == sorted(on_victim)
    assert all(f["how"] == "died" for f in result.failures)
    cluster_rows = [r for r in result.series if r["host"] == "cluster"]
    assert cluster_rows[-1]["tick"] == 9
    assert cluster_rows[-1]["host_up"] == 2 - len(on_victim)
