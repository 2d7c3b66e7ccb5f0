"""The shipped dashboards and rules against a real Prometheus server.

A real scenario runs as ``cowsim run`` in a subprocess on a real local
Ray instance, announcing its exporter through the shipped file-discovery
job. A real Prometheus (Debian's package) started with the shipped
``prometheus.yml`` and ``cowsim.rules.yml`` scrapes it on loopback. The
only changes to the shipped config: a 1 s scrape and evaluation interval
so that a run of a few seconds leaves enough samples, and no static job
on the default port, so that the server scrapes nothing but this run.

Then the run's ``timeseries.om`` is backfilled with ``promtool`` into a
second server, and the same panel queries must return data for it.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.cluster.test_run import cowsim, write_tree
from tests.dashboards.prom import (
    MISSING,
    PROMETHEUS,
    PROMTOOL,
    Prometheus,
    dashboard_queries,
    substitute,
)

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "dashboards" / "grafana"
SHIPPED = ROOT / "dashboards" / "prometheus"
SCRAPE_SECONDS = 1
# Grafana's $__rate_interval: at least four scrape intervals.
RATE_INTERVAL = f"{4 * SCRAPE_SECONDS}s"

pytestmark = pytest.mark.skipif(not PROMETHEUS or not PROMTOOL, reason=MISSING)


def scenario(tmp: Path) -> Path:
    """Two hosts; guests with bonus pages so that repayment moves too."""
    write_tree(tmp / "imgA", seed=1)
    write_tree(tmp / "imgB", seed=2)
    path = tmp / "live.toml"
    path.write_text(
        """
name = "live"
seed = 5
ticks = 360
tick_seconds = 1.0
batch_ticks = 2

[[hosts]]
name = "h"
count = 2
memory = "40MiB"

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
bonus = "proportional"
bonus_fraction = 0.5
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
bonus = "proportional"
"""
    )
    return path


def _prometheus_config(prom_dir: Path) -> Path:
    """The shipped config, faster, scraping only the discovered run."""
    config = yaml.safe_load((SHIPPED / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = f"{SCRAPE_SECONDS}s"
    config["global"]["evaluation_interval"] = f"{SCRAPE_SECONDS}s"
    config["scrape_configs"] = [
        job for job in config["scrape_configs"] if "file_sd_configs" in job
    ]
    for name in config["rule_files"]:
        (prom_dir / name).write_text((SHIPPED / name).read_text())
    (prom_dir / "runs").mkdir()
    path = prom_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """Prometheus that scraped a whole run; the run's scrape and paths."""
    tmp = tmp_path_factory.mktemp("live")
    prom_dir = tmp / "prom"
    prom_dir.mkdir()
    config = _prometheus_config(prom_dir)
    server = Prometheus(config, prom_dir / "data", tmp / "prometheus.log")
    results = tmp / "run-live"
    proc = None
    try:
        start = time.time()
        proc = cowsim(
            "run",
            str(scenario(tmp)),
            "--results",
            str(results),
            "--metrics-port",
            "0",
            "--prometheus-sd",
            str(prom_dir / "runs"),
            "--linger",
            str(6 * SCRAPE_SECONDS),
            # Paced, so that Prometheus (whose file discovery takes a few
            # seconds to notice the run) scrapes the counters moving
            # however fast this machine ticks: 360 ticks last 14 s or more.
            "--pace",
            "0.04",
            "--quiet",
        )
        scrape = _scrape_during(proc)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        yield {
            "server": server,
            "start": start,
            "end": time.time(),
            "scrape": scrape,
            "results": results,
            "tmp": tmp,
            "sd_dir": prom_dir / "runs",
        }
    finally:
        if proc and proc.poll() is None:
            proc.kill()
            proc.communicate()
        server.close()


def _scrape_during(proc: subprocess.Popen) -> str:
    """One scrape of the exporter taken while the run goes."""
    url = None
    while url is None:
        line = proc.stderr.readline()
        assert line, f"cowsim exited early: {proc.communicate()}"
        m = re.search(r"metrics: (http://127\.0\.0\.1:\d+/metrics)", line)
        url = m.group(1) if m else None
    while proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            time.sleep(0.2)
            continue
        if re.search(r"^cowsim_tick [1-9]", text, re.M):
            return text
        time.sleep(0.2)
    raise AssertionError("no scrape with ticks while the run went")


