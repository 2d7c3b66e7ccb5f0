"""OpenMetrics export of a run's series, and ``cowsim openmetrics``.

The text is read back with prometheus-client's own OpenMetrics parser
(a second, independent implementation of the format); promtool ingests
it in ``tests/dashboards/test_prometheus.py``.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from cluster.metrics import METRICS
from cluster.openmetrics import (
    BACKFILL_JOB,
    default_end_seconds,
    read_timeseries,
    to_openmetrics,
)

ROOT = Path(__file__).resolve().parents[2]
HOSTS = ("h-0", "h-1")
TICKS = 4
TICK_SECONDS = 2.5


class _Keys(dict):
    """A sample that invents, as 0, any key a metric reads."""

    def __missing__(self, key):
        self[key] = 0
        return 0


def rows() -> list[dict]:
    """Host rows and cluster rows as the coordinator records them."""
    out = []
    for tick in range(TICKS + 1):
        tick_rows = []
        for i, host in enumerate(HOSTS):
            row = _Keys(
                host=host, tick=tick, sim_time_seconds=tick * TICK_SECONDS
            )
            for m in METRICS:
                m.read(row)
            row["saved_disk_bytes"] = 4096 * (tick + i)
            row["faults_copy"] = 10 * tick
            tick_rows.append(dict(row))
        cluster = {"host": "cluster", "tick": tick}
        cluster["sim_time_seconds"] = tick * TICK_SECONDS
        for key in tick_rows[0]:
            if key not in cluster:
                cluster[key] = sum(r[key] for r in tick_rows)
        out += [*tick_rows, cluster]
    return out


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_every_exported_family_with_timestamps_and_run_labels():
    text = to_openmetrics(rows(), end_seconds=1_000_000.0, instance="r1")
    assert text.endswith("# EOF\n")
    fams = families(text)
    expected = {"cowsim_tick", "cowsim_sim_time_seconds"}
    for m in METRICS:
        expected |= {f"cowsim_{m.name}", f"cowsim_cluster_{m.name}"}
    assert set(fams) == expected
    for m in METRICS:
        per_host = fams[f"cowsim_{m.name}"]
        assert per_host.type == m.kind
        n_values = len(per_host.samples) // (len(HOSTS) * (TICKS + 1))
        assert len(fams[f"cowsim_cluster_{m.name}"].samples) == n_values * (
            TICKS + 1
        )
        for s in per_host.samples:
            assert s.labels["job"] == BACKFILL_JOB
            assert s.labels["instance"] == "r1"
            assert s.labels["host"] in HOSTS
            if m.kind == "counter":
                assert s.name == f"cowsim_{m.name}_total"


def test_last_tick_is_end_and_ticks_are_simulated_seconds_apart():
    fams = families(to_openmetrics(rows(), 1_000_000.0, "r1"))
    stamps = [float(s.timestamp) for s in fams["cowsim_tick"].samples]
    assert stamps[-1] == 1_000_000.0
    assert stamps == [
        1_000_000.0 - (TICKS - t) * TICK_SECONDS for t in range(TICKS + 1)
    ]
    disk = [
        s
        for s in fams["cowsim_saved_bytes"].samples
        if s.labels == {**s.labels, "host": "h-1", "source": "disk"}
    ]
    assert [s.value for s in disk] == [4096 * (t + 1) for t in range(5)]
    faults = [
        s.value
        for s in fams["cowsim_cluster_cow_faults"].samples
        if s.labels["kind"] == "copy"
    ]
    assert faults == [20 * t for t in range(TICKS + 1)]


def test_series_are_contiguous_and_in_time_order():
    lines = to_openmetrics(rows(), 1_000_000.0, "r1").splitlines()
    seen: list[str] = []
    stamp = 0.0
    for line in lines:
        if line.startswith("#"):
            continue
        series, _, at = line.rsplit(" ", 2)
        if not seen or series != seen[-1]:
            assert series not in seen, series
            seen.append(series)
        else:
            assert float(at) > stamp, line
        stamp = float(at)


def test_default_end_is_three_hours_before_now():
    assert default_end_seconds(now=100_000.7) == 100_000 - 3 * 3600


def _write_csv(path: Path, data: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(data[0]))
        writer.writeheader()
        writer.writerows(data)


def cowsim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_command_restamps_a_results_directory(tmp_path):
    run = tmp_path / "myrun"
    run.mkdir()
    _write_csv(run / "timeseries.csv", rows())
    out = tmp_path / "x.om"
    proc = cowsim("openmetrics", str(run), "--end", "2000000", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    expected = to_openmetrics(
        read_timeseries(run / "timeseries.csv"), 2_000_000.0, "myrun"
    )
    assert out.read_text() == expected
    assert expected == to_openmetrics(rows(), 2_000_000.0, "myrun")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["openmetrics", "nowhere"], "nowhere"),
        (["openmetrics", ".", "--end", "soon"], "--end"),
        (["openmetrics", ".", "--end", "-5"], "--end"),
    ],
)
def test_command_bad_input_is_one_line_exit_2(args, needle):
    proc = cowsim(*args)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert needle in proc.stderr


def test_promtool_backfills_a_run_spanning_several_blocks(tmp_path):
    """Ten simulated hours: promtool cuts 2 h blocks, none refused."""
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("Debian's prometheus package is not installed")
    long_rows = []
    for row in rows():
        row = dict(row)
        row["sim_time_seconds"] = row["tick"] * 9000.0
        long_rows.append(row)
    om = tmp_path / "long.om"
    om.write_text(to_openmetrics(long_rows, default_end_seconds(), "long"))
    proc = subprocess.run(
        [
            promtool,
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            om,
            tmp_path / "b",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    blocks = [p for p in (tmp_path / "b").iterdir() if p.is_dir()]
    assert len(blocks) == TICKS + 1  # 2.5 h apart: one tick per block
    samples = sum(
        json.loads((b / "meta.json").read_text())["stats"]["numSamples"]
        for b in blocks
    )
    assert samples == sum(
        1 for line in om.read_text().splitlines() if not line.startswith("#")
    )
