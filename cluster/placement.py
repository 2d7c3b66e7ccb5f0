"""Placement policies: which host each guest runs on.

Sharing happens only between guests of one host, so placement decides
what sharing can save and how many hosts a fleet needs. This module
places a :class:`Population` of guests on a list of hosts
(:class:`~cluster.scenario.HostSpec`) and evaluates the outcome exactly.

Data structures:

- a :class:`GuestDemand` is one guest as placement sees it: its memory
  in pages, how many of them hold image content (page cache and mapped
  libraries) and the distinct content ids and fingerprints of those
  pages, taken from the real blocks of its image;
- a host's footprint is the machine memory its guests would use with
  perfect sharing: its distinct image contents plus every page that
  holds no image content (anonymous memory, untouched memory), which
  placement reserves whole because guests will write it;
- estimators tell a policy, for every host at once, how many of a
  guest's distinct contents the host already holds: exactly (a boolean
  matrix host x content id), from a Bloom filter per host
  (:class:`~dedup.summary.SummaryBank`), or from the cluster catalog
  alone (which images and libraries are resident where).

Policies, all deterministic and none needing Ray:

- ``first-fit``: the first host, in host order, with room for the
  guest's whole memory;
- ``spread``: the host with the most unreserved memory that fits;
- ``sharing-aware``: the host where the guest adds least to the
  estimated footprint, within the host's memory less a headroom kept
  for copy-on-write faults; ties go to the host with most of the
  guest's image resident (from the catalog), then to the fuller host,
  except that a guest sharing nothing anywhere starts a group on the
  emptiest host;
- ``offline``: a packing baseline that sees every guest in advance:
  guests grouped by image, largest first, then placed like
  ``sharing-aware`` with exact knowledge of every host's content.

First-fit and spread know nothing of sharing and reserve each guest's
memory whole, as the coordinator of a run does; the two sharing policies
overcommit on the strength of their estimate. An estimate that counts
pages as shared when they are not (a Bloom filter's false positives)
can overfill a host: :func:`evaluate` counts such hosts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cluster.catalog import Catalog
from cluster.scenario import PAGE_SIZE, HostSpec
from dedup.summary import SummaryBank

POLICIES = ("first-fit", "spread", "sharing-aware", "offline")
"""The policies :func:`place` knows, in the order tables list them."""

DEFAULT_SUMMARY_BITS = 1 << 17
"""Bloom filter size per host for ``sharing-aware``: 16 KiB."""

DEFAULT_HEADROOM = 0.05
"""Share of a host's memory the sharing policies keep free for faults."""


@dataclass(frozen=True, eq=False)
class GuestDemand:
    """One guest as placement sees it."""

    name: str
    image: str
    pages: int
    """Guest memory in pages."""
    image_pages: int
    """Pages holding image content: page cache and mapped libraries."""
    contents: np.ndarray
    """Sorted distinct content ids of those pages."""
    fingerprints: np.ndarray
    """The 64-bit fingerprint of each of ``contents``."""
    libraries: tuple[tuple[int, str, int], ...] = ()
    """(digest, path, pages) of each library the guest maps."""

    @property
    def own_pages(self) -> int:
        """Pages that hold no image content: anonymous and untouched
        memory, which placement reserves whole."""
        return self.pages - self.image_pages

    @property
    def alone_pages(self) -> int:
        """Machine pages the guest needs on a host of its own."""
        return self.own_pages + len(self.contents)


@dataclass(frozen=True, eq=False)
class Population:
    """The guests of a study and what their content ids range over."""

    guests: tuple[GuestDemand, ...]
    n_contents: int
    """Every content id of a guest is below this."""
    image_blocks: dict[str, int] = field(default_factory=dict)
    """Blocks of each image, for catalog estimates."""

    @property
    def guest_pages(self) -> int:
        """Memory of every guest, in pages."""
        return sum(g.pages for g in self.guests)


@dataclass
class Placement:
    """What a policy decided: a host index per guest, -1 if none."""

    policy: str
    hosts: tuple[str, ...]
    assignment: np.ndarray
    place_seconds: float = 0.0
    summary_bits: int | None = None

    def as_dict(self, population: Population) -> dict[str, str]:
        """Guest name -> host name, for placed guests."""
        return {
            g.name: self.hosts[h]
            for g, h in zip(
                population.guests, self.assignment.tolist(), strict=True
            )
            if h >= 0
        }


