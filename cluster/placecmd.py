"""``cowsim place``: a placement study from the command line.

Reads a scenario's images, builds a population (the scenario's guests
repeated up to ``--guests``, or ``--generate``-d ones), runs the
placement policies on ``--hosts`` hosts (or the scenario's own), prints
the table and writes a directory with ``placement.json`` (rows, the
summary sweep, every policy's guest -> host map), ``placement.txt``
(the tables) and ``placement.png`` (the plot). Runs no Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from cluster import argtypes
from dedup.errors import CowsimError


def add_parser(sub) -> None:
    """Add the ``place`` subcommand to the ``cowsim`` parser."""
    from cluster.placement import POLICIES

    p = sub.add_parser("place", help="compare placement policies")
    p.add_argument(
        "scenario",
        nargs="?",
        help="scenario TOML file or shipped name (default: default)",
    )
    p.add_argument(
        "--guests",
        type=argtypes.positive,
        help="guests (default: the scenario's)",
    )
    p.add_argument(
        "--hosts",
        type=argtypes.positive,
        help="uniform hosts of --host-memory (default: the scenario's)",
    )
    p.add_argument(
        "--host-memory",
        default=None,
        help="memory of each of --hosts, which it needs "
        "(default: the scenario's first host's)",
    )
    p.add_argument(
        "--generate",
        action="store_true",
        help="random guests over the scenario's images instead",
    )
    p.add_argument("--seed", type=argtypes.nonnegative, help="population seed")
    p.add_argument(
        "--policy",
        action="append",
        choices=POLICIES,
        help="a policy to run (repeatable; default: all)",
    )
    p.add_argument(
        "--summary-bits",
        type=_summary_bits,
        default=None,
        help="Bloom filter bits per host for sharing-aware; 0: catalog "
        "only; 'exact': every fingerprint (default: 131072)",
    )
    p.add_argument(
        "--headroom",
        type=_headroom,
        default=None,
        help="share of host memory kept free by the sharing policies "
        "(default: 0.05)",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="also run sharing-aware with summaries of several sizes",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="output directory (default: results/place-NAME-TIMESTAMP)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print no table")


def _summary_bits(text: str) -> int | str:
    if text == "exact":
        return text
    value = argtypes.nonnegative(text)
    if 0 < value < 8:
        raise argparse.ArgumentTypeError(f"0 or at least 8 bits: {value}")
    return value


def _headroom(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1): {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """Run the study the arguments describe; return the exit code."""
    from cluster import study
    from cluster.placement import DEFAULT_HEADROOM, DEFAULT_SUMMARY_BITS
    from cluster.results import check_results_dir
    from cluster.scenario import load_scenario, parse_size

    scenario = load_scenario(study.shipped_path(args.scenario))
    if args.hosts:
        memory = args.host_memory or scenario.hosts[0].memory_bytes
        hosts = study.uniform_hosts(args.hosts, _size(memory, parse_size))
    elif args.host_memory:
        raise CowsimError("--host-memory: needs --hosts")
    else:
        hosts = scenario.hosts
    out = args.out or Path("results") / (
        f"place-{scenario.name}-{datetime.now():%Y%m%d-%H%M%S}"
    )
    check_results_dir(out, option="--out")

    images = study.load_images(scenario)
    seed = scenario.seed if args.seed is None else args.seed
    if args.generate:
        population = study.generate_population(
            images, args.guests or len(scenario.guests), seed
        )
    else:
        population = study.scenario_population(images, args.guests, seed)
    bits = args.summary_bits
    bits = DEFAULT_SUMMARY_BITS if bits is None else bits
    bits = None if bits == "exact" else bits
    headroom = DEFAULT_HEADROOM if args.headroom is None else args.headroom
    policies = args.policy or study.POLICIES
    rows = study.compare(population, hosts, policies, bits, headroom)
    sweep = (
        study.summary_sweep(population, hosts, headroom=headroom)
        if args.sweep
        else []
    )
    text = study.format_table(rows)
    if sweep:
        text += "\n\n" + study.format_sweep(sweep)
    _write(out, rows, sweep, text)
    if not args.quiet:
        print(text)
    print(f"results: {out}")
    return 0


def _size(value, parse_size) -> int:
    from cluster.scenario import MAX_HOST_BYTES, format_size

    size = (
        value if isinstance(value, int) else parse_size(value, "--host-memory")
    )
    if size > MAX_HOST_BYTES:
        raise CowsimError(
            f"--host-memory {value}: more than a host may have "
            f"({format_size(MAX_HOST_BYTES)})"
        )
    return size


def _write(out: Path, rows: list, sweep: list, text: str) -> None:
    """Write the directory atomically, as ``cowsim run`` does."""
    from cluster import study

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        doc = {"policies": rows, "sweep": sweep}
        (tmp / "placement.json").write_text(json.dumps(doc, indent=2) + "\n")
        (tmp / "placement.txt").write_text(text + "\n")
        study.plot(rows, tmp / "placement.png", sweep)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
