"""One physical host: its memory, its guests and the CoW daemon in dom0.

A host steps in simulated ticks. In each tick every running guest does
its workload (reads, writes, frees; see ``node.guest``), then the daemon
verifies and shares what the guests hinted. After every tick the host
takes a *sample*: a flat dict of gauges and running totals that becomes
one row of the time series and feeds the metrics.

Fresh content (anonymous writes, blocks written through a copy-on-write
disk) gets content ids from a counter of the host's own, numbered apart
from every other host, so that runs are reproducible wherever each host
runs.

A write that finds no frame pauses its guest: the event is recorded in
``events`` and logged, and the guest does nothing more in this run.

This module does not import Ray; ``node.actor`` wraps it.
"""

from __future__ import annotations

import logging

import numpy as np

from dedup.content import PAGE_SIZE, SYNTHETIC_BASE
from dedup.hints import OUTCOMES, SOURCES, HintBatch
from dedup.memory import HostMemory
from node.daemon import CowDaemon
from node.guest import Guest, GuestConfig
from node.image import Image

log = logging.getLogger(__name__)

FAULT_KINDS = ("last", "nocopy", "copy", "unsatisfied")


class Host:
    """A hypervisor host with its guests and CoW daemon."""

    def __init__(
        self,
        name: str,
        index: int,
        memory_pages: int,
        seed: int,
        tick_seconds: float = 1.0,
    ) -> None:
        self.name = name
        self.index = index
        self.seed = seed
        self.tick_seconds = tick_seconds
        self.memory = HostMemory(memory_pages)
        self.daemon = CowDaemon(self.memory)
        self.guests: list[Guest] = []
        self.tick = 0
        self.events: list[dict] = []
        self._next_content = SYNTHETIC_BASE + (index << 40)

    def boot(
        self,
        configs: list[GuestConfig],
        images: dict[str, Image],
        image_uids: dict[str, int],
    ) -> dict:
        """Build each guest's domain, boot it, share what it hinted."""
        for config in configs:
            domid = len(self.guests) + 1  # dom0 is domain 0
            self.memory.create_domain(domid, config.pages)
            guest = Guest(
                domid,
                config,
                images[config.image],
                image_uids[config.image],
                self.seed,
            )
            self.guests.append(guest)
            guest.boot(self._write, self._fresh)
        self._share()
        self.memory.check()
        return self.sample()

    def step(self, n_ticks: int) -> list[dict]:
        """Run ``n_ticks`` ticks; return one sample per tick."""
        rows = []
        for _ in range(n_ticks):
            self.tick += 1
            for guest in self.guests:
                if not guest.paused:
                    guest.tick(self._write, self._fresh)
            self._share()
            rows.append(self.sample())
        # Invariants stay on; checked once per batch as the full check
        # costs a pass over every frame.
        self.memory.check()
        return rows

    def sample(self) -> dict:
        """Gauges and running totals of this host, now."""
        m = self.memory
        guest_pages = m.guest_pages()
        sharing = m.sharing()
        c = m.counters
        row = {
            "host": self.name,
            "tick": self.tick,
            "sim_time_seconds": self.tick * self.tick_seconds,
            "guests": len(self.guests),
            "guests_paused": sum(g.paused for g in self.guests),
            "guest_bytes": guest_pages * PAGE_SIZE,
            "machine_bytes": m.frames.n_frames * PAGE_SIZE,
            "machine_bytes_used": m.frames_in_use() * PAGE_SIZE,
            "shared_frames": sharing["shared_frames"],
            "sharing_mappings": sharing["sharing_mappings"],
            "saved_bytes": sharing["sharing_mappings"] * PAGE_SIZE,
            "potential_bytes": (guest_pages - m.distinct_contents())
            * PAGE_SIZE,
            "cow_faults": c.faults_last
            + c.faults_nocopy
            + c.faults_copy
            + c.faults_unsatisfied,
        }
        saved = m.saved_by_source(len(SOURCES))
        for source, pages in zip(SOURCES, saved.tolist(), strict=True):
            row[f"saved_{source}_bytes"] = pages * PAGE_SIZE
        for kind in FAULT_KINDS:
            row[f"faults_{kind}"] = getattr(c, f"faults_{kind}")
        row["bytes_copied"] = c.bytes_copied
        outcomes = self.daemon.table.outcomes
        for i, source in enumerate(SOURCES):
            for j, outcome in enumerate(OUTCOMES):
                row[f"hints_{source}_{outcome}"] = int(outcomes[i, j])
        row.update(self.daemon.costs())
        return row

    def digest(self) -> dict:
        """What content is resident here, for the cluster catalog.

        ``images``: per base image, pages held unmodified in page caches;
        ``libraries``: per library (by content digest), its path and the
        pages mapped, summed over guests.
        """
        images: dict[str, int] = {}
        libraries: dict[int, list] = {}
        for guest in self.guests:
            for name, pages in guest.resident().items():
                images[name] = images.get(name, 0) + pages
            if not guest.config.map_libraries:
                continue
            for lib in guest.image.libraries():
                span = slice(lib.first_block, lib.first_block + lib.n_blocks)
                clean = (guest.block_gfn[span] >= 0) & ~guest.modified[span]
                entry = libraries.setdefault(lib.digest, [lib.path, 0])
                entry[1] += int(np.count_nonzero(clean))
        return {"host": self.name, "images": images, "libraries": libraries}

    def _share(self) -> None:
        batch = HintBatch.concat([g.take_hints() for g in self.guests])
        self.daemon.process(batch)

    def _fresh(self, n: int) -> np.ndarray:
        first = self._next_content
        self._next_content += n
        return np.arange(first, first + n, dtype=np.int64)

    def _write(
        self, domid: int, gfns: np.ndarray, contents: np.ndarray
    ) -> np.ndarray:
        outcome = self.memory.write(domid, gfns, contents)
        if outcome.unsatisfied.size == 0:
            return np.ones(gfns.size, dtype=bool)
        guest = self.guests[domid - 1]
        event = {
            "tick": self.tick,
            "host": self.name,
            "guest": guest.config.name,
            "pages": int(outcome.unsatisfied.size),
        }
        self.events.append(event)
        log.warning(
            "%s: %d write faults unsatisfied in guest %s at tick %d; paused",
            self.name,
            event["pages"],
            event["guest"],
            self.tick,
        )
        return ~np.isin(gfns, outcome.unsatisfied)
