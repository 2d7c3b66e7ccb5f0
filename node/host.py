"""One physical host: its memory, its guests and the CoW daemon in dom0.

A host steps in simulated ticks. In each tick every running guest does
its workload (reads, writes, frees; see ``node.guest``), then the daemon
verifies and shares what the guests hinted, and runs the content
scanners the host's ``Strategy`` turns on (``dedup.strategy``); a host
without hints drops what its guests hint. After every tick the host
takes a *sample*: a flat dict of gauges and running totals that becomes
one row of the time series and feeds the metrics.

Fresh content (anonymous writes, blocks written through a copy-on-write
disk) gets content ids from a counter of the host's own, numbered apart
from every other host, so that runs are reproducible wherever each host
runs.

Bonus pages: after sharing, each guest that opts in is lent frames in
proportion to the pages it shares and fills them with volatile page cache
it promises in its repayment FIFO (``dedup.repayment``); dom0 does the
same for HVM guests. When a CoW fault finds the free pool empty, the host
reclaims the oldest volatile pages. A write that still finds no frame
pauses its guest: the event is recorded in ``events`` and logged, and the
guest does nothing more in this run.

This module does not import Ray; ``node.actor`` wraps it.
"""

from __future__ import annotations

import logging

import numpy as np

from dedup.content import PAGE_SIZE, SYNTHETIC_BASE
from dedup.hints import OUTCOMES, SOURCES, HintBatch
from dedup.ksm import COUNTERS as KSM_COUNTERS
from dedup.memory import HostMemory
from dedup.repayment import Repayment
from dedup.strategy import Detectors, Strategy, cpu_seconds, hint_work
from node.daemon import CowDaemon
from node.dom0 import DOM0, ServiceDomain
from node.fork import FORK, fork, make_stub
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
        repayment_invariant: bool = True,
        strategy: Strategy | None = None,
    ) -> None:
        self.name = name
        self.index = index
        self.seed = seed
        self.tick_seconds = tick_seconds
        self.memory = HostMemory(memory_pages)
        self.daemon = CowDaemon(self.memory)
        self.repayment = Repayment(self.memory)
        self.repayment_invariant = repayment_invariant
        self.dom0: ServiceDomain | None = None
        self.guests: list[Guest] = []
        self.images: dict[str, Image] = {}
        self.image_uids: dict[str, int] = {}
        self.tick = 0
        self._last_domid = DOM0
        self.events: list[dict] = []
        self._next_content = SYNTHETIC_BASE + (index << 40)
        self.strategy = strategy or Strategy()
        # Saved and potential memory integrated over the ticks run: their
        # ratio is the share of the sharing caught while it existed.
        self._saved_byte_seconds = 0.0
        self._potential_byte_seconds = 0.0
        self.detectors = Detectors(
            self.memory, self.strategy, seed, tick_seconds, index
        )

    def boot(
        self,
        configs: list[GuestConfig],
        images: dict[str, Image],
        image_uids: dict[str, int],
    ) -> dict:
        """Build each guest's domain, boot it, share what it hinted."""
        self.images.update(images)
        self.image_uids.update(image_uids)
        hvm_bonus = sum(
            c.pages for c in configs if c.kind == "hvm" and c.bonus != "none"
        )
        if hvm_bonus:
            self.dom0 = ServiceDomain(hvm_bonus)
            self.memory.create_domain(DOM0, hvm_bonus, populated=0)
        for config in configs:
            domid = self.new_domid()
            if config.clone_of:
                stub = self.guest(config.clone_of)
                self.guests.append(fork(self, stub, config, domid))
                continue
            self.memory.create_domain(
                domid, config.pages + config.bonus_capacity, config.pages
            )
            guest = Guest(
                domid,
                config,
                images[config.image],
                image_uids[config.image],
                self.seed,
            )
            self.guests.append(guest)
            guest.boot(self._write, self._fresh)
            for _ in range(config.warmup_ticks):
                guest.tick(self._write, self._fresh)
                self._share()
            if config.stub:
                make_stub(self, guest)
        self._share()
        self._adjust_bonus()
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
            self._adjust_bonus()
            rows.append(self._integrate(self.sample()))
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
            "guests_paused": sum(
                g.paused and not g.config.stub for g in self.guests
            ),
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
        saved = m.saved_by_source(len(SOURCES) + 1)
        for source, pages in zip(SOURCES, saved.tolist()[:-1], strict=True):
            row[f"saved_{source}_bytes"] = pages * PAGE_SIZE
        row["saved_fork_bytes"] = int(saved[FORK]) * PAGE_SIZE
        for kind in FAULT_KINDS:
            row[f"faults_{kind}"] = getattr(c, f"faults_{kind}")
        row["bytes_copied"] = c.bytes_copied
        outcomes = self.daemon.table.outcomes
        for i, source in enumerate(SOURCES):
            for j, outcome in enumerate(OUTCOMES):
                row[f"hints_{source}_{outcome}"] = int(outcomes[i, j])
        row.update(self.daemon.costs())
        row.update(self.repayment.totals())
        row["fifo_shortfall_pages"] = sum(self.repayment.shortfall().values())
        row["refaults"] = sum(g.refaults for g in self._bonus_holders())
        row["copy_avoided_bytes"] = c.faults_nocopy * PAGE_SIZE
        row.update(self._scan_costs())
        return row

    def _integrate(self, row: dict) -> dict:
        """Add this tick's saved and potential memory to their totals."""
        self._saved_byte_seconds += row["saved_bytes"] * self.tick_seconds
        self._potential_byte_seconds += (
            row["potential_bytes"] * self.tick_seconds
        )
        row["saved_byte_seconds"] = self._saved_byte_seconds
        row["potential_byte_seconds"] = self._potential_byte_seconds
        return row

    def _scan_costs(self) -> dict:
        """What the scanners did, and the daemon's estimated CPU time."""
        work = self.detectors.work()
        total = hint_work(self.daemon.table)
        total.add(work)
        return {
            "pages_scanned": work.pages_scanned,
            "pages_hashed": work.pages_hashed,
            "scan_bytes_compared": work.bytes_compared,
            "scan_hypercalls": work.hypercalls,
            "daemon_cpu_seconds": round(cpu_seconds(total), 9),
            "saved_byte_seconds": self._saved_byte_seconds,
            "potential_byte_seconds": self._potential_byte_seconds,
            **self._ksm_counters(),
        }

    def _ksm_counters(self) -> dict:
        """The KSM scanner's counters (kernel meaning), zeros without one."""
        ksm = self.detectors.ksm
        counters = ksm.counters() if ksm is not None else {}
        return {f"ksm_{name}": counters.get(name, 0) for name in KSM_COUNTERS}

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
        # A host without hints drops them: its guests emit them anyway.
        if self.strategy.hints:
            self.daemon.process(batch)
        self.detectors.tick()

    def _fresh(self, n: int) -> np.ndarray:
        first = self._next_content
        self._next_content += n
        return np.arange(first, first + n, dtype=np.int64)

    def _bonus_holders(self) -> list:
        return [*self.guests, *([self.dom0] if self.dom0 else [])]

    def new_domid(self) -> int:
        """A domain id never used on this host (dom0 is domain 0)."""
        self._last_domid += 1
        return self._last_domid

    def guest(self, name: str) -> Guest:
        """The guest called ``name``; KeyError if it is not here."""
        for guest in self.guests:
            if guest.config.name == name:
                return guest
        raise KeyError(name)

    def _holder(self, domid: int):
        if domid == DOM0:
            return self.dom0
        for guest in self.guests:
            if guest.domid == domid:
                return guest
        raise KeyError(domid)

    def _adjust_bonus(self) -> None:
        """Lend or take back bonus pages to match each policy's target.

        A PV guest's target is ``bonus_fraction`` times the pages it
        shares; dom0's is the sum of those of its HVM guests. New bonus
        pages come only from the free pool.
        """
        f = self.memory.frames
        targets: dict[int, int] = {}
        for g in self.guests:
            if g.config.bonus == "none":
                continue
            shared = g.shared_pages(self.memory.domain_p2m(g.domid), f.count)
            domid = g.domid if g.pv else DOM0
            want = int(g.config.bonus_fraction * shared)
            targets[domid] = targets.get(domid, 0) + want
        share = 1.0 if self.repayment_invariant else 0.5
        for domid, target in targets.items():
            holder = self._holder(domid)
            if holder is not self.dom0 and holder.paused:
                continue
            current = self.repayment.bonus.get(domid, 0)
            if target < current:
                back = self.repayment.give_back(domid, current - target)
                holder.lose(back, reclaimed=False)
                continue
            n = min(target - current, f.free_frames)
            got = self.repayment.lend(domid, holder.absent_bonus_gfns(n))
            volatile = holder.fill_bonus(got, self._write, self._fresh, share)
            self.repayment.push(domid, volatile)
        # The promise that makes lending safe, checked at every step.
        if self.repayment_invariant:
            short = self.repayment.shortfall()
            assert not short, f"{self.name}: repayment FIFO short: {short}"

    def _reclaim(self, n: int) -> int:
        """Serve a fault from the oldest volatile pages of any FIFO."""
        freed = self.repayment.reclaim(n)
        for holder in self._bonus_holders():
            lost = self.repayment.take_lost(holder.domid)
            if lost.size:
                holder.lose(lost, reclaimed=True)
        return freed

    def _write(
        self,
        domid: int,
        gfns: np.ndarray,
        contents: np.ndarray,
        zeroing: bool = False,
    ) -> np.ndarray:
        outcome = self.memory.write(
            domid, gfns, contents, reclaim=self._reclaim, zeroing=zeroing
        )
        if outcome.unsatisfied.size == 0:
            return np.ones(gfns.size, dtype=bool)
        guest = self._holder(domid)
        if guest is self.dom0:
            raise AssertionError("dom0 fills only frames it was lent")
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
