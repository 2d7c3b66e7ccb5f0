"""``cowsim compare`` end to end, on a real local Ray instance.

The command runs as a subprocess, as a user starts it, on a small
scenario with short-lived sharing (transient data written by every
guest); each strategy runs the same guests with the same seed.
"""

import json

import pytest

from tests.cluster.test_run import cowsim, small_scenario


def transient_scenario(tmp_path):
    path = small_scenario(tmp_path, ticks=12, batch=4)
    text = path.read_text().replace(
        "free_pages_per_tick = 4",
        "free_pages_per_tick = 4\ntransient_pages = 256\ntransient_ticks = 4",
    )
    path.write_text(text)
    return path


def test_compare_runs_each_strategy_on_the_same_guests(tmp_path):
    scenario = transient_scenario(tmp_path)
    out = tmp_path / "cmp"
    proc = cowsim(
        "compare",
        str(scenario),
        "--out",
        str(out),
        "--strategies",
        "hints,ksm,sampling,blocks",
    )
    stdout, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    doc = json.loads((out / "compare.json").read_text())
    runs = doc["strategies"]
    assert list(runs) == ["hints", "ksm", "sampling", "blocks"]
    # Same guests, same seed: the same potential at the end.
    assert len({r["potential_bytes"] for r in runs.values()}) == 1
    for name, r in runs.items():
        assert 0 < r["saved_bytes"] <= r["potential_bytes"], name
        assert 0 <= r["caught_over_time"] <= 1
        assert r["daemon_cpu_seconds"] > 0
    # Hints hash nothing; scanners hash pages and cost more.
    assert runs["hints"]["pages_hashed"] == 0
    for name in ("ksm", "sampling", "blocks"):
        assert runs[name]["pages_hashed"] > 0
        assert (
            runs[name]["daemon_cpu_seconds"]
            > runs["hints"]["daemon_cpu_seconds"]
        )
    # Transient data is reported by guest hints: hints catch it at once.
    assert runs["hints"]["caught_over_time"] > runs["ksm"]["caught_over_time"]
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "compare.txt").read_text()
    assert table.strip() in stdout
    assert all(name in table for name in runs)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--strategies", "hints,magic"], "--strategies"),
        (["--strategies", ","], "--strategies"),
        (["--seed", "x"], "--seed"),
        (["--address", "127.0.0.1:1"], "--address 127.0.0.1:1"),
    ],
)
def test_bad_command_line_is_one_line_and_exit_2(tmp_path, args, needle):
    scenario = transient_scenario(tmp_path)
    proc = cowsim(
        "compare", str(scenario), "--out", str(tmp_path / "r"), *args
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err
    assert not (tmp_path / "r").exists()


def test_bad_detect_table_is_one_line(tmp_path):
    scenario = transient_scenario(tmp_path)
    text = scenario.read_text().replace(
        'memory = "32MiB"',
        'memory = "32MiB"\n[hosts.detect]\nblocks = { block_pages = 3 }',
    )
    scenario.write_text(text)
    proc = cowsim("compare", str(scenario), "--out", str(tmp_path / "r"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "hosts[0].detect.blocks" in err and "block_pages" in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_existing_output_directory_is_refused(tmp_path):
    scenario = transient_scenario(tmp_path)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep").write_text("x")
    proc = cowsim("compare", str(scenario), "--out", str(tmp_path / "r"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--out" in err
    assert (tmp_path / "r" / "keep").read_text() == "x"
