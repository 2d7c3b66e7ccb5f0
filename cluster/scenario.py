"""Scenario files: which hosts, disk images and guests a run simulates.

A scenario is a TOML file read with :mod:`tomllib` into frozen dataclasses:

- :class:`Scenario` holds the run's seed and clock (``ticks`` of
  ``tick_seconds`` each; hosts run ``batch_ticks`` of them per coordinator
  round) and three tuples, in file order:
- :class:`HostSpec`, one per physical host, with its hypervisor memory;
- :class:`ImageSpec`, one per disk image, built from real files and
  directories on this machine (placeholders such as ``{stdlib}`` or
  ``{package:numpy}`` make a scenario portable between installations);
- :class:`GuestSpec`, one per domain, with its image, memory, kind and the
  :class:`WorkloadSpec` it runs every tick.

Entries of ``[[hosts]]`` and ``[[guests]]`` carry a ``count`` and are
expanded here, so that later stages see one spec per host or guest.
:func:`dump_scenario` writes the resolved form back as TOML.

Every problem in a file raises :class:`ScenarioError` with a single line
``"<file>: <key>: <what is wrong>"``. This module checks what can be
checked without reading the images: that their paths exist. How much the
files under them add up to, against ``max_size``, is left to the code that
reads the images.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.fields import PAGE_SIZE as PAGE_SIZE
from cluster.fields import Context, describe, read_toml, resolve_path
from cluster.fields import ScenarioError as ScenarioError
from cluster.fields import format_size as format_size
from cluster.fields import parse_size as parse_size
from cluster.scenario_dump import dump_scenario as dump_scenario
from cluster.strategies import parse_strategy
from dedup.strategy import Strategy

DEFAULT_SCENARIO_PATH = Path(__file__).parent / "scenarios" / "default.toml"
"""The scenario :func:`load_scenario` reads when given no path."""

_BUILT_IN_SOURCE = "built-in default"
_KINDS = ("pv", "hvm")
_BONUS = ("none", "proportional")
# The engine keeps about 54 bytes of state per simulated frame: a 256 GiB
# host costs 3.4 GB of real memory in its actor.
MAX_HOST_BYTES = 256 * 2**30
_IMAGE_NAME = re.compile(r"[a-z0-9_-]+")
_ENTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class WorkloadSpec:
    """What one guest does every tick, in pages."""

    read_pages_per_tick: int = 64
    """Image blocks read into the page cache."""
    disk_write_pages_per_tick: int = 8
    """Cached image blocks overwritten, which ends their sharing."""
    anon_write_pages_per_tick: int = 128
    """Anonymous (heap) pages written."""
    free_pages_per_tick: int = 32
    """Pages the guest frees; they are scrubbed to logically zero."""
    burst_tick: int = 0
    """At this tick (0: never) the guest writes every page it has once:
    the worst case, every shared page needs a frame back at once."""
    transient_pages: int = 0
    """Anonymous pages holding data every guest holds too (a data set
    loaded by all), identical across guests for ``transient_ticks``
    ticks and then replaced by the next version: short-lived sharing.
    Paravirtual guests report them with guest hints."""
    transient_ticks: int = 10
    """How long each version of the transient data lives, in ticks."""


@dataclass(frozen=True)
class HostSpec:
    """One physical host of the cluster."""

    name: str
    memory_bytes: int
    strategy: Strategy = Strategy()
    """How the host's CoW daemon finds duplicates (``[hosts.detect]``)."""

    @property
    def memory_pages(self) -> int:
        """Host memory in pages (MFNs)."""
        return self.memory_bytes // PAGE_SIZE


@dataclass(frozen=True)
class ImageSpec:
    """A copy-on-write disk image made of real files.

    ``paths`` are absolute and normalized, placeholders expanded; each
    exists. ``exclude`` holds glob patterns for files and directories under
    them that the image leaves out.
    """

    name: str
    paths: tuple[str, ...]
    exclude: tuple[str, ...]
    max_bytes: int


