"""The ``cowsim`` command.

``cowsim place [SCENARIO]`` compares placement policies on the
scenario's images (see ``cluster.placecmd``).

``cowsim run [SCENARIO]`` runs a scenario (the built-in default when none
is given) on a Ray cluster: the one at ``--address``, else the one named
by ``RAY_ADDRESS``, else a local instance started for the run. It serves
Prometheus metrics on 127.0.0.1 while it runs, shows progress on stderr,
prints a summary table and writes a results directory.
``cowsim openmetrics RESULTS`` writes a finished run's series as
OpenMetrics text for backfilling into Prometheus.

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

from cluster import argtypes, placecmd
from dedup.errors import CowsimError

log = logging.getLogger("cowsim")

EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1
# Benchmark hosts: from 4 MiB to 1 TiB of simulated memory.
_FRAMES = argtypes.int_range(1024, 1 << 28)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"cowsim: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = _Parser(
        prog="cowsim",
        description="Simulate copy-on-write page sharing across a cluster "
        "of hypervisor hosts.",
    )
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
        "(default, worstcase, worstcase-broken, transient, failure, "
        "migration, fork); default: default",
    )
    run.add_argument(
        "--address",
        help="Ray cluster address (default: RAY_ADDRESS, else start one)",
    )
    run.add_argument(
        "--seed", type=argtypes.nonnegative, help="override the scenario seed"
    )
    run.add_argument(
        "--results",
        type=Path,
        help="results directory (default: results/NAME-TIMESTAMP)",
    )
    run.add_argument(
        "--metrics-port",
        type=argtypes.port,
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
        "--pace",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="least wall time per simulated tick, to watch a run live "
        "(default: 0, as fast as possible)",
    )
    run.add_argument(
        "-q", "--quiet", action="store_true", help="no progress display"
    )
    run.add_argument(
        "-v",
        "--verbose",
        dest="run_verbose",
        action="count",
        default=0,
        help="log more (-v: run milestones, -vv: detail)",
    )
    run.add_argument(
        "--prometheus-sd",
        type=Path,
        metavar="DIR",
        help="while serving metrics, announce the endpoint in "
        "DIR/NAME.json for Prometheus's file discovery",
    )
    bench = sub.add_parser(
        "bench", help="benchmark the sharing engine (ratios, one run)"
    )
    bench.add_argument(
        "--frames",
        type=_FRAMES,
        default=1 << 22,
        help="frames of the benchmark host (default: 4194304, 16 GiB)",
    )
    bench.add_argument(
        "--seed", type=argtypes.nonnegative, default=0, help="seed"
    )
    bench.add_argument(
        "--json", type=Path, help="also write the results to this file"
    )
    _add_openmetrics_parser(sub)
    _add_compare(sub)
    placecmd.add_parser(sub)
    return parser


def _add_openmetrics_parser(sub) -> None:
    om = sub.add_parser(
        "openmetrics",
        help="write a results directory's series as OpenMetrics",
        description="Write the time series of a results directory as "
        "OpenMetrics text with timestamps, for `promtool tsdb "
        "create-blocks-from openmetrics`.",
    )
    om.add_argument("results", type=Path, help="a results directory")
    om.add_argument(
        "--end",
        type=_unix_seconds,
        metavar="UNIX_SECONDS",
        help="timestamp of the last tick (default: three hours ago)",
    )
    om.add_argument(
        "-o",
        "--output",
        type=Path,
        help="file to write (default: standard output)",
    )


def _unix_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < 2**33:
        raise argparse.ArgumentTypeError(f"out of range: {text}")
    return value


def _add_compare(sub) -> None:
    compare = sub.add_parser(
        "compare",
        help="run a scenario once per duplicate-finding strategy",
    )
    compare.add_argument(
        "scenario", nargs="?", help="scenario file or shipped name"
    )
    compare.add_argument(
        "--strategies",
        help="comma-separated: hints, ksm, sampling, blocks, hints+ksm "
        "(default: all)",
    )
    compare.add_argument(
        "--seed", type=argtypes.nonnegative, help="override the seed"
    )
    compare.add_argument(
        "--out",
        type=Path,
        help="output directory (default: results/compare-NAME-TIMESTAMP)",
    )
    compare.add_argument(
        "--address",
        help="Ray cluster address (default: RAY_ADDRESS, else start one)",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cowsim`` command."""
    args = build_parser().parse_args(argv)
    verbose = args.verbose + getattr(args, "run_verbose", 0)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "bench":
            return _bench(args)
        if args.command == "openmetrics":
            return _openmetrics(args)
        if args.command == "place":
            return placecmd.run(args)
        return _run(args)
    except CowsimError as exc:
        print(f"cowsim: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("cowsim: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.command == "compare":
        return _compare(args)
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
    for option, value in (("--linger", args.linger), ("--pace", args.pace)):
        if not 0 <= value < float("inf"):
            raise CowsimError(f"{option} {value}: must be a number >= 0")
    if args.prometheus_sd:
        from cluster.discovery import check_sd_dir

        check_sd_dir(args.prometheus_sd)
    return _execute(args, scenario, results)


def _compare(args: argparse.Namespace) -> int:
    import ray

    from cluster.compare import (
        format_table,
        parse_strategies,
        run_strategies,
        summarize,
        write_compare,
    )
    from cluster.coordinator import load_images, place
    from cluster.results import check_results_dir
    from cluster.scenario import load_scenario

    strategies = parse_strategies(args.strategies)
    scenario = load_scenario(_scenario_path(args.scenario))
    if args.seed is not None:
        scenario = scenario.with_seed(args.seed)
    out = args.out or Path("results") / (
        f"compare-{scenario.name}-{datetime.now():%Y%m%d-%H%M%S}"
    )
    check_results_dir(out, "--out")
    place(scenario)
    images = load_images(scenario)
    _init_ray(_ray_address(args.address))

    def done(name, result) -> None:
        print(
            f"{name}: {result.wall_seconds:.1f} s wall",
            file=sys.stderr,
            flush=True,
        )

    try:
        series = run_strategies(scenario, strategies, images, done)
    except ray.exceptions.RayError as exc:
        first = str(exc).strip().splitlines()[0]
        print(f"cowsim: error: run failed: {first}", file=sys.stderr)
        return EXIT_RUN_FAILED
    summaries = {name: summarize(rows) for name, rows in series.items()}
    table = format_table(summaries)
    write_compare(out, scenario, series, summaries, table)
    print(table)
    print(f"results: {out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import json

    from cluster.bench import format_bench, run_bench

    if args.json and args.json.is_dir():
        raise CowsimError(f"--json {args.json}: is a directory")
    rows = run_bench(args.frames, args.seed)
    print(format_bench(rows))
    if args.json:
        try:
            args.json.write_text(
                json.dumps([r.as_dict() for r in rows], indent=2) + "\n"
            )
        except OSError as exc:
            raise CowsimError(f"--json {args.json}: {exc.strerror}") from exc
    return 0


def _openmetrics(args: argparse.Namespace) -> int:
    from cluster.openmetrics import (
        default_end_seconds,
        read_timeseries,
        to_openmetrics,
    )

    csv_path = args.results / "timeseries.csv"
    if not csv_path.is_file():
        raise CowsimError(f"{args.results}: no timeseries.csv in it")
    end = default_end_seconds() if args.end is None else args.end
    text = to_openmetrics(
        read_timeseries(csv_path), end, args.results.resolve().name
    )
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _scenario_path(arg: str | None) -> str | None:
    """A file path, or the name of a scenario shipped with cowsim."""
    from cluster.scenario import DEFAULT_SCENARIO_PATH

    if arg is None or Path(arg).exists() or arg.endswith(".toml"):
        return arg
    shipped = DEFAULT_SCENARIO_PATH.parent / f"{arg}.toml"
    if shipped.exists():
        return str(shipped)
    names = ", ".join(
        sorted(p.stem for p in DEFAULT_SCENARIO_PATH.parent.glob("*.toml"))
    )
    raise CowsimError(f"{arg}: no such file, nor a shipped scenario ({names})")


def _execute(args, scenario, results: Path) -> int:
    import ray

    started = time.monotonic()
    from cluster.coordinator import Coordinator, load_images, place
    from cluster.metrics import MetricsServer, RunState
    from cluster.results import format_table, write_results

    # Everything that can reject the input runs before Ray starts.
    place(scenario)
    images = load_images(scenario)
    address = _ray_address(args.address)
    state = RunState()
    try:
        server = MetricsServer(state, args.metrics_port, args.metrics_addr)
    except OSError as exc:
        raise CowsimError(str(exc)) from exc
    print(f"metrics: {server.url}", file=sys.stderr, flush=True)
    progress = None if args.quiet else _progress(scenario.ticks)
    target = None
    try:
        target = _announce(args, results, server)
        _init_ray(address)
        coordinator = Coordinator(scenario, state, progress, images, args.pace)
        try:
            result = coordinator.run()
        except ray.exceptions.RayError as exc:
            first = str(exc).strip().splitlines()[0]
            print(f"cowsim: error: run failed: {first}", file=sys.stderr)
            return EXIT_RUN_FAILED
        finally:
            coordinator.shutdown()
        try:
            summary = write_results(result, results)
        except OSError as exc:
            print(
                f"cowsim: error: --results {results}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return EXIT_RUN_FAILED
        if progress and sys.stderr.isatty():
            print(file=sys.stderr)
        print(format_table(summary))
        print(
            f"results: {results}  ({scenario.ticks} ticks; "
            f"{result.boot_seconds:.1f} s booting, "
            f"{result.wall_seconds - result.boot_seconds:.1f} s ticking, "
            f"{time.monotonic() - started:.1f} s in all)"
        )
        if args.linger:
            time.sleep(args.linger)
    finally:
        if target:
            target.remove()
        server.close()
    return 0


def _announce(args, results: Path, server):
    """The run's file-discovery target, written, or None."""
    if not args.prometheus_sd:
        return None
    from cluster.discovery import TargetFile

    target = TargetFile(
        args.prometheus_sd, results.name, server.addr, server.port
    )
    target.write()
    return target


def _init_ray(address: str) -> None:
    import ray

    if ray.is_initialized():
        return
    # Token authentication is what a local instance should have; Ray's
    # notice about it on every start is noise in a run's output.
    logging.getLogger(
        "ray._private.authentication.authentication_token_setup"
    ).setLevel(logging.ERROR)
    try:
        # Worker output is not forwarded: hosts report their events, which
        # the summary prints, and a failed actor's error is caught here.
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc) else repr(exc)
        raise CowsimError(f"--address {address}: {first}") from exc


def _ray_address(arg: str | None) -> str:
    """``--address``, else ``RAY_ADDRESS``, else "local", which starts a
    fresh instance even when another one runs here; checked reachable."""
    address = arg or os.environ.get("RAY_ADDRESS") or "local"
    _check_reachable(address)
    return address


def _check_reachable(address: str) -> None:
    """Fail fast on a HOST:PORT nobody listens on: Ray would retry for
    minutes before giving up."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise CowsimError(f"--address {address}: {reason}") from exc


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
