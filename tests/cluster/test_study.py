"""Placement studies: the README's example, and ``cowsim place``.

The README example runs on the default scenario's real images; its
table must match the README's, time to place aside.
"""

import contextlib
import io
import json
import re
import subprocess
import sys

from tests.cluster.test_run import ROOT, small_scenario


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def without_time(table: str) -> list[str]:
    """Table lines with the last column (time to place) removed."""
    return [line.rsplit(None, 1)[0] for line in table.strip().splitlines()]


def test_readme_example_prints_the_readme_table():
    section = readme_section("Placement studies")
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    shown = re.search(r"```\n(policy .*?)```", section, re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert without_time(out.getvalue()) == without_time(shown)
    rows = {r.split()[0]: int(r.split()[1]) for r in shown.splitlines()[2:]}
    assert rows["sharing-aware"] < rows["first-fit"]


def place(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", "place", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def test_place_command_writes_table_json_and_plot(tmp_path):
    scenario = small_scenario(tmp_path)
    out = tmp_path / "study"
    done = place(
        str(scenario),
        "--guests",
        "24",
        "--hosts",
        "6",
        "--host-memory",
        "32MiB",
        "--sweep",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert "sharing-aware" in done.stdout and "bloom" in done.stdout
    doc = json.loads((out / "placement.json").read_text())
    policies = [row["policy"] for row in doc["policies"]]
    assert policies == ["first-fit", "spread", "sharing-aware", "offline"]
    assert all(row["guests"] == 24 for row in doc["policies"])
    assert len(doc["sweep"]) == 7
    assert (out / "placement.png").read_bytes()[:4] == b"\x89PNG"


def test_place_command_rejects_bad_input(tmp_path):
    scenario = str(small_scenario(tmp_path))
    out = tmp_path / "never"
    for args in (
        ["--headroom", "1.5"],
        ["--guests", "0"],
        ["--host-memory", "1GiB"],
        ["--hosts", "2", "--host-memory", "5KiB"],
        ["--summary-bits", "3"],
    ):
        done = place(scenario, *args, "--out", str(out))
        assert done.returncode == 2, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr
    assert not out.exists()
