"""Placement studies in a few lines of Python.

A study builds a population of guests from real disk images, runs each
placement policy of :mod:`cluster.placement` on it and tabulates hosts
needed, memory saved, saved against potential and time to place::

    from cluster import study

    images = study.load_images("default")
    population = study.scenario_population(images, guests=128)
    hosts = study.uniform_hosts(16, "1GiB")
    rows = study.compare(population, hosts)
    print(study.format_table(rows))

What each guest holds is what it would hold right after booting in a
run with the same seed: the blocks its boot reads (drawn by the same
generator as ``node.guest``) and its mapped libraries, so the sharing a
placement is credited with is measured on the images' real page
contents. Later reads and writes are left out: a study looks at the
moment of placement.

Sharing is counted by content, as a perfect deduplicator would find it.
A run finds less: its hints name disk blocks by image, so the same file
in two different images is shared only when it is a library.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from cluster.placement import (
    DEFAULT_HEADROOM,
    DEFAULT_SUMMARY_BITS,
    POLICIES,
    BloomEstimator,
    GuestDemand,
    Placement,
    Population,
    evaluate,
    held_contents,
    make_estimator,
    place,
    place_by_sharing,
    potential_pages,
)
from cluster.scenario import (
    GuestSpec,
    HostSpec,
    Scenario,
    load_scenario,
    parse_size,
)
from dedup.arrays import unique
from dedup.content import ContentStore
from node.content import boot_blocks
from node.image import Image, load_image

__all__ = [
    "POLICIES",
    "StudyImages",
    "compare",
    "format_table",
    "generate_population",
    "load_images",
    "load_scenario",
    "plot",
    "scenario_population",
    "summary_sweep",
    "uniform_hosts",
]

SWEEP_BITS = (0, 1 << 10, 1 << 13, 1 << 15, 1 << 17, 1 << 19, None)
"""Summary sizes :func:`summary_sweep` tries: catalog only, Bloom
filters of 128 B to 64 KiB per host, exact content."""


@dataclass(frozen=True, eq=False)
class StudyImages:
    """A scenario's images, their content store and its guests."""

    scenario: Scenario
    images: dict[str, Image]
    store: ContentStore


def load_images(scenario: Scenario | str | os.PathLike | None) -> StudyImages:
    """Read a scenario's images (a path or a shipped scenario's name)."""
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(shipped_path(scenario))
    store = ContentStore()
    images = {
        spec.name: load_image(
            spec.name, spec.paths, store, spec.exclude, spec.max_bytes
        )
        for spec in scenario.images
    }
    return StudyImages(scenario, images, store)


def shipped_path(name: str | os.PathLike | None) -> str | None:
    """A scenario file, or the path of a scenario shipped with cowsim."""
    from cluster.scenario import DEFAULT_SCENARIO_PATH

    if name is None:
        return None
    text = os.fspath(name)
    if os.path.exists(text) or text.endswith(".toml"):
        return text
    shipped = DEFAULT_SCENARIO_PATH.parent / f"{text}.toml"
    return str(shipped) if shipped.exists() else text


def guest_demand(
    study: StudyImages, spec: GuestSpec, index: int, seed: int
) -> GuestDemand:
    """What ``spec``, booted as guest ``index``, holds from its image."""
    image = study.images[spec.image]
    libraries = image.libraries() if spec.map_libraries else ()
    # The same draw as Guest.boot: a run with this seed and guest index
    # boots with exactly these blocks.
    blocks = boot_blocks(
        image,
        spec.boot_read_fraction,
        spec.map_libraries,
        spec.memory_pages,
        seed,
        index,
    )
    contents = unique(image.block_cids[blocks])
    return GuestDemand(
        name=spec.name,
        image=spec.image,
        pages=spec.memory_pages,
        image_pages=int(blocks.size),
        contents=contents,
        fingerprints=study.store.fingerprint(contents),
        libraries=tuple(
            (lib.digest, lib.path, lib.n_blocks) for lib in libraries
        ),
    )


