"""The cluster coordinator: places guests, drives host actors, aggregates.

Data structures:

- ``placement``: guest name -> host name, decided before any host starts;
- one ``HostActor`` per host, stepped ``batch_ticks`` ticks at a time.
  All hosts run a batch concurrently; the coordinator waits for the
  slowest, then publishes the newest samples to the metrics state;
- ``series``: every host's sample for every tick, plus one cluster row per
  tick summing them, kept for the results directory;
- the catalog (``cluster.catalog``), rebuilt from the hosts' digests
  after each batch: which images and libraries are resident where.

Placement here is "spread": each guest, in scenario order, goes to the
host with the most unreserved memory that can hold it, ties broken by
host order. Hosts never overcommit: a guest's memory is reserved whole.

Results depend only on the scenario and seed: each host's randomness
derives from the seed and each guest's from its position in the
scenario, and nothing depends on which Ray node runs which host.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.catalog import Catalog
from cluster.metrics import RunState
from cluster.scenario import PAGE_SIZE, Scenario, ScenarioError
from dedup.content import ContentStore
from dedup.errors import ImageError
from node.actor import HostActor
from node.guest import GuestConfig
from node.image import Image, load_image

log = logging.getLogger(__name__)

Progress = Callable[[int, list[dict]], None]

# Sample keys that are not summed into the cluster row.
_NOT_SUMMED = {"host", "tick", "sim_time_seconds"}


@dataclass
class RunResult:
    """Everything a finished run hands to the results writer."""

    scenario: Scenario
    placement: dict[str, str]
    series: list[dict] = field(default_factory=list)
    final: list[dict] = field(default_factory=list)
    catalog: Catalog = field(default_factory=Catalog)
    events: list[dict] = field(default_factory=list)
    images: dict[str, dict] = field(default_factory=dict)
    wall_seconds: float = 0.0
    boot_seconds: float = 0.0


def place(scenario: Scenario) -> dict[str, str]:
    """Spread placement: the host with most free memory that fits."""
    free = {h.name: h.memory_bytes for h in scenario.hosts}
    placement = {}
    for guest in scenario.guests:
        fits = [
            h for h in scenario.hosts if free[h.name] >= guest.memory_bytes
        ]
        if not fits:
            raise ScenarioError(
                f"{scenario.source}: guests: cannot place {guest.name} "
                f"({guest.memory_bytes // 2**20} MiB): no host has room left"
            )
        best = max(fits, key=lambda h: free[h.name])
        free[best.name] -= guest.memory_bytes
        placement[guest.name] = best.name
    return placement


def load_images(scenario: Scenario) -> dict[str, Image]:
    """Read every image once, interning its blocks in one content store."""
    store = ContentStore()
    images = {}
    for spec in scenario.images:
        try:
            images[spec.name] = load_image(
                spec.name, spec.paths, store, spec.exclude, spec.max_bytes
            )
        except ImageError as exc:
            key = f"images.{spec.name}"
            raise ImageError(f"{scenario.source}: {key}: {exc}") from exc
        log.info("image %s: %d blocks", spec.name, images[spec.name].n_blocks)
    log.info(
        "%d distinct pages in %d images", store.distinct_pages, len(images)
    )
    return images


def guest_config(scenario: Scenario, index: int) -> GuestConfig:
    """The node-level description of the scenario's ``index``-th guest."""
    g = scenario.guests[index]
    w = g.workload
    return GuestConfig(
        name=g.name,
        index=index,
        image=g.image,
        pages=g.memory_bytes // PAGE_SIZE,
        kind=g.kind,
        boot_read_fraction=g.boot_read_fraction,
        map_libraries=g.map_libraries,
        read_pages_per_tick=w.read_pages_per_tick,
        disk_write_pages_per_tick=w.disk_write_pages_per_tick,
        anon_write_pages_per_tick=w.anon_write_pages_per_tick,
        free_pages_per_tick=w.free_pages_per_tick,
        burst_tick=w.burst_tick,
        transient_pages=w.transient_pages,
        transient_ticks=w.transient_ticks,
        bonus=g.bonus,
        bonus_fraction=g.bonus_fraction,
    )