# Estimators -----------------------------------------------------------


class ExactEstimator:
    """Exact shared counts from a host x content id matrix."""

    def __init__(self, n_hosts: int, population: Population) -> None:
        self.held = np.zeros((n_hosts, population.n_contents), dtype=bool)

    def shared(self, guest: GuestDemand) -> np.ndarray:
        """Per host, distinct contents of ``guest`` already there."""
        return self.held[:, guest.contents].sum(axis=1)

    def add(self, host: int, guest: GuestDemand) -> None:
        """Record that ``guest`` now runs on ``host``."""
        self.held[host, guest.contents] = True


class BloomEstimator:
    """Shared counts from one Bloom filter of fingerprints per host."""

    def __init__(self, n_hosts: int, n_bits: int, seed: int = 0) -> None:
        self.bank = SummaryBank(n_hosts, n_bits, seed=seed)
        self._last: tuple[GuestDemand | None, np.ndarray | None] = (
            None,
            None,
        )

    def _positions(self, guest: GuestDemand) -> np.ndarray:
        # A guest is tested, then added: hash its fingerprints once.
        if self._last[0] is not guest:
            self._last = (guest, self.bank.positions(guest.fingerprints))
        return self._last[1]

    def shared(self, guest: GuestDemand) -> np.ndarray:
        """Per host, contents of ``guest`` its filter reports present."""
        return self.bank.counts(guest.fingerprints, self._positions(guest))

    def add(self, host: int, guest: GuestDemand) -> None:
        """Add the guest's fingerprints to the host's filter."""
        self.bank.add(host, guest.fingerprints, self._positions(guest))


class CatalogEstimator:
    """Shared counts from the cluster catalog alone.

    A mapped library resident on a host is counted whole. For the rest
    of the image the catalog knows only how many pages of it the host
    holds, summed over its guests; those are taken as reads spread
    uniformly over the image, which cover a fraction ``1 - exp(-r/n)``
    of its ``n`` blocks after ``r`` reads. Content shared between two
    different images is invisible to the catalog.
    """

    def __init__(self, hosts: Sequence[str], population: Population) -> None:
        self.hosts = tuple(hosts)
        self.catalog = Catalog()
        self.image_blocks = population.image_blocks

    def shared(self, guest: GuestDemand) -> np.ndarray:
        """Per host, the catalog's guess of what ``guest`` would share."""
        lib_pages = sum(pages for _, _, pages in guest.libraries)
        other = max(len(guest.contents) - lib_pages, 0)
        n_blocks = max(self.image_blocks.get(guest.image, 1), 1)
        resident = self.catalog.hosts_with(guest.image)
        out = np.zeros(len(self.hosts), dtype=np.int64)
        for h, name in enumerate(self.hosts):
            libs = sum(
                pages
                for digest, _, pages in guest.libraries
                if name
                in self.catalog.libraries.get(digest, {}).get("hosts", {})
            )
            covered = 1.0 - math.exp(-resident.get(name, 0) / n_blocks)
            out[h] = libs + int(other * covered)
        return out

    def add(self, host: int, guest: GuestDemand) -> None:
        """Record the guest's image and libraries as resident."""
        self.catalog.add(self.hosts[host], guest.image, guest.image_pages)
        for digest, path, pages in guest.libraries:
            self.catalog.add_library(self.hosts[host], digest, path, pages)


# Policies -------------------------------------------------------------


def _reserving(choose: Callable[[np.ndarray, int], int]):
    """A sharing-oblivious policy: reserve each guest's memory whole."""

    def policy(population: Population, hosts: Sequence[HostSpec]):
        free = np.array([h.memory_pages for h in hosts], dtype=np.int64)
        out = np.full(len(population.guests), -1, dtype=np.int64)
        for i, guest in enumerate(population.guests):
            fits = np.flatnonzero(free >= guest.pages)
            if fits.size:
                h = choose(free, fits)
                free[h] -= guest.pages
                out[i] = h
        return out

    return policy


first_fit = _reserving(lambda free, fits: int(fits[0]))
first_fit.__doc__ = "First host in host order with room for the guest."

