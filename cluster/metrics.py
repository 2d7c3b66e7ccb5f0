"""Prometheus metrics of a run, served by prometheus-client on loopback.

Every metric is defined once in ``METRICS``: its name, type, labels, help
text and how to read it from a host sample. A collector turns the latest
samples into metric families at each scrape, so counters are the hosts'
own running totals and nothing is incremented twice. For every per-host
metric there is a cluster total named ``cowsim_cluster_...`` with the
same labels minus ``host``.

Labels are bounded: ``host``, ``source`` (a hint source) and ``kind`` (a
fault kind or a hint outcome); never a GFN or a guest.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)

from dedup.hints import HINT_SOURCES, OUTCOMES, SOURCES
from node.host import FAULT_KINDS

Sample = dict
Reader = Callable[[Sample], list[tuple[tuple[str, ...], float]]]


@dataclass(frozen=True)
class MetricDef:
    """One metric: name without ``cowsim_``, type, labels, help, reader."""

    name: str
    kind: str  # "gauge" or "counter"
    labels: tuple[str, ...]
    help: str
    read: Reader


def _one(key: str) -> Reader:
    return lambda s: [((), float(s[key]))]


def _by(label_values, key_of) -> Reader:
    return lambda s: [((v,), float(s[key_of(v)])) for v in label_values]


def _hints(s: Sample) -> list[tuple[tuple[str, ...], float]]:
    return [
        ((src, out), float(s[f"hints_{src}_{out}"]))
        for src in HINT_SOURCES
        for out in OUTCOMES
    ]


METRICS: tuple[MetricDef, ...] = (
    MetricDef(
        "host_up",
        "gauge",
        (),
        "1 while the host runs, 0 once it has failed; the cluster "
        "total counts hosts up.",
        lambda s: [((), float(s.get("host_up", 1)))],
    ),
    MetricDef("guests", "gauge", (), "Guests running.", _one("guests")),
    MetricDef(
        "guests_paused",
        "gauge",
        (),
        "Guests paused by an unsatisfied copy-on-write fault.",
        _one("guests_paused"),
    ),
    MetricDef(
        "guest_memory_bytes",
        "gauge",
        (),
        "Guest memory: populated guest pages times the page size.",
        _one("guest_bytes"),
    ),
    MetricDef(
        "machine_memory_bytes",
        "gauge",
        (),
        "Machine memory of the hosts.",
        _one("machine_bytes"),
    ),
    MetricDef(
        "machine_memory_used_bytes",
        "gauge",
        (),
        "Machine frames backing guest pages, private or shared.",
        _one("machine_bytes_used"),
    ),
    MetricDef(
        "shared_frames",
        "gauge",
        (),
        "Frames mapped by two or more guest pages (KSM's pages_shared).",
        _one("shared_frames"),
    ),
    MetricDef(
        "sharing_mappings",
        "gauge",
        (),
        "Guest pages mapping a shared frame beyond its first "
        "(KSM's pages_sharing): frames saved.",
        _one("sharing_mappings"),
    ),
    MetricDef(
        "saved_bytes",
        "gauge",
        ("source",),
        "Memory saved by sharing, by the hint source that found it "
        "(fork: shared by forking a stub).",
        _by((*SOURCES, "fork"), lambda v: f"saved_{v}_bytes"),
    ),
    MetricDef(
        "potential_saved_bytes",
        "gauge",
        (),
        "Memory a perfect deduplicator would save on the same "
        "guest memory now.",
        _one("potential_bytes"),
    ),
    MetricDef(
        "cow_faults",
        "counter",
        ("kind",),
        "Write faults on write-protected frames, by how they were "
        "served: last mapping, no copy (zero), copy, unsatisfied.",
        _by(FAULT_KINDS, lambda v: f"faults_{v}"),
    ),
    MetricDef(
        "copied_bytes",
        "counter",
        (),
        "Bytes copied to serve copy-on-write faults.",
        _one("bytes_copied"),
    ),
    MetricDef(
        "hints",
        "counter",
        ("source", "kind"),
        "Hints handled by the CoW daemon, by source and outcome.",
        _hints,
    ),
    MetricDef(
        "compared_bytes",
        "counter",
        (),
        "Bytes compared by the daemon to verify hints.",
        _one("bytes_compared"),
    ),
    MetricDef(
        "bonus_pages",
        "gauge",
        (),
        "Frames lent to guests (or to dom0 for HVM guests) as bonus pages.",
        _one("bonus_pages"),
    ),
    MetricDef(
        "fifo_pages",
        "gauge",
        (),
        "Volatile pages promised in repayment FIFOs.",
        _one("fifo_pages"),
    ),
    MetricDef(
        "fifo_shortfall_pages",
        "gauge",
        (),
        "Bonus pages not covered by a FIFO entry; 0 while the repayment "
        "invariant holds.",
        _one("fifo_shortfall_pages"),
    ),
    MetricDef(
        "repaid_pages",
        "counter",
        (),
        "Volatile pages reclaimed from repayment FIFOs to serve faults.",
        _one("repaid_pages"),
    ),
    MetricDef(
        "refaults",
        "counter",
        (),
        "Reads of blocks lost with a reclaimed volatile page.",
        _one("refaults"),
    ),
    MetricDef(
        "copy_avoided_bytes",
        "counter",
        (),
        "Bytes not copied because the faulting page was logically zero.",
        _one("copy_avoided_bytes"),
    ),
    MetricDef(
        "hypercalls",
        "counter",
        (),
        "mark_page_ro and share_mfns batches issued.",
        _one("hypercalls"),
    ),
    MetricDef(
        "scanned_pages",
        "counter",
        (),
        "Guest pages visited by content scanners (KSM, sampling, blocks).",
        _one("pages_scanned"),
    ),
    MetricDef(
        "hashed_pages",
        "counter",
        (),
        "Pages whose 4 KiB content scanners read to hash or checksum.",
        _one("pages_hashed"),
    ),
    MetricDef(
        "scan_compared_bytes",
        "counter",
        (),
        "Bytes compared by content scanners before merging.",
        _one("scan_bytes_compared"),
    ),
    MetricDef(
        "scan_hypercalls",
        "counter",
        (),
        "mark_page_ro and share_mfns batches issued by content scanners.",
        _one("scan_hypercalls"),
    ),
    MetricDef(
        "daemon_cpu_seconds",
        "counter",
        (),
        "Estimated CPU time of the CoW daemon (hints and scanners), from "
        "the cost model's per-operation times.",
        _one("daemon_cpu_seconds"),
    ),
    MetricDef(
        "saved_byte_seconds",
        "counter",
        (),
        "Memory saved integrated over simulated time; divided by the "
        "potential's integral, the share of sharing caught while it lasted.",
        _one("saved_byte_seconds"),
    ),
    MetricDef(
        "potential_saved_byte_seconds",
        "counter",
        (),
        "Memory a perfect deduplicator would have saved, integrated over "
        "simulated time.",
        _one("potential_byte_seconds"),
    ),
)


class RunState:
    """The latest sample of every host, swapped in whole by the run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: list[Sample] = []
        self.tick = 0
        self.sim_time_seconds = 0.0

    def update(self, samples: list[Sample]) -> None:
        """Publish the newest sample of each host."""
        with self._lock:
            self._samples = list(samples)
            if samples:
                self.tick = samples[0]["tick"]
                self.sim_time_seconds = samples[0]["sim_time_seconds"]

    def samples(self) -> list[Sample]:
        """A consistent copy of the latest samples."""
        with self._lock:
            return list(self._samples)


