"""Memory curves of a finished run, drawn from its ``timeseries.csv``.

``python -m cluster.plots RESULTS_DIR [OUT.png]`` draws, per host, the
machine memory its guests use and, where forking shared any, the memory
saved by forking, against simulated ticks. Written with matplotlib's
Agg backend: no display needed.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path


def read_series(results: str | os.PathLike) -> dict[str, list[dict]]:
    """Host name -> its rows of ``timeseries.csv``, in tick order."""
    hosts: dict[str, list[dict]] = {}
    with open(Path(results) / "timeseries.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["host"] != "cluster":
                hosts.setdefault(row["host"], []).append(row)
    return hosts


def memory_curves(
    results: str | os.PathLike, out: str | os.PathLike, title: str = ""
) -> None:
    """Draw machine memory used (and saved by forking) per host."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for host, rows in read_series(results).items():
        ticks = [int(r["tick"]) for r in rows]
        used = [int(r["machine_bytes_used"]) / 2**20 for r in rows]
        line = ax.plot(ticks, used, label=f"{host}: used")[0]
        fork = [int(r.get("saved_fork_bytes") or 0) / 2**20 for r in rows]
        if any(fork):
            ax.plot(
                ticks,
                fork,
                ls="--",
                color=line.get_color(),
                label=f"{host}: saved by forking",
            )
    ax.set_xlabel("tick (simulated)")
    ax.set_ylabel("MiB")
    ax.set_title(title or f"memory per host: {Path(results).name}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: RESULTS_DIR [OUT.png]."""
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print("usage: python -m cluster.plots RESULTS_DIR [OUT.png]")
        return 2
    results = Path(args[0])
    if not (results / "timeseries.csv").is_file():
        print(f"cowsim: error: {results}: no timeseries.csv", file=sys.stderr)
        return 2
    out = args[1] if len(args) == 2 else results / "memory.png"
    memory_curves(results, out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