@dataclass(frozen=True)
class GuestSpec:
    """One guest domain and how it boots and behaves."""

    name: str
    image: str
    memory_bytes: int
    kind: str
    boot_read_fraction: float
    map_libraries: bool
    workload: WorkloadSpec
    bonus: str = "none"
    """Bonus page policy: "none", or "proportional" to the pages the
    guest shares."""
    bonus_fraction: float = 0.5
    """With "proportional": bonus pages per guest page it shares."""
    stub: bool = False
    """A stub domain: booted, then paused and write-protected, to be
    cloned by guests that name it in ``clone_of``."""
    clone_of: str = ""
    """The stub this guest is forked from ("" for none): it starts with
    all its memory shared with the stub, on the stub's host."""
    warmup_ticks: int = 0
    """Ticks of its workload the guest runs at boot, before the run's
    first tick: a guest that has been running a while. A stub warms up
    before it is paused, so that its clones inherit a warm page cache
    and heap."""

    @property
    def memory_pages(self) -> int:
        """Guest memory in pages (GFNs)."""
        return self.memory_bytes // PAGE_SIZE


@dataclass(frozen=True)
class FailureSpec:
    """A host that fails: its actor is killed after ``at_tick`` ticks."""

    host: str
    at_tick: int


@dataclass(frozen=True)
class MigrationSpec:
    """A guest moved to host ``to`` after ``at_tick`` ticks."""

    guest: str
    to: str
    at_tick: int


@dataclass(frozen=True)
class Scenario:
    """A whole run, with hosts and guests expanded one spec per entity.

    ``source`` records where the scenario was read from and takes no part
    in comparisons: a scenario dumped and loaded back equals the original.
    """

    name: str
    source: str = dataclasses.field(compare=False)
    seed: int
    ticks: int
    tick_seconds: float
    batch_ticks: int
    hosts: tuple[HostSpec, ...]
    images: tuple[ImageSpec, ...]
    guests: tuple[GuestSpec, ...]
    repayment_invariant: bool = True
    """Guests keep a repayment FIFO at least as long as their bonus pages.
    False breaks the promise on purpose, to show what it prevents."""
    failures: tuple[FailureSpec, ...] = ()
    """Hosts that fail during the run, in tick order."""
    migrations: tuple[MigrationSpec, ...] = ()
    """Scripted migrations, in tick order."""
    placement_policy: str = "spread"
    """How the coordinator places guests and restarts them after a
    failure: "spread", "first-fit" or "sharing-aware"."""
    migration_policy: str = "none"
    """Migrations the coordinator decides: "none", "consolidate" (empty
    the least loaded host into the others) or "rebalance" (move a guest
    off a host short of free memory)."""

    def with_seed(self, seed: int) -> Scenario:
        """Return a copy of this scenario that runs with another seed."""
        Context(self.source, "").as_int(seed, "seed", 0)
        return dataclasses.replace(self, seed=seed)

    def image(self, name: str) -> ImageSpec:
        """Return the image called ``name``; raise KeyError if none is."""
        for image in self.images:
            if image.name == name:
                return image
        raise KeyError(name)


def load_scenario(path: str | os.PathLike[str] | None = None) -> Scenario:
    """Read, check and expand a scenario file.

    With no ``path``, read the built-in default scenario. Raise
    ScenarioError, with a one-line message, on any problem.
    """
    if path is None:
        file, source = str(DEFAULT_SCENARIO_PATH), _BUILT_IN_SOURCE
    else:
        file = source = os.fsdecode(path)
    context = Context(file, os.path.dirname(os.path.abspath(file)))
    return _build(context, read_toml(context), source)


_TOP_KEYS = tuple(
    "name seed ticks tick_seconds batch_ticks hosts images guests "
    "repayment_invariant failures migrations migration_policy "
    "placement_policy".split()
)
_TOP_REQUIRED = _TOP_KEYS[1:8]
_MIGRATION_POLICIES = ("none", "consolidate", "rebalance")
_PLACEMENT_POLICIES = ("spread", "first-fit", "sharing-aware")
_HOST_KEYS = ("name", "count", "memory", "detect")
_IMAGE_KEYS = ("paths", "exclude", "max_size")
_GUEST_KEYS = tuple(
    "name count image memory kind boot_read_fraction map_libraries "
    "workload bonus bonus_fraction stub clone_of warmup_ticks".split()
)
_GUEST_REQUIRED = ("name", "image", "memory")
_WORKLOAD_KEYS = tuple(f.name for f in dataclasses.fields(WorkloadSpec))