# argmax returns the first of equal maxima: ties go to host order.
spread = _reserving(lambda free, fits: int(fits[np.argmax(free[fits])]))
spread.__doc__ = "Host with most unreserved memory that fits the guest."


def place_by_sharing(
    population: Population,
    hosts: Sequence[HostSpec],
    order: np.ndarray,
    estimator,
    headroom: float,
) -> np.ndarray:
    """Place guests in ``order`` where each adds least to a footprint.

    Ties in added pages go to the host holding most of the guest's
    image (the catalog's view), then to the host with least room left,
    then to host order; but a guest that would share nothing anywhere
    goes to the host with most room.
    """
    names = [h.name for h in hosts]
    capacity = np.array(
        [int(h.memory_pages * (1.0 - headroom)) for h in hosts],
        dtype=np.int64,
    )
    used = np.zeros(len(hosts), dtype=np.int64)
    catalog = Catalog()
    out = np.full(len(population.guests), -1, dtype=np.int64)
    for i in order.tolist():
        guest = population.guests[i]
        added = guest.alone_pages - np.minimum(
            estimator.shared(guest), len(guest.contents)
        )
        fits = np.flatnonzero(used + added <= capacity)
        if not fits.size:
            continue
        resident = catalog.hosts_with(guest.image)
        affinity = np.array([resident.get(names[h], 0) for h in fits])
        room = capacity[fits] - used[fits] - added[fits]
        if added[fits].min() == guest.alone_pages:
            # Nothing to share anywhere: start a group on the emptiest
            # host, leaving room next to it for guests like it.
            room = -room
        best = np.lexsort((fits, room, -affinity, added[fits]))[0]
        h = int(fits[best])
        used[h] += added[h]
        out[i] = h
        estimator.add(h, guest)
        catalog.add(names[h], guest.image, guest.image_pages)
    return out


def sharing_aware(
    population: Population,
    hosts: Sequence[HostSpec],
    summary_bits: int | None = DEFAULT_SUMMARY_BITS,
    headroom: float = DEFAULT_HEADROOM,
    seed: int = 0,
) -> np.ndarray:
    """Online sharing-aware placement, guests in arrival order.

    ``summary_bits``: Bloom filter bits per host; 0 uses the catalog
    alone; None uses exact knowledge of every host's content.
    """
    estimator = make_estimator(population, hosts, summary_bits, seed)
    order = np.arange(len(population.guests))
    return place_by_sharing(population, hosts, order, estimator, headroom)


def offline(
    population: Population,
    hosts: Sequence[HostSpec],
    headroom: float = DEFAULT_HEADROOM,
) -> np.ndarray:
    """Offline packing: guests grouped by image, largest groups and
    guests first, placed with exact knowledge of every host's content."""
    guests = population.guests
    image_pages: dict[str, int] = {}
    for g in guests:
        image_pages[g.image] = image_pages.get(g.image, 0) + g.pages
    ranks = {
        name: rank
        for rank, name in enumerate(
            sorted(image_pages, key=lambda n: (-image_pages[n], n))
        )
    }
    order = np.lexsort(
        (
            np.arange(len(guests)),
            [-g.pages for g in guests],
            [ranks[g.image] for g in guests],
        )
    )
    estimator = ExactEstimator(len(hosts), population)
    return place_by_sharing(population, hosts, order, estimator, headroom)


def make_estimator(
    population: Population,
    hosts: Sequence[HostSpec],
    summary_bits: int | None,
    seed: int = 0,
):
    """The estimator a summary size stands for (see sharing_aware)."""
    if summary_bits is None:
        return ExactEstimator(len(hosts), population)
    if summary_bits == 0:
        return CatalogEstimator([h.name for h in hosts], population)
    return BloomEstimator(len(hosts), summary_bits, seed)


