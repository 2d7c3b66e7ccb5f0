"""Same scenario and seed, same summary: on one node, on three, again.

Uses ``ray.cluster_utils.Cluster`` for a real multi-node Ray cluster on
this machine (several raylets on loopback).
"""

import json

import ray
from ray.cluster_utils import Cluster

from cluster.coordinator import Coordinator
from cluster.results import summarize
from cluster.scenario import load_scenario
from tests.cluster.test_run import small_scenario


def run_summary(scenario) -> tuple[str, int]:
    """The summary as text, and on how many Ray nodes the hosts ran."""
    coordinator = Coordinator(scenario)
    try:
        result = coordinator.run()
        nodes = ray.get([a.node_id.remote() for a in coordinator.actors])
    finally:
        coordinator.shutdown()
    return json.dumps(summarize(result), indent=2), len(set(nodes))


def test_summary_is_identical_across_runs_and_node_counts(tmp_path):
    scenario = load_scenario(small_scenario(tmp_path, ticks=9, batch=3))

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        local = [run_summary(scenario)[0], run_summary(scenario)[0]]
        other_seed = run_summary(scenario.with_seed(scenario.seed + 1))[0]
    finally:
        ray.shutdown()

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        alive = len([n for n in ray.nodes() if n["Alive"]])
        spread, used = run_summary(scenario)
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert alive == 3 and used == 2  # two hosts, on two different nodes
    assert local[0] == local[1]
    assert spread == local[0]
    assert other_seed != local[0]