def _population(
    study: StudyImages, specs: Sequence[GuestSpec], seed: int
) -> Population:
    guests = tuple(
        guest_demand(study, spec, index, seed)
        for index, spec in enumerate(specs)
    )
    n_contents = 1 + max(
        (int(img.block_cids.max()) for img in study.images.values()),
        default=0,
    )
    blocks = {name: img.n_blocks for name, img in study.images.items()}
    return Population(guests, n_contents, blocks)


def scenario_population(
    study: StudyImages, guests: int | None = None, seed: int | None = None
) -> Population:
    """The scenario's guests, repeated in order up to ``guests``.

    Copies after the first round are named ``NAME.1``, ``NAME.2``, ...
    """
    specs = study.scenario.guests
    n = guests or len(specs)
    rounds = [(specs[i % len(specs)], i // len(specs)) for i in range(n)]
    named = [
        spec if k == 0 else replace(spec, name=f"{spec.name}.{k}")
        for spec, k in rounds
    ]
    return _population(
        study, named, study.scenario.seed if seed is None else seed
    )


def generate_population(
    study: StudyImages,
    guests: int,
    seed: int = 1,
    memory: Sequence[str] = ("64MiB", "96MiB", "128MiB"),
    boot_read: tuple[float, float] = (0.3, 0.9),
) -> Population:
    """Random guests: each picks an image, a memory size and how much
    of its image it reads at boot, from a generator seeded by ``seed``."""
    rng = np.random.default_rng([seed, 0x5EED])
    names = sorted(study.images)
    template = study.scenario.guests[0]
    specs = []
    for i in range(guests):
        size = memory[int(rng.integers(len(memory)))]
        specs.append(
            GuestSpec(
                name=f"g{i:04d}",
                image=names[int(rng.integers(len(names)))],
                memory_bytes=parse_size(size, "memory"),
                kind="pv",
                boot_read_fraction=float(rng.uniform(*boot_read)),
                map_libraries=True,
                workload=template.workload,
            )
        )
    return _population(study, specs, seed)


def uniform_hosts(
    count: int, memory: str | int, prefix: str = "host"
) -> tuple[HostSpec, ...]:
    """``count`` hosts of ``memory`` each, named PREFIX-0, PREFIX-1..."""
    nbytes = parse_size(memory, "host memory")
    return tuple(HostSpec(f"{prefix}-{i}", nbytes) for i in range(count))


def compare(
    population: Population,
    hosts: Sequence[HostSpec],
    policies: Iterable[str] = POLICIES,
    summary_bits: int | None = DEFAULT_SUMMARY_BITS,
    headroom: float = DEFAULT_HEADROOM,
    seed: int = 0,
) -> list[dict]:
    """One table row per policy (see :func:`cluster.placement.evaluate`)."""
    potential = potential_pages(population)
    rows = []
    for policy in policies:
        placement = place(
            policy, population, hosts, summary_bits, headroom, seed
        )
        row = evaluate(population, hosts, placement, potential)
        row["placement"] = placement.as_dict(population)
        rows.append(row)
    return rows


def summary_sweep(
    population: Population,
    hosts: Sequence[HostSpec],
    bits: Iterable[int | None] = SWEEP_BITS,
    headroom: float = DEFAULT_HEADROOM,
    seed: int = 0,
) -> list[dict]:
    """Sharing-aware placement with summaries of each size in ``bits``.

    Each row adds ``summary_bytes`` (one host's filter as msgpack, 0
    for the catalog alone, the fingerprints themselves for exact) and
    ``false_positive_rate``: of the contents a host does not hold, the
    share its filter reports present, averaged over used hosts.
    """
    potential = potential_pages(population)
    order = np.arange(len(population.guests))
    rows = []
    for n_bits in bits:
        estimator = make_estimator(population, hosts, n_bits, seed)
        placement = Placement(
            "sharing-aware", tuple(h.name for h in hosts), order, 0.0, n_bits
        )
        placement.assignment = place_by_sharing(
            population, hosts, order, estimator, headroom
        )
        row = evaluate(population, hosts, placement, potential)
        row.update(_summary_quality(population, hosts, placement, estimator))
        rows.append(row)
    return rows


def _summary_quality(
    population: Population,
    hosts: Sequence[HostSpec],
    placement: Placement,
    estimator,
) -> dict:
    held = held_contents(population, len(hosts), placement.assignment)
    if not isinstance(estimator, BloomEstimator):
        # Exact knowledge means shipping every fingerprint: 8 bytes each.
        size = 0
        if placement.summary_bits is None:
            size = 8 * int(held.sum(axis=1).max())
        return {"summary_bytes": size, "false_positive_rate": 0.0}
    fps = np.zeros(population.n_contents, dtype=np.uint64)
    for guest in population.guests:
        fps[guest.contents] = guest.fingerprints
    everything = held.any(axis=0)
    rates = []
    for h in np.unique(placement.assignment[placement.assignment >= 0]):
        absent = everything & ~held[h]
        if absent.any():
            summary = estimator.bank.summary(int(h))
            rates.append(float(summary.contains(fps[absent]).mean()))
    return {
        "summary_bytes": len(estimator.bank.summary(0).to_msgpack()),
        "false_positive_rate": round(float(np.mean(rates)), 5)
        if rates
        else 0.0,
    }


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:,.2f}"


def format_table(rows: Sequence[dict]) -> str:
    """The study as a plain-text table, one line per row."""
    head = (
        f"{'policy':<14}{'hosts':>6}{'placed':>8}{'guest GiB':>11}"
        f"{'used GiB':>10}{'saved GiB':>11}{'of potential':>14}"
        f"{'overfull':>10}{'place ms':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['policy']:<14}{r['hosts_needed']:>6}"
            f"{r['guests_placed']:>5}/{r['guests']:<3}"
            f"{_gib(r['guest_bytes']):>10}"
            f"{_gib(r['machine_bytes_used']):>10}"
            f"{_gib(r['saved_bytes']):>11}"
            f"{100 * r['saved_fraction']:>13.1f}%"
            f"{r['overfull_hosts']:>10}"
            f"{1000 * r['place_seconds']:>10.1f}"
        )
    return "\n".join(lines)


def format_sweep(rows: Sequence[dict]) -> str:
    """The summary sweep as a plain-text table."""
    head = (
        f"{'summary':<18}{'bytes/host':>11}{'false pos':>11}{'hosts':>7}"
        f"{'saved GiB':>11}{'of potential':>14}{'overfull':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{summary_label(r['summary_bits']):<18}"
            f"{r['summary_bytes']:>11,}"
            f"{100 * r['false_positive_rate']:>10.2f}%"
            f"{r['hosts_needed']:>7}{_gib(r['saved_bytes']):>11}"
            f"{100 * r['saved_fraction']:>13.1f}%"
            f"{r['overfull_hosts']:>10}"
        )
    return "\n".join(lines)


def summary_label(bits: int | None) -> str:
    """How a summary size reads in tables and plots."""
    if bits is None:
        return "exact"
    if bits == 0:
        return "catalog only"
    return f"bloom {bits // 8:,} B"


def plot(
    rows: Sequence[dict], path: str | os.PathLike, sweep: Sequence[dict] = ()
) -> None:
    """Bar charts of a study (and of a summary sweep) to an image file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = 3 if sweep else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6))
    names = [r["policy"] for r in rows]
    axes[0].bar(names, [r["hosts_needed"] for r in rows], color="#4c72b0")
    axes[0].set_title("hosts needed")
    saved = [r["saved_bytes"] / 2**30 for r in rows]
    axes[1].bar(names, saved, color="#55a868")
    if rows:
        axes[1].axhline(
            rows[0]["potential_bytes"] / 2**30, color="k", ls="--", lw=1
        )
    axes[1].set_title("memory saved, GiB (dashed: potential)")
    for ax in axes[:2]:
        ax.tick_params(axis="x", labelrotation=20)
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    if sweep:
        labels = [summary_label(r["summary_bits"]) for r in sweep]
        ax = axes[2]
        ax.plot(
            labels, [r["hosts_needed"] for r in sweep], "o-", label="hosts"
        )
        ax.plot(
            labels,
            [r["overfull_hosts"] for r in sweep],
            "s--",
            label="overfull hosts",
        )
        ax.set_title("sharing-aware by summary size")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(axis="x", labelrotation=35)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