def cluster_row(samples: list[dict]) -> dict:
    """Sum host samples of one tick into a cluster row."""
    row = {
        "host": "cluster",
        "tick": samples[0]["tick"],
        "sim_time_seconds": samples[0]["sim_time_seconds"],
    }
    for key in samples[0]:
        if key not in _NOT_SUMMED:
            row[key] = sum(s[key] for s in samples)
    return row


class Coordinator:
    """Runs one scenario on host actors in a Ray cluster."""

    def __init__(
        self,
        scenario: Scenario,
        state: RunState | None = None,
        progress: Progress | None = None,
        images: dict[str, Image] | None = None,
        pace_seconds: float = 0.0,
    ) -> None:
        self.scenario = scenario
        # Least wall time per simulated tick: 0 runs as fast as it can; a
        # watcher (Prometheus scraping every few seconds) wants a slower,
        # steadier run. It changes no result.
        self.pace_seconds = pace_seconds
        self.images = images
        self.state = state or RunState()
        self.progress = progress
        self.placement = place(scenario)
        self.actors: list = []

    def run(self) -> RunResult:
        """Boot every host, run all ticks, gather the results."""
        started = time.monotonic()
        s = self.scenario
        images = self.images or load_images(s)
        result = RunResult(s, self.placement)
        result.images = {
            name: {
                "blocks": img.n_blocks,
                "bytes": img.size_bytes,
                "libraries": len(img.libraries()),
            }
            for name, img in images.items()
        }
        result.series.extend(self._start_hosts(images))
        ticking = time.monotonic()
        result.boot_seconds = ticking - started

        done = 0
        while done < s.ticks:
            n = min(s.batch_ticks, s.ticks - done)
            per_host = ray.get([a.step.remote(n) for a in self.actors])
            for t in range(n):
                samples = [rows[t] for rows in per_host]
                result.series.extend(samples)
                result.series.append(cluster_row(samples))
            done += n
            latest = [rows[-1] for rows in per_host]
            self.state.update(latest)
            if self.progress:
                self.progress(done, latest)
            behind = ticking + done * self.pace_seconds - time.monotonic()
            if behind > 0:
                time.sleep(behind)

        result.final = self.state.samples()
        digests = ray.get([a.digest.remote() for a in self.actors])
        result.catalog = Catalog.from_digests(digests)
        for events in ray.get([a.events.remote() for a in self.actors]):
            result.events.extend(events)
        result.wall_seconds = time.monotonic() - started
        return result

    def _start_hosts(self, images: dict[str, Image]) -> list[dict]:
        s = self.scenario
        uids = {spec.name: i + 1 for i, spec in enumerate(s.images)}
        images_ref = ray.put(images)
        nodes = _alive_nodes()
        boots = []
        for index, host in enumerate(s.hosts):
            # Hosts go round-robin over the nodes: every node gets its share
            # however Ray would have packed them. Results do not depend on
            # it; the host's seed comes from the scenario and its index.
            node = NodeAffinitySchedulingStrategy(
                nodes[index % len(nodes)], soft=False
            )
            actor = HostActor.options(
                num_cpus=0, scheduling_strategy=node
            ).remote(
                host.name,
                index,
                host.memory_bytes // PAGE_SIZE,
                s.seed,
                s.tick_seconds,
                s.repayment_invariant,
                host.strategy,
            )
            configs = [
                guest_config(s, i)
                for i, g in enumerate(s.guests)
                if self.placement[g.name] == host.name
            ]
            boots.append(actor.boot.remote(configs, images_ref, uids))
            self.actors.append(actor)
        first = ray.get(boots)
        self.state.update(first)
        return [*first, cluster_row(first)]

    def shutdown(self) -> None:
        """Stop the host actors."""
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def _alive_nodes() -> list[str]:
    """Ids of the cluster's live nodes, in a stable order."""
    return sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
