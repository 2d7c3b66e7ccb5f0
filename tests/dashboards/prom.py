"""A real Prometheus server for tests, on loopback, in a temporary dir.

Started from Debian's ``prometheus`` binary with its own config, storage
and a free port on 127.0.0.1; stopped by ``close``. Nothing here talks to
any other address.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
MISSING = "Debian's prometheus package is not installed (.ci/run installs it)"


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Prometheus:
    """One ``prometheus`` process serving ``config`` from ``storage``."""

    def __init__(self, config: Path, storage: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={storage}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.log = log
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready: {self.log_text()}")

    def log_text(self) -> str:
        """What the server logged (warnings and errors)."""
        self._log.flush()
        return self.log.read_text()

    def api(self, path: str, **params) -> dict:
        """GET an HTTP API endpoint; the ``data`` of a successful answer."""
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(
            f"{self.url}/api/v1/{path}?{query}", timeout=10
        ) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query_range(
        self, expr: str, start: float, end: float, step: float = 1.0
    ) -> list:
        """The series a range query returns."""
        return self.api(
            "query_range", query=expr, start=start, end=end, step=step
        )["result"]

    def close(self) -> None:
        """Stop the server and wait for it."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target of a dashboard."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace Grafana's ``$name`` variables as Grafana would."""

    def value(m: re.Match) -> str:
        return variables[m.group(1)]

    return re.sub(r"\$(__\w+|\w+)", value, expr)