class RunCollector:
    """prometheus-client collector reading a ``RunState`` at each scrape."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family, per host and for the cluster."""
        samples = self.state.samples()
        yield GaugeMetricFamily(
            "cowsim_tick", "Ticks simulated so far.", value=self.state.tick
        )
        yield GaugeMetricFamily(
            "cowsim_sim_time_seconds",
            "Simulated time so far (not wall time).",
            value=self.state.sim_time_seconds,
        )
        for m in METRICS:
            yield from self._families(m, samples)

    def _families(self, m: MetricDef, samples: list[Sample]):
        family = (
            GaugeMetricFamily if m.kind == "gauge" else CounterMetricFamily
        )
        host = family(f"cowsim_{m.name}", m.help, labels=("host", *m.labels))
        total = family(
            f"cowsim_cluster_{m.name}",
            f"Sum over all hosts. {m.help}",
            labels=m.labels,
        )
        sums: dict[tuple[str, ...], float] = {}
        for sample in samples:
            for values, v in m.read(sample):
                host.add_metric((sample["host"], *values), v)
                sums[values] = sums.get(values, 0.0) + v
        for values, v in sums.items():
            total.add_metric(values, v)
        yield host
        yield total


class MetricsServer:
    """The HTTP endpoint Prometheus scrapes during a run."""

    def __init__(self, state: RunState, port: int, addr: str) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(RunCollector(state))
        try:
            self._server, self._thread = start_http_server(
                port, addr=addr, registry=self.registry
            )
        except OSError as exc:
            # A name that does not resolve is the address's fault; anything
            # else (in use, not permitted) the port's.
            option = (
                f"--metrics-addr {addr}"
                if isinstance(exc, socket.gaierror)
                else f"--metrics-port {port}"
            )
            raise OSError(
                f"{option}: cannot listen on {addr}: {exc.strerror or exc}"
            ) from exc
        self.addr = addr
        self.port = self._server.server_port

    @property
    def url(self) -> str:
        """Where the metrics are served."""
        return f"http://{self.addr}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
