"""A run announces its metrics endpoint to Prometheus's file discovery.

With ``cowsim run --prometheus-sd DIR``, the run writes ``DIR/NAME.json``
while it serves metrics and removes it when it stops serving. ``NAME`` is
the results directory's name. The file is one target group in the format
of Prometheus's ``file_sd_configs``::

    [{"targets": ["127.0.0.1:40123"], "labels": {"instance": "NAME"}}]

Setting ``instance`` to the run's name, instead of the address Prometheus
would use by default, names live runs as backfilled ones are named
(``cluster.openmetrics``), so that a dashboard picks a run by its name
whichever way it reached Prometheus. Many runs, each on a free port
(``--metrics-port 0``), can share one directory; the shipped
``dashboards/prometheus/prometheus.yml`` watches ``runs/*.json``.

The file is written to a temporary name and renamed, so Prometheus never
reads half of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dedup.errors import CowsimError


class TargetFile:
    """The discovery file of one run, present while it serves metrics."""

    def __init__(self, directory: Path, name: str, addr: str, port: int):
        self.path = Path(directory) / f"{name}.json"
        host = "127.0.0.1" if addr in ("", "0.0.0.0") else addr
        self.group = [
            {"targets": [f"{host}:{port}"], "labels": {"instance": name}}
        ]

    def write(self) -> None:
        """Publish the target group."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text(json.dumps(self.group, indent=2) + "\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            raise CowsimError(
                f"--prometheus-sd {self.path}: {exc.strerror or exc}"
            ) from exc

    def remove(self) -> None:
        """Withdraw it: Prometheus stops scraping the run."""
        self.path.unlink(missing_ok=True)


def check_sd_dir(directory: Path) -> None:
    """Create the directory if needed; refuse a path that is a file."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CowsimError(
            f"--prometheus-sd {directory}: {exc.strerror or exc}"
        ) from exc