def _build(context: Context, raw: dict[str, Any], source: str) -> Scenario:
    top = context.as_table(raw, "", _TOP_KEYS, _TOP_REQUIRED)
    settings = _parse_settings(context, top)
    hosts = _expand_section(context, top["hosts"], "hosts", _parse_host)
    images = _parse_images(context, top["images"])
    parse_guest = functools.partial(
        _parse_guest,
        images={image.name for image in images},
        room=max(host.memory_bytes for host in hosts),
        stubs={},
    )
    guests = _expand_section(context, top["guests"], "guests", parse_guest)
    _check_total_memory(context, hosts, guests)
    _check_bursts(context, top["guests"], settings["ticks"])
    sections = {"hosts": hosts, "images": images, "guests": guests}
    sections.update(_parse_events(context, top, settings, hosts, guests))
    return Scenario(source=source, **settings, **sections)


def _parse_events(
    context: Context,
    top: dict[str, Any],
    settings: dict[str, Any],
    hosts: Sequence[HostSpec],
    guests: Sequence[GuestSpec],
) -> dict[str, Any]:
    """Failures and migrations: names that exist, ticks within the run."""
    host_names = {h.name for h in hosts}
    guest_names = {g.name for g in guests}
    ticks = settings["ticks"]

    def tick(table: dict[str, Any], key: str) -> int:
        at = context.as_int(table["at_tick"], f"{key}.at_tick", 1)
        if at >= ticks:
            context.fail(f"{key}.at_tick", f"must be < ticks ({ticks})")
        return at

    failures = []
    for index, entry in enumerate(_event_list(context, top, "failures")):
        key = f"failures[{index}]"
        table = context.as_table(entry, key, ("host", "at_tick"), _AT_HOST)
        host = _choice(context, table["host"], f"{key}.host", host_names)
        failures.append(FailureSpec(host, tick(table, key)))
    if len({f.host for f in failures}) < len(failures):
        context.fail("failures", "a host can fail only once")
    migrations = []
    for index, entry in enumerate(_event_list(context, top, "migrations")):
        key = f"migrations[{index}]"
        keys = ("guest", "to", "at_tick")
        table = context.as_table(entry, key, keys, keys)
        guest = _choice(context, table["guest"], f"{key}.guest", guest_names)
        to = _choice(context, table["to"], f"{key}.to", host_names)
        migrations.append(MigrationSpec(guest, to, tick(table, key)))
    policy = _choice(
        context,
        top.get("migration_policy", "none"),
        "migration_policy",
        _MIGRATION_POLICIES,
    )
    placement = _choice(
        context,
        top.get("placement_policy", "spread"),
        "placement_policy",
        _PLACEMENT_POLICIES,
    )
    return {
        "placement_policy": placement,
        "failures": tuple(sorted(failures, key=lambda f: f.at_tick)),
        "migrations": tuple(sorted(migrations, key=lambda m: m.at_tick)),
        "migration_policy": policy,
    }


_AT_HOST = ("host", "at_tick")


def _event_list(
    context: Context, top: dict[str, Any], section: str
) -> list[Any]:
    value = top.get(section, [])
    if not isinstance(value, list):
        got = describe(value)
        context.fail(section, f"expected an array of tables, got {got}")
    return value


def _parse_settings(context: Context, top: dict[str, Any]) -> dict[str, Any]:
    seconds = context.as_float(top["tick_seconds"], "tick_seconds")
    if seconds <= 0:
        context.fail("tick_seconds", f"must be > 0, got {seconds}")
    # The name becomes part of the results directory's name.
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(context.file).stem)
    name = top.get("name", stem.lstrip("_.-") or "scenario")
    return {
        "name": _entry_name(context, name, "name"),
        "seed": context.as_int(top["seed"], "seed", 0),
        "ticks": context.as_int(top["ticks"], "ticks", 1),
        "tick_seconds": seconds,
        "batch_ticks": context.as_int(top["batch_ticks"], "batch_ticks", 1),
        "repayment_invariant": context.as_bool(
            top.get("repayment_invariant", True), "repayment_invariant"
        ),
    }


# A section parser checks one [[hosts]] or [[guests]] entry and returns its
# count and a spec carrying the entry's own name, renamed on expansion.
_EntryParser = Callable[[Context, Any, str], tuple[int, Any]]