def place(
    policy: str,
    population: Population,
    hosts: Sequence[HostSpec],
    summary_bits: int | None = DEFAULT_SUMMARY_BITS,
    headroom: float = DEFAULT_HEADROOM,
    seed: int = 0,
) -> Placement:
    """Run one policy, timing it."""
    started = time.perf_counter()
    if policy == "first-fit":
        assignment = first_fit(population, hosts)
    elif policy == "spread":
        assignment = spread(population, hosts)
    elif policy == "sharing-aware":
        assignment = sharing_aware(
            population, hosts, summary_bits, headroom, seed
        )
    elif policy == "offline":
        assignment = offline(population, hosts, headroom)
    else:
        raise ValueError(f"unknown placement policy {policy!r}")
    seconds = time.perf_counter() - started
    bits = summary_bits if policy == "sharing-aware" else None
    names = tuple(h.name for h in hosts)
    return Placement(policy, names, assignment, seconds, bits)


# Placement in a run ---------------------------------------------------

RUN_POLICIES = ("spread", "first-fit", "sharing-aware")
"""Policies a run's coordinator places (and restarts) guests with."""


def choose_host(
    policy: str,
    need_bytes: int,
    free_bytes: dict[str, int],
    image_guests: dict[str, int],
) -> str | None:
    """The host a run puts a guest on, or None if none has room.

    A run's hosts never overcommit: a host boots a guest's whole memory
    before any of it is shared. So every policy here reserves the
    guest's memory whole and only chooses among hosts with room
    (``free_bytes``, in host order): ``first-fit`` the first,
    ``spread`` the one with most room, ``sharing-aware`` the one
    running most guests of the same image (``image_guests``), then the
    one with most room. Ties go to host order.
    """
    fits = [h for h, room in free_bytes.items() if room >= need_bytes]
    if not fits:
        return None
    if policy == "first-fit":
        return fits[0]
    if policy == "sharing-aware":
        return max(fits, key=lambda h: (image_guests.get(h, 0), free_bytes[h]))
    return max(fits, key=lambda h: free_bytes[h])


# Evaluation -----------------------------------------------------------


def held_contents(
    population: Population, n_hosts: int, assignment: np.ndarray
) -> np.ndarray:
    """Host x content id matrix: which contents each host holds."""
    held = np.zeros((n_hosts, population.n_contents), dtype=bool)
    for guest, h in zip(population.guests, assignment.tolist(), strict=True):
        if h >= 0:
            held[h, guest.contents] = True
    return held


def footprints(
    population: Population, n_hosts: int, assignment: np.ndarray
) -> np.ndarray:
    """Exact machine pages each host would use with perfect sharing."""
    own = np.zeros(n_hosts, dtype=np.int64)
    for guest, h in zip(population.guests, assignment.tolist(), strict=True):
        if h >= 0:
            own[h] += guest.own_pages
    held = held_contents(population, n_hosts, assignment)
    return held.sum(axis=1) + own


def potential_pages(population: Population) -> int:
    """Pages perfect sharing would save with every guest on one host."""
    if not population.guests:
        return 0
    held = np.zeros(population.n_contents, dtype=bool)
    total = 0
    for guest in population.guests:
        held[guest.contents] = True
        total += guest.image_pages
    return total - int(np.count_nonzero(held))


def evaluate(
    population: Population,
    hosts: Sequence[HostSpec],
    placement: Placement,
    potential: int | None = None,
) -> dict:
    """One row of a study table: hosts needed, memory saved, ..."""
    assignment = placement.assignment
    placed = assignment >= 0
    used = footprints(population, len(hosts), assignment)
    capacity = np.array([h.memory_pages for h in hosts], dtype=np.int64)
    guest_pages = sum(
        g.pages for g, ok in zip(population.guests, placed, strict=True) if ok
    )
    saved = guest_pages - int(used.sum())
    if potential is None:
        potential = potential_pages(population)
    return {
        "policy": placement.policy,
        "summary_bits": placement.summary_bits,
        "guests": len(population.guests),
        "guests_placed": int(np.count_nonzero(placed)),
        "hosts_needed": int(np.unique(assignment[placed]).size),
        "guest_bytes": guest_pages * PAGE_SIZE,
        "machine_bytes_used": int(used.sum()) * PAGE_SIZE,
        "saved_bytes": saved * PAGE_SIZE,
        "potential_bytes": potential * PAGE_SIZE,
        "saved_fraction": round(saved / potential, 4) if potential else 1.0,
        "overfull_hosts": int(np.count_nonzero(used > capacity)),
        "place_seconds": placement.place_seconds,
    }
