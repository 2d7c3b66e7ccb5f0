"""The cluster coordinator: places guests, drives host actors, aggregates.

Data structures:

- ``placement``: guest name -> host name, decided before any host starts
  and changed only by restarts after a failure and by migrations;
- one ``HostActor`` per host, stepped ``batch_ticks`` ticks at a time.
  All hosts run a batch concurrently; the coordinator waits for the
  slowest, then publishes the newest samples to the metrics state;
- ``series``: every host's sample for every tick, plus one cluster row per
  tick summing them, kept for the results directory;
- the catalog (``cluster.catalog``), rebuilt from the hosts' digests
  after each batch: which images and libraries are resident where;
- ``up`` and ``latest``: per host, whether it runs and its newest
  sample (a down host's is its last one, gauges at zero);
- ``failures`` and ``migrations``: one record per host failure and per
  migration, for the summary.

Placement follows the scenario's ``placement_policy`` (default
"spread": each guest, in scenario order, goes to the host with the most
unreserved memory that can hold it, ties broken by host order). Hosts
never overcommit: a guest's memory is reserved whole.

Hosts fail (``cluster.failures``): on schedule, the coordinator kills
a host's actor at the end of the batch that reaches the failure's tick
(batches are cut at every scheduled event); any call to a dead actor
raises ``RayActorError``, which marks the host down, whoever killed it.
Its guests are restarted from their images on live hosts with room.

Guests migrate between batches (``cluster.migration`` decides,
``node.migration`` moves): scripted in the scenario, or by the
scenario's ``migration_policy``. Each move is recorded with the pages
sent, with and without skipping content the destination holds, and the
sharing lost at the source and gained at the destination.

Results depend only on the scenario and seed: each host's randomness
derives from the seed and each guest's from its position in the
scenario, and nothing depends on which Ray node runs which host.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.catalog import Catalog
from cluster.failures import (
    SummaryAffinity,
    down_row,
    restart_config,
    restart_targets,
)
from cluster.metrics import RunState
from cluster.migration import consolidate, rebalance, reserved_bytes
from cluster.placement import DEFAULT_SUMMARY_BITS, choose_host
from cluster.scenario import PAGE_SIZE, Scenario, ScenarioError
from dedup.content import ContentStore
from dedup.errors import ImageError
from dedup.summary import ContentSummary
from node.actor import HostActor
from node.content import boot_contents
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
    failures: list[dict] = field(default_factory=list)
    migrations: list[dict] = field(default_factory=list)
    wall_seconds: float = 0.0
    boot_seconds: float = 0.0


def place(scenario: Scenario) -> dict[str, str]:
    """Place every guest by the scenario's ``placement_policy``.

    Clones go to their stub's host. See
    :func:`cluster.placement.choose_host` for the policies.
    """
    free = {h.name: h.memory_bytes for h in scenario.hosts}
    placement: dict[str, str] = {}
    same: dict[str, dict[str, int]] = {}
    for guest in scenario.guests:
        if guest.clone_of:
            # A clone shares its stub's frames: it runs on the stub's host.
            host = placement[guest.clone_of]
            if free[host] < guest.memory_bytes:
                raise ScenarioError(
                    f"{scenario.source}: guests: cannot place clone "
                    f"{guest.name} on {host}, the host of its stub: no room"
                )
        else:
            host = choose_host(
                scenario.placement_policy,
                guest.memory_bytes,
                free,
                same.get(guest.image, {}),
            )
        if host is None:
            raise ScenarioError(
                f"{scenario.source}: guests: cannot place {guest.name} "
                f"({guest.memory_bytes // 2**20} MiB): no host has room left"
            )
        free[host] -= guest.memory_bytes
        counts = same.setdefault(guest.image, {})
        counts[host] = counts.get(host, 0) + 1
        placement[guest.name] = host
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
        stub=g.stub,
        clone_of=g.clone_of,
        warmup_ticks=g.warmup_ticks,
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
        self.up: list[bool] = []
        self.latest: list[dict] = []
        self.failures: list[dict] = []
        self.migrations: list[dict] = []
        self._images_ref = None
        self._images: dict[str, Image] = {}
        self._uids: dict[str, int] = {}
        # Failure records whose guests wait for a restart.
        self._pending: list[dict] = []

    def run(self) -> RunResult:
        """Boot every host, run all ticks, gather the results."""
        started = time.monotonic()
        s = self.scenario
        images = self.images or load_images(s)
        self._images = images
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
            n = min(s.batch_ticks, s.ticks - done, self._next_event(done))
            per_host = self._step(n, done)
            for t in range(n):
                samples = [rows[t] for rows in per_host]
                result.series.extend(samples)
                result.series.append(cluster_row(samples))
            done += n
            self._scheduled_events(done)
            self.state.update(self.latest)
            if self.progress:
                self.progress(done, self.latest)
            behind = ticking + done * self.pace_seconds - time.monotonic()
            if behind > 0:
                time.sleep(behind)

        result.final = self.state.samples()
        live = [a for a, up in zip(self.actors, self.up, strict=True) if up]
        digests = ray.get([a.digest.remote() for a in live])
        result.catalog = Catalog.from_digests(digests)
        for events in ray.get([a.events.remote() for a in live]):
            result.events.extend(events)
        result.failures = self.failures
        result.migrations = self.migrations
        result.wall_seconds = time.monotonic() - started
        return result

    def _next_event(self, done: int) -> int:
        """Ticks until the next scheduled event, or a large number."""
        s = self.scenario
        ticks = [f.at_tick for f in s.failures]
        ticks += [m.at_tick for m in s.migrations]
        later = [t - done for t in ticks if t > done]
        return min(later, default=s.ticks)

    def _step(self, n: int, done: int) -> list[list[dict]]:
        """Step every live host ``n`` ticks; notice hosts that died."""
        s = self.scenario
        refs = {
            i: actor.step.remote(n)
            for i, actor in enumerate(self.actors)
            if self.up[i]
        }
        per_host: list[list[dict] | None] = [None] * len(self.actors)
        died = []
        for i, ref in refs.items():
            try:
                per_host[i] = [_up(row) for row in ray.get(ref)]
            except ray.exceptions.RayActorError as exc:
                died.append((i, _first_line(exc)))
        for i, cause in died:
            self._host_down(i, done + n, cause)
        for i, rows in enumerate(per_host):
            if rows is None:
                per_host[i] = [
                    down_row(self.latest[i], done + t + 1, s.tick_seconds)
                    for t in range(n)
                ]
            self.latest[i] = per_host[i][-1]
        if died:
            self._restart_lost(done + n)
        return per_host

    def _scheduled_events(self, tick: int) -> None:
        """Kill the hosts scheduled to fail now; do the migrations."""
        s = self.scenario
        for failure in s.failures:
            if failure.at_tick == tick:
                self._kill(self._host_index(failure.host), tick)
        self._restart_lost(tick)
        for m in s.migrations:
            if m.at_tick == tick:
                self._migrate(m.guest, m.to, tick, "scripted")
        if s.migration_policy == "consolidate":
            moves = consolidate(s.hosts, self.up, s.guests, self.placement)
        elif s.migration_policy == "rebalance":
            moves = rebalance(
                s.hosts, self.up, s.guests, self.placement, self.latest
            )
        else:
            moves = []
        for guest, to in moves:
            self._migrate(guest, to, tick, s.migration_policy)

    def _migrate(self, guest: str, to: str, tick: int, reason: str) -> None:
        """Move a guest between two live hosts, recording the cost."""
        s = self.scenario
        source = self.placement.get(guest, "")
        record = {"tick": tick, "guest": guest, "from": source, "to": to}
        record["reason"] = reason
        src, dst = self._host_index(source or to), self._host_index(to)
        spec = next(g for g in s.guests if g.name == guest)
        room = s.hosts[dst].memory_bytes - reserved_bytes(
            s.guests, self.placement
        ).get(to, 0)
        refusal = None
        if not source or not self.up[src]:
            refusal = "guest is not running"
        elif source == to:
            refusal = "already there"
        elif not self.up[dst]:
            refusal = "destination is down"
        elif room < spec.memory_bytes:
            refusal = "no room at the destination"
        if refusal:
            self.migrations.append(record | {"refused": refusal})
            return
        moving, lost_ref = self.actors[src].emigrate.remote(guest)
        gained = ray.get(self.actors[dst].immigrate.remote(moving))
        lost = ray.get(lost_ref)
        self.placement[guest] = to
        self.latest[src] = _up(lost["source"])
        self.latest[dst] = _up(gained["destination"])
        record.update(
            pages_sent=gained["pages_sent"],
            pages_sent_skipping_known=gained["pages_sent_skipping_known"],
            sharing_lost_bytes=lost["sharing_lost_pages"] * PAGE_SIZE,
            sharing_gained_bytes=gained["sharing_gained_pages"] * PAGE_SIZE,
        )
        self.migrations.append(record)

    def _kill(self, index: int, tick: int) -> None:
        """Kill a host's actor and wait until calls to it fail."""
        if not self.up[index]:
            return
        actor = self.actors[index]
        ray.kill(actor, no_restart=True)
        deadline = time.monotonic() + _KILL_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                ray.get(actor.node_id.remote())
            except ray.exceptions.RayActorError as exc:
                self._host_down(index, tick, _first_line(exc), "scheduled")
                return
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.scenario.hosts[index].name}: still answering "
            f"{_KILL_TIMEOUT_SECONDS} s after ray.kill"
        )

    def _host_down(
        self, index: int, tick: int, cause: str, how: str = "died"
    ) -> None:
        """Mark a host down and record what it held."""
        s = self.scenario
        name = s.hosts[index].name
        self.up[index] = False
        last = self.latest[index]
        lost = [g.name for g in s.guests if self.placement[g.name] == name]
        self.failures.append(
            {
                "host": name,
                "tick": tick,
                "how": how,
                "cause": cause,
                "guests": lost,
                "guest_bytes_lost": last["guest_bytes"],
                "saved_bytes_lost": last["saved_bytes"],
                "restarted": {},
                "not_restarted": [],
            }
        )
        self._pending.append(self.failures[-1])
        self.latest[index] = down_row(last, tick, s.tick_seconds)
        log.warning(
            "%s down at tick %d (%s): %d guests to restart",
            name,
            tick,
            how,
            len(lost),
        )

    def _restart_lost(self, tick: int) -> None:
        """Boot the guests of hosts that went down on live hosts."""
        s = self.scenario
        pending, self._pending = self._pending, []
        if not pending:
            return
        lost_names = {g for f in pending for g in f["guests"]}
        lost = [
            restart_config(guest_config(s, i))
            for i, g in enumerate(s.guests)
            if g.name in lost_names
        ]
        reserved: dict[str, int] = {}
        for g in s.guests:
            if g.name not in lost_names and self.placement[g.name]:
                host = self.placement[g.name]
                reserved[host] = reserved.get(host, 0) + g.memory_bytes
        affinity = None
        if s.placement_policy == "sharing-aware":
            affinity = self._summaries(pending)
        targets = restart_targets(
            lost,
            s.hosts,
            self.up,
            reserved,
            s.placement_policy,
            {g.name: g.image for g in s.guests},
            self.placement,
            affinity,
        )
        by_host: dict[int, list[GuestConfig]] = {}
        for config in lost:
            target = targets[config.name]
            self.placement[config.name] = target or ""
            if target is not None:
                index = self._host_index(target)
                by_host.setdefault(index, []).append(config)
        boots = {
            i: self.actors[i].boot.remote(
                configs, self._images_ref, self._uids
            )
            for i, configs in by_host.items()
        }
        for i, ref in boots.items():
            self.latest[i] = _up(ray.get(ref))
        for f in pending:
            for guest in f["guests"]:
                target = targets.get(guest)
                if target is None:
                    f["not_restarted"].append(guest)
                else:
                    f["restarted"][guest] = target

    def _summaries(self, pending: list[dict]) -> SummaryAffinity:
        """Every live host's content summary, for sharing-aware restarts;
        the bytes received are added to the failure records."""
        s = self.scenario
        live = [i for i, up in enumerate(self.up) if up]
        blobs = ray.get(
            [self.actors[i].summary.remote(SUMMARY_BITS) for i in live]
        )
        for f in pending:
            f["summary_bytes"] = sum(len(b) for b in blobs)
        summaries = {
            s.hosts[i].name: ContentSummary.from_msgpack(blob)
            for i, blob in zip(live, blobs, strict=True)
        }

        def contents_of(config: GuestConfig) -> np.ndarray:
            return boot_contents(
                self._images[config.image],
                config.boot_read_fraction,
                config.map_libraries,
                config.pages,
                s.seed,
                config.index,
            )

        return SummaryAffinity(summaries, contents_of)

    def _host_index(self, name: str) -> int:
        for i, host in enumerate(self.scenario.hosts):
            if host.name == name:
                return i
        raise KeyError(name)

    def _start_hosts(self, images: dict[str, Image]) -> list[dict]:
        s = self.scenario
        self._uids = {spec.name: i + 1 for i, spec in enumerate(s.images)}
        self._images_ref = ray.put(images)
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
            boots.append(
                actor.boot.remote(configs, self._images_ref, self._uids)
            )
            self.actors.append(actor)
            self.up.append(True)
        first = [_up(row) for row in ray.get(boots)]
        self.latest = list(first)
        self.state.update(first)
        return [*first, cluster_row(first)]

    def shutdown(self) -> None:
        """Stop the host actors."""
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


_KILL_TIMEOUT_SECONDS = 30.0
SUMMARY_BITS = DEFAULT_SUMMARY_BITS
"""Bloom filter size of the summaries hosts send for restarts."""


def _up(row: dict) -> dict:
    """A live host's sample, marked up."""
    row["host_up"] = 1
    return row


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _alive_nodes() -> list[str]:
    """Ids of the cluster's live nodes, in a stable order."""
    return sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