def _expand_section(
    context: Context, value: Any, section: str, parse: _EntryParser
) -> tuple[Any, ...]:
    if not isinstance(value, list):
        got = describe(value)
        context.fail(section, f"expected an array of tables, got {got}")
    if not value:
        context.fail(section, f"at least one [[{section}]] entry is needed")
    specs: list[Any] = []
    made_by: dict[str, str] = {}
    for index, entry in enumerate(value):
        key = f"{section}[{index}]"
        count, spec = parse(context, entry, key)
        names = [f"{spec.name}-{index}" for index in range(count)]
        for name in names if count > 1 else [spec.name]:
            if name in made_by:
                what = f"duplicate name {name!r}, also in {made_by[name]}"
                context.fail(f"{key}.name", what)
            made_by[name] = key
            specs.append(dataclasses.replace(spec, name=name))
    return tuple(specs)


def _entry_name(context: Context, value: Any, key: str) -> str:
    name = context.as_str(value, key)
    if not _ENTRY_NAME.fullmatch(name):
        what = f"bad name {name!r}: use {_ENTRY_NAME.pattern}"
        context.fail(key, what)
    return name


def _parse_host(
    context: Context, entry: Any, key: str
) -> tuple[int, HostSpec]:
    table = context.as_table(entry, key, _HOST_KEYS, ("memory",))
    host = HostSpec(
        name=_entry_name(context, table.get("name", "host"), f"{key}.name"),
        memory_bytes=context.as_size(table["memory"], f"{key}.memory"),
        strategy=parse_strategy(
            context, table.get("detect", {}), f"{key}.detect"
        ),
    )
    if host.memory_bytes > MAX_HOST_BYTES:
        size, most = (
            format_size(host.memory_bytes),
            format_size(MAX_HOST_BYTES),
        )
        context.fail(
            f"{key}.memory", f"{size} is more than a host may have ({most})"
        )
    return context.as_int(table.get("count", 1), f"{key}.count", 1), host


def _parse_images(context: Context, value: Any) -> tuple[ImageSpec, ...]:
    if not isinstance(value, dict):
        context.fail("images", f"expected a table, got {describe(value)}")
    if not value:
        context.fail("images", "at least one [images.NAME] table is needed")
    return tuple(
        _parse_image(context, name, entry) for name, entry in value.items()
    )


def _parse_image(context: Context, name: str, entry: Any) -> ImageSpec:
    key = f"images.{name}"
    if not _IMAGE_NAME.fullmatch(name):
        context.fail(key, f"bad image name {name!r}: use [a-z0-9_-]+")
    table = context.as_table(entry, key, _IMAGE_KEYS, ("paths",))
    paths = context.as_str_list(table["paths"], f"{key}.paths")
    if not paths:
        context.fail(f"{key}.paths", "at least one path is needed")
    exclude = table.get("exclude", [])
    max_size = table.get("max_size", "1GiB")
    return ImageSpec(
        name=name,
        paths=tuple(
            resolve_path(context, path, f"{key}.paths[{index}]")
            for index, path in enumerate(paths)
        ),
        exclude=tuple(context.as_str_list(exclude, f"{key}.exclude")),
        max_bytes=context.as_size(max_size, f"{key}.max_size"),
    )


