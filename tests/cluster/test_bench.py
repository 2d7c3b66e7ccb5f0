"""The shipped benchmark runs, checks the engine against its per-page
reference, and reports ratios. No timing is asserted here."""

from __future__ import annotations

import json

import pytest

from cluster.bench import build_host, reference_process, run_bench
from cluster.cli import main
from dedup.hints import HintTable


def test_engine_and_reference_agree_on_frames_in_use():
    engine, batch = build_host(1 << 14, seed=3)
    reference, _ = build_host(1 << 14, seed=3)
    expected = reference_process(reference, batch)
    HintTable().process(engine, batch)
    engine.check()
    assert engine.frames_in_use() == expected
    assert expected < engine.guest_pages()


def test_run_bench_reports_every_row():
    rows = run_bench(1 << 14, seed=1, sample=2000)
    assert [r.name for r in rows] == ["hints", "distinct", "memory"]
    assert all(r.ratio > 0 for r in rows)
    # No Python object per page: engine state is a few dozen bytes.
    assert rows[2].slow_per_second < 100


def test_bench_command_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--frames", "16384", "--json", str(out)]) == 0
    assert "hints" in capsys.readouterr().out
    assert [r["name"] for r in json.loads(out.read_text())] == [
        "hints",
        "distinct",
        "memory",
    ]


@pytest.mark.parametrize("value", ["abc", "10", str(1 << 40)])
def test_bench_rejects_bad_frames(value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--frames", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--frames" in err and len(err.strip().splitlines()) == 1