def _dashboards() -> dict[str, dict]:
    return {
        p.stem: json.loads(p.read_text())
        for p in sorted(GRAFANA.glob("*.json"))
    }


def _rules() -> list[str]:
    rules = yaml.safe_load((SHIPPED / "cowsim.rules.yml").read_text())
    return [r["record"] for g in rules["groups"] for r in g["rules"]]


def _check_panels(server, variables, start, end) -> list[str]:
    empty = []
    for uid, dashboard in _dashboards().items():
        for title, expr in dashboard_queries(dashboard):
            query = substitute(expr, variables)
            if not server.query_range(query, start, end):
                empty.append(f"{uid} / {title}: {query}")
    return empty


def test_scrape_passes_promtool_check_metrics(live):
    proc = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=live["scrape"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == ""


def test_run_was_discovered_and_scraped(live):
    server = live["server"]
    ups = server.query_range("up", live["start"], live["end"])
    assert [u["metric"] for u in ups] == [
        {"__name__": "up", "job": "cowsim_runs", "instance": "run-live"}
    ]
    ticks = server.query_range("cowsim_tick", live["start"], live["end"])
    assert len(ticks) == 1
    values = [float(v) for _, v in ticks[0]["values"]]
    assert max(values) == 360 and min(values) < 360
    # The run withdrew its discovery file when it stopped serving, and
    # Prometheus drops the target (discovery updates every few seconds).
    assert list(live["sd_dir"].glob("*.json")) == []
    deadline = time.monotonic() + 30
    while server.api("targets")["activeTargets"]:
        assert time.monotonic() < deadline, "target still active"
        time.sleep(0.5)


def test_every_dashboard_panel_returns_data_live(live):
    variables = {
        "job": "cowsim_runs",
        "instance": "run-live",
        "host": ".+",
        "__rate_interval": RATE_INTERVAL,
    }
    empty = _check_panels(
        live["server"], variables, live["start"], live["end"]
    )
    assert not empty, "\n".join(empty)


def test_dashboard_variables_find_the_run(live):
    server = live["server"]
    values = {"job": "cowsim_runs", "instance": "run-live", "host": ".+"}
    for dashboard in _dashboards().values():
        for var in dashboard["templating"]["list"]:
            if var["type"] != "query":
                continue
            m = re.fullmatch(
                r"label_values\((.+), (\w+)\)", var["query"]["query"]
            )
            assert m, var["query"]
            found = server.api(
                f"label/{m.group(2)}/values",
                **{
                    "match[]": substitute(m.group(1), values),
                    "start": live["start"],
                    "end": live["end"],
                },
            )
            assert found, var["name"]


def test_every_recording_rule_returns_data(live):
    server = live["server"]
    empty = [
        name
        for name in _rules()
        if not server.query_range(name, live["start"], live["end"])
    ]
    assert not empty, empty
    assert "rule evaluation failed" not in server.log_text().lower()


def test_backfilled_run_answers_the_same_panels(live):
    tmp = live["tmp"]
    om = live["results"] / "timeseries.om"
    stamps = [
        float(line.rsplit(" ", 1)[1])
        for line in om.read_text().splitlines()
        if line.startswith("cowsim_tick{")
    ]
    blocks = tmp / "backfill"
    proc = subprocess.run(
        [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", om, blocks],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = tmp / "backfill.yml"
    config.write_text("global:\n  scrape_interval: 1s\n")
    server = Prometheus(config, blocks, tmp / "backfill.log")
    try:
        ticks = server.query_range(
            "cowsim_tick", min(stamps), max(stamps), step=1
        )
        assert ticks[0]["metric"] == {
            "__name__": "cowsim_tick",
            "job": "cowsim_backfill",
            "instance": "run-live",
        }
        assert float(ticks[0]["values"][-1][1]) == 360
        variables = {
            "job": "cowsim_backfill",
            "instance": "run-live",
            "host": ".+",
            # One sample per simulated second: four of them.
            "__rate_interval": "4s",
        }
        empty = _check_panels(server, variables, min(stamps), max(stamps))
        assert not empty, "\n".join(empty)
    finally:
        server.close()