def _parse_guest(
    context: Context,
    entry: Any,
    key: str,
    images: set[str],
    room: int,
    stubs: dict[str, GuestSpec],
) -> tuple[int, GuestSpec]:
    """Check one [[guests]] entry against the images, the largest host
    and the stubs defined before it (``stubs`` grows as entries are
    read)."""
    table = context.as_table(entry, key, _GUEST_KEYS, _GUEST_REQUIRED)
    guest = GuestSpec(
        name=_entry_name(context, table["name"], f"{key}.name"),
        image=_choice(context, table["image"], f"{key}.image", images),
        memory_bytes=context.as_size(table["memory"], f"{key}.memory"),
        kind=_choice(context, table.get("kind", "pv"), f"{key}.kind", _KINDS),
        boot_read_fraction=_fraction(context, table, key),
        map_libraries=context.as_bool(
            table.get("map_libraries", True), f"{key}.map_libraries"
        ),
        workload=_parse_workload(
            context, table.get("workload", {}), f"{key}.workload"
        ),
        bonus=_choice(
            context, table.get("bonus", "none"), f"{key}.bonus", _BONUS
        ),
        bonus_fraction=_unit_float(
            context, table.get("bonus_fraction", 0.5), f"{key}.bonus_fraction"
        ),
        stub=context.as_bool(table.get("stub", False), f"{key}.stub"),
        warmup_ticks=context.as_int(
            table.get("warmup_ticks", 0), f"{key}.warmup_ticks", 0
        ),
    )
    pages = guest.memory_bytes // PAGE_SIZE
    if guest.workload.transient_pages > pages:
        context.fail(
            f"{key}.workload.transient_pages",
            f"{guest.workload.transient_pages} is more than the guest's "
            f"{pages} pages",
        )
    if guest.memory_bytes > room:
        size, largest = format_size(guest.memory_bytes), format_size(room)
        what = f"impossible size: {size} is more than the largest host"
        context.fail(f"{key}.memory", f"{what} ({largest})")
    count = context.as_int(table.get("count", 1), f"{key}.count", 1)
    if "clone_of" in table:
        guest = _clone(context, table, key, guest, stubs)
    if guest.stub:
        if count > 1:
            context.fail(f"{key}.count", "a stub guest has count = 1")
        stubs[guest.name] = guest
    return count, guest


def _clone(
    context: Context,
    table: dict[str, Any],
    key: str,
    guest: GuestSpec,
    stubs: dict[str, GuestSpec],
) -> GuestSpec:
    """A clone: names an earlier stub, has its image, memory and kind."""
    name = context.as_str(table["clone_of"], f"{key}.clone_of")
    if name not in stubs:
        what = f"{name!r} is not a stub guest defined earlier"
        context.fail(f"{key}.clone_of", what)
    if guest.stub:
        context.fail(f"{key}.stub", "a clone cannot be a stub")
    stub = stubs[name]
    for field, label in (
        ("image", "image"),
        ("memory_bytes", "memory"),
        ("kind", "kind"),
    ):
        if getattr(guest, field) != getattr(stub, field):
            what = f"a clone has the {label} of its stub {name!r}"
            context.fail(f"{key}.{label}", what)
    return dataclasses.replace(guest, clone_of=name)


def _choice(
    context: Context, value: Any, key: str, choices: Collection[str]
) -> str:
    choice = context.as_str(value, key)
    if choice not in choices:
        listed = ", ".join(repr(name) for name in sorted(choices))
        context.fail(key, f"{choice!r} is not one of {listed}")
    return choice


def _fraction(context: Context, table: dict[str, Any], key: str) -> float:
    key = f"{key}.boot_read_fraction"
    return _unit_float(context, table.get("boot_read_fraction", 0.5), key)


def _unit_float(context: Context, value: Any, key: str) -> float:
    fraction = context.as_float(value, key)
    if not 0.0 <= fraction <= 1.0:
        context.fail(key, f"must be between 0 and 1, got {fraction}")
    return fraction


def _parse_workload(context: Context, value: Any, key: str) -> WorkloadSpec:
    table = context.as_table(value, key, _WORKLOAD_KEYS)
    pages = {
        name: context.as_int(
            count, f"{key}.{name}", 1 if name == "transient_ticks" else 0
        )
        for name, count in table.items()
    }
    return WorkloadSpec(**pages)


def _check_total_memory(
    context: Context, hosts: Sequence[HostSpec], guests: Sequence[GuestSpec]
) -> None:
    host_bytes = sum(host.memory_bytes for host in hosts)
    guest_bytes = sum(guest.memory_bytes for guest in guests)
    if guest_bytes > host_bytes:
        guest, host = format_size(guest_bytes), format_size(host_bytes)
        what = f"total guest memory {guest} is more than total host memory"
        context.fail("guests", f"{what} {host}")


def _check_bursts(context: Context, raw: list, ticks: int) -> None:
    """A burst after the last tick would silently never happen."""
    for index, entry in enumerate(raw):
        burst = entry.get("workload", {}).get("burst_tick", 0)
        if burst > ticks:
            key = f"guests[{index}].workload.burst_tick"
            context.fail(key, f"{burst} is after the last tick ({ticks})")
