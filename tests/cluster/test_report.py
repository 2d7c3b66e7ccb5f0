"""Plots and the HTML report of a real run, rendered by headless Chromium.

One small scenario runs as ``cowsim run`` on a real local Ray instance.
Its report must be self-contained (no file or network fetches) and, where
Debian's ``chromium`` is installed, render with its plots decoded: the
screenshot must hold the plots' coloured lines, which the page's own text
and table (black, grey) never draw.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import matplotlib.image
import numpy as np
import pytest

from cluster.report import PLOTS
from tests.cluster.test_run import cowsim, small_scenario

CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    out = tmp / "out"
    proc = cowsim(
        "run",
        str(small_scenario(tmp, ticks=30, batch=5)),
        "--results",
        str(out),
        "--metrics-port",
        "0",
        "--quiet",
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def test_results_hold_plots_report_and_openmetrics(results):
    for name, _ in PLOTS:
        path = results / "plots" / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = matplotlib.image.imread(path).shape
        assert width >= 600 and height >= 250
    assert (results / "timeseries.om").read_text().endswith("# EOF\n")
    assert not list(results.parent.glob(".out.*"))  # no temporary left


def test_report_is_self_contained(results):
    html = (results / "report.html").read_text()
    assert "<script" not in html and "<link" not in html
    sources = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert len(sources) == len(PLOTS)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    for host in ("h-0", "h-1", "cluster"):
        assert f"<td>{host}</td>" in html
    assert "cowsim run: small (seed 3)" in html


def _chromium(*args: str, profile) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(results, tmp_path):
    url = (results / "report.html").resolve().as_uri()
    dom = _chromium("--dump-dom", url, profile=tmp_path / "p1")
    assert dom.returncode == 0, dom.stderr
    for name, _ in PLOTS:
        assert f'<figure id="{name}">' in dom.stdout

    shot = tmp_path / "shot.png"
    proc = _chromium(
        "--window-size=1000,3600",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        url,
        profile=tmp_path / "p2",
    )
    assert proc.returncode == 0, proc.stderr
    pixels = matplotlib.image.imread(shot)[..., :3]
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    coloured = int(np.count_nonzero(spread > 0.3))
    assert coloured > 5000, coloured
