"""Host failures: what a down host reports and where its guests restart.

A host fails when its actor dies: killed on schedule by the coordinator
(``[[failures]]`` in the scenario) or by anyone else (``ray.kill``, a
crashed process, a lost node). The coordinator notices when a call to
the actor raises ``RayActorError``, marks the host down and restarts
its guests elsewhere.

A down host keeps a row in the time series: its gauges drop to zero,
its counters keep the last totals it reported, and ``host_up`` is 0,
which the ``cowsim_host_up`` gauge exports.

Restarting: a guest's memory dies with its host; the guest boots again
from its image on a live host with room for its whole memory, chosen by
the scenario's placement policy (``cluster.placement.choose_host``),
guests in scenario order; ``sharing-aware`` asks every live host for a
Bloom filter of its content (a few KiB of msgpack) and prefers the host
holding most of what the guest will read at boot. A guest that fits
nowhere is not restarted
and is reported lost. An HVM guest restarts without bonus pages,
because the target's dom0 sized its memory cache at boot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from cluster.placement import choose_host
from cluster.scenario import PAGE_SIZE, HostSpec
from dedup.summary import ContentSummary
from node.guest import GuestConfig

GAUGE_KEYS = (
    "guests",
    "guests_paused",
    "guest_bytes",
    "machine_bytes",
    "machine_bytes_used",
    "shared_frames",
    "sharing_mappings",
    "saved_bytes",
    "potential_bytes",
    "saved_zero_bytes",
    "saved_disk_bytes",
    "saved_library_bytes",
    "saved_fork_bytes",
    "bonus_pages",
    "fifo_pages",
    "fifo_shortfall_pages",
)
"""Sample keys that are gauges: what a down host reports as zero."""


def down_row(last: dict, tick: int, tick_seconds: float) -> dict:
    """The sample of a host that is down, at ``tick``."""
    row = dict(last)
    row.update({key: 0 for key in GAUGE_KEYS if key in row})
    row["tick"] = tick
    row["sim_time_seconds"] = tick * tick_seconds
    row["host_up"] = 0
    return row


class SummaryAffinity:
    """How much of a guest's boot content each live host already holds,
    read from the hosts' Bloom filter summaries (``node.content``).

    ``contents_of`` gives a guest's boot content ids. A guest chosen for
    a host is added to that host's summary, so that the next guest sees
    it there.
    """

    def __init__(
        self,
        summaries: dict[str, ContentSummary],
        contents_of: Callable[[GuestConfig], np.ndarray],
    ) -> None:
        self.summaries = summaries
        self.contents_of = contents_of

    def counts(self, config: GuestConfig) -> dict[str, int]:
        """Per live host, boot contents its summary reports present."""
        keys = self.contents_of(config)
        return {
            host: int(np.count_nonzero(summary.contains(keys)))
            for host, summary in self.summaries.items()
        }

    def add(self, host: str, config: GuestConfig) -> None:
        """Count the guest's boot content as held by ``host``."""
        self.summaries[host].add(self.contents_of(config))


def restart_targets(
    lost: Sequence[GuestConfig],
    hosts: Sequence[HostSpec],
    up: Sequence[bool],
    reserved: Mapping[str, int],
    policy: str = "spread",
    images: Mapping[str, str] | None = None,
    placement: Mapping[str, str] | None = None,
    affinity: SummaryAffinity | None = None,
) -> dict[str, str | None]:
    """Guest name -> live host to restart it on, or None if none fits.

    ``reserved`` holds the bytes already reserved on each host; the
    placement ``policy`` chooses among live hosts with room. For
    ``sharing-aware`` it counts, with ``affinity``, the guest's boot
    contents each host's summary holds; without it, the guests of each
    image (``images``: guest -> image) already placed (``placement``) on
    each host.
    """
    free = {
        h.name: h.memory_bytes - reserved.get(h.name, 0)
        for h, alive in zip(hosts, up, strict=True)
        if alive
    }
    same: dict[str, dict[str, int]] = {}
    lost_names = {c.name for c in lost}
    for guest, host in (placement or {}).items():
        if host in free and guest not in lost_names and images:
            counts = same.setdefault(images[guest], {})
            counts[host] = counts.get(host, 0) + 1
    targets: dict[str, str | None] = {}
    for config in lost:
        need = config.pages * PAGE_SIZE
        counts = same.setdefault(config.image, {})
        if affinity is not None and policy == "sharing-aware":
            best = choose_host(policy, need, free, affinity.counts(config))
        else:
            best = choose_host(policy, need, free, counts)
        targets[config.name] = best
        if best is not None:
            free[best] -= need
            counts[best] = counts.get(best, 0) + 1
            if affinity is not None:
                affinity.add(best, config)
    return targets


def restart_config(config: GuestConfig) -> GuestConfig:
    """The configuration a guest restarts with on another host."""
    if config.kind == "hvm" and config.bonus != "none":
        return dataclasses.replace(config, bonus="none")
    return config
