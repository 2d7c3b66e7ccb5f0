"""The ``cowsim`` command.

``cowsim place [SCENARIO]`` compares placement policies on the
scenario's images (see ``cluster.placecmd``).

``cowsim run [SCENARIO]`` runs a scenario (the built-in default when none
is given) on a Ray cluster: the one at ``--address``, else the one named
by ``RAY_ADDRESS``, else a local instance started for the run. It serves
Prometheus metrics on 127.0.0.1 while it runs, shows progress on stderr,
prints a summary table and writes a results directory.

Bad input ends the command with one line on stderr and exit code 2;
nothing is left in the results directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from cluster import placecmd
from dedup.errors import CowsimError

log = logging.getLogger("cowsim")

EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"cowsim: error: {message}\n")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a port number: {text!r}"
        ) from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return port


def _seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if seed < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {seed}")
    return seed


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = _Parser(prog="cowsim", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more (-v: run milestones, -vv: detail)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a scenario")
    run.add_argument(
        "scenario",
        nargs="?",
        help="scenario TOML file, or the name of a shipped scenario "
        "(default, worstcase, worstcase-broken); default: default",
    )
    run.add_argument(
        "--address",
        help="Ray cluster address (default: RAY_ADDRESS, else start one)",
    )
    run.add_argument("--seed", type=_seed, help="override the scenario seed")
    run.add_argument(
        "--results",
        type=Path,
        help="results directory (default: results/NAME-TIMESTAMP)",
    )
    run.add_argument(
        "--metrics-port",
        type=_port,
        default=9691,
        help="port for Prometheus metrics; 0 picks a free one (default: 9691)",
    )
    run.add_argument(
        "--metrics-addr",
        default="127.0.0.1",
        help="address to serve metrics on (default: 127.0.0.1)",
    )
    run.add_argument(
        "--linger",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep serving metrics this long after the run ends",
    )
    run.add_argument(
        "-q", "--quiet", action="store_true", help="no progress display"
    )
    placecmd.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cowsim`` command."""
    args = build_parser().parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[
        min(args.verbose, 2)
    ]
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s"
    )
    handler = placecmd.run if args.command == "place" else _run
    try:
        return handler(args)
    except CowsimError as exc:
        print(f"cowsim: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("cowsim: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    # Imported here so that `cowsim --help` and bad input stay fast.
    from cluster.results import check_results_dir
    from cluster.scenario import load_scenario

    scenario = load_scenario(_scenario_path(args.scenario))
    if args.seed is not None:
        scenario = scenario.with_seed(args.seed)
    results = args.results or Path("results") / (
        f"{scenario.name}-{datetime.now():%Y%m%d-%H%M%S}"
    )
    check_results_dir(results)
    if args.linger < 0:
        raise CowsimError(f"--linger {args.linger}: must be >= 0")
    return _execute(args, scenario, results)


def _scenario_path(arg: str | None) -> str | None:
    """A file path, or the name of a scenario shipped with cowsim."""
    from cluster.scenario import DEFAULT_SCENARIO_PATH

    if arg is None or Path(arg).exists() or arg.endswith(".toml"):
        return arg
    shipped = DEFAULT_SCENARIO_PATH.parent / f"{arg}.toml"
    return str(shipped) if shipped.exists() else arg


def _execute(args, scenario, results: Path) -> int:
    import ray

    from cluster.coordinator import Coordinator, load_images, place
    from cluster.metrics import MetricsServer, RunState
    from cluster.results import format_table, write_results

    # Everything that can reject the input runs before Ray starts.
    place(scenario)
    images = load_images(scenario)
    state = RunState()
    try:
        server = MetricsServer(state, args.metrics_port, args.metrics_addr)
    except OSError as exc:
        raise CowsimError(str(exc)) from exc
    print(f"metrics: {server.url}", file=sys.stderr, flush=True)
    progress = None if args.quiet else _progress(scenario.ticks)
    try:
        _init_ray(args.address)
        coordinator = Coordinator(scenario, state, progress, images)
        try:
            result = coordinator.run()
        except ray.exceptions.RayError as exc:
            first = str(exc).strip().splitlines()[0]
            print(f"cowsim: error: run failed: {first}", file=sys.stderr)
            return EXIT_RUN_FAILED
        finally:
            coordinator.shutdown()
        summary = write_results(result, results)
        if progress:
            print(file=sys.stderr)
        print(format_table(summary))
        print(
            f"results: {results}  ({result.wall_seconds:.1f} s wall, "
            f"{scenario.ticks} ticks)"
        )
        if args.linger:
            time.sleep(args.linger)
    finally:
        server.close()
    return 0


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    # "local" starts a fresh instance even when another one runs here.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc) else repr(exc)
        raise CowsimError(f"--address {address}: {first}") from exc


def _progress(total: int):
    tty = sys.stderr.isatty()

    def show(done: int, samples: list[dict]) -> None:
        saved = sum(s["saved_bytes"] for s in samples)
        potential = sum(s["potential_bytes"] for s in samples)
        found = 100 * saved / potential if potential else 100.0
        faults = sum(s["cow_faults"] for s in samples)
        line = (
            f"tick {done}/{total}  saved {saved / 2**20:,.0f} MiB of "
            f"{potential / 2**20:,.0f} MiB potential ({found:.0f}%)  "
            f"faults {faults:,}"
        )
        end = "\r" if tty else "\n"
        print(line, end=end, file=sys.stderr, flush=True)

    return show


if __name__ == "__main__":
    sys.exit(main())
