"""``cowsim run`` end to end, on a real local Ray instance.

Images are real files written by the tests. The command runs as a real
subprocess, as a user would start it, and the test scrapes its metrics
endpoint on loopback while the run is going.
"""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def write_tree(root: Path, seed: int, shared: Path | None = None) -> None:
    """A small 'installation': unique files, a shared library, zeros."""
    rng = np.random.default_rng(seed)
    (root / "lib").mkdir(parents=True)
    for i in range(24):
        size = int(rng.integers(1, 6)) * 4096 + int(rng.integers(0, 4096))
        (root / f"data{i:02d}.bin").write_bytes(rng.bytes(size))
    (root / "lib" / "libcommon.so.1").write_bytes(
        np.random.default_rng(99).bytes(40 * 4096)
    )
    (root / "zeros.img").write_bytes(bytes(8 * 4096))


def small_scenario(tmp: Path, ticks: int = 12, batch: int = 3) -> Path:
    write_tree(tmp / "imgA", seed=1)
    write_tree(tmp / "imgB", seed=2)
    path = tmp / "small.toml"
    path.write_text(
        f"""
name = "small"
seed = 3
ticks = {ticks}
tick_seconds = 1.0
batch_ticks = {batch}

[[hosts]]
name = "h"
count = 2
memory = "32MiB"

[images.a]
paths = ["imgA"]

[images.b]
paths = ["imgB"]

[[guests]]
name = "ga"
image = "a"
memory = "8MiB"
count = 3
boot_read_fraction = 0.8
[guests.workload]
read_pages_per_tick = 8
disk_write_pages_per_tick = 2
anon_write_pages_per_tick = 16
free_pages_per_tick = 4

[[guests]]
name = "gb"
image = "b"
memory = "8MiB"
count = 2

[[guests]]
name = "gc"
image = "a"
memory = "8MiB"
kind = "hvm"
"""
    )
    return path


def cowsim(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, RAY_ADDRESS="")
    env.pop("RAY_ADDRESS")
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", *args],
        cwd=kw.get("cwd", ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def run_shipped(name: str, results: Path) -> subprocess.CompletedProcess:
    """``cowsim run NAME`` to the end, quietly, on a fresh local Ray."""
    proc = cowsim(
        "run", name, "--results", str(results), "--metrics-port", "0", "-q"
    )
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.read().decode()
    except OSError:
        return None


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, f"{name} not in scrape"
    return float(m.group(1))


def test_run_serves_metrics_while_running_and_writes_results(tmp_path):
    scenario = small_scenario(tmp_path, ticks=300, batch=1)
    results = tmp_path / "out"
    proc = cowsim(
        "run",
        str(scenario),
        "--results",
        str(results),
        "--metrics-port",
        "0",
        "--quiet",
    )
    url = None
    while url is None:
        line = proc.stderr.readline()
        assert line, f"cowsim exited early: {proc.communicate()}"
        m = re.search(r"metrics: (http://127\.0\.0\.1:\d+/metrics)", line)
        url = m.group(1) if m else None

    during = []
    while proc.poll() is None:
        text = scrape(url)
        if text and "cowsim_tick " in text:
            during.append(text)
        time.sleep(0.2)
    out, err = proc.communicate()
    assert proc.returncode == 0, err

    ticks = [metric(t, "cowsim_tick") for t in during]
    assert any(0 < t < 300 for t in ticks), ticks
    last = during[-1]
    assert 'cowsim_saved_bytes{host="h-0",source="disk"}' in last
    assert "cowsim_cluster_potential_saved_bytes" in last
    assert "cowsim_cow_faults_total" in last

    assert "cluster" in out and "saved by source" in out
    summary = json.loads((results / "summary.json").read_text())
    c = summary["cluster"]
    assert c["saved_bytes"] > 0
    assert 0 < c["saved_bytes"] <= c["potential_bytes"]
    assert c["saved_by_source_bytes"]["library"] > 0
    assert c["saved_by_source_bytes"]["disk"] > 0
    assert len(summary["hosts"]) == 2
    for key in (
        "guest_bytes",
        "machine_bytes_used",
        "saved_bytes",
        "potential_bytes",
        "cow_faults",
    ):
        assert key in c and all(key in h for h in summary["hosts"])
    assert (results / "scenario.toml").is_file()
    lines = (results / "timeseries.csv").read_text().splitlines()
    assert len(lines) == 1 + 301 * 3  # header, (2 hosts + cluster) a tick


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "missing.toml"], "missing.toml"),
        (["run", "--seed", "-4"], "--seed"),
        (["run", "--metrics-port", "70000"], "--metrics-port"),
        (["run", "--linger", "-1"], "--linger"),
        (["run", "--linger", "nan"], "--linger"),
        (["run", "nosuchname"], "worstcase"),
        (["run", "--results", "afile/sub"], "afile is not a directory"),
        (["run", "--address", "127.0.0.1:1"], "--address 127.0.0.1:1"),
    ],
)
def test_bad_command_line_is_one_line_and_exit_2(tmp_path, args, needle):
    (tmp_path / "afile").write_text("")
    if "--results" not in args:
        args = [*args, "--results", str(tmp_path / "r")]
    proc = cowsim(*args, cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err
    assert not (tmp_path / "r").exists()


def test_bad_scenario_is_one_line_and_leaves_no_results(tmp_path):
    scenario = small_scenario(tmp_path)
    scenario.write_text(scenario.read_text() + "\nbogus = 1\n")
    proc = cowsim("run", str(scenario), "--results", str(tmp_path / "r"))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip().count("\n") == 0, err
    assert "small.toml" in err and "bogus" in err
    assert not (tmp_path / "r").exists()


def test_image_too_large_is_one_line(tmp_path):
    scenario = small_scenario(tmp_path)
    text = scenario.read_text().replace(
        'paths = ["imgA"]', 'paths = ["imgA"]\nmax_size = "64KiB"'
    )
    scenario.write_text(text)
    proc = cowsim(
        "run",
        str(scenario),
        "--results",
        str(tmp_path / "r"),
        "--metrics-port",
        "0",
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("cowsim:")]
    assert len(lines) == 1 and "imgA" in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_existing_results_directory_is_refused(tmp_path):
    scenario = small_scenario(tmp_path)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep").write_text("x")
    proc = cowsim("run", str(scenario), "--results", str(tmp_path / "r"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--results" in err
    assert (tmp_path / "r" / "keep").read_text() == "x"
