"""The shipped benchmark runs, checks the engine against its per-page
reference, and reports ratios. No timing is asserted here."""

from __future__ import annotations

import json

import pytest

from cluster.bench import build_host, reference_process
from cluster.cli import main
from dedup.hints import HintTable
from tests.cluster.test_run import cowsim


def test_engine_and_reference_agree_on_frames_in_use():
    engine, batch = build_host(1 << 14, seed=3)
    reference, _ = build_host(1 << 14, seed=3)
    expected = reference_process(reference, batch)
    HintTable().process(engine, batch)
    engine.check()
    assert engine.frames_in_use() == expected
    assert expected < engine.guest_pages()


def test_bench_command_reports_every_row(tmp_path):
    # A subprocess: the benchmark tunes its process's allocator.
    out = tmp_path / "bench.json"
    proc = cowsim("bench", "--frames", "16384", "--json", str(out))
    stdout, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "allocator" in stdout and "hints" in stdout
    rows = json.loads(out.read_text())
    names = ["allocator", "hints", "distinct", "memory", "ksm"]
    assert [r["name"] for r in rows] == names
    assert all(r["ratio"] > 0 for r in rows)
    # No Python object per page: engine state is a few dozen bytes.
    assert rows[3]["slow_per_second"] < 100


@pytest.mark.parametrize("value", ["abc", "10", str(1 << 40)])
def test_bench_rejects_bad_frames(value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--frames", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--frames" in err and len(err.strip().splitlines()) == 1
