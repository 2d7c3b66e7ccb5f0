"""``cowsim run --prometheus-sd``: the discovery file and its bad input."""

from __future__ import annotations

import json

import pytest

from cluster.discovery import TargetFile, check_sd_dir
from dedup.errors import CowsimError
from tests.cluster.test_run import cowsim, small_scenario


def test_target_file_names_the_run_and_goes_away(tmp_path):
    target = TargetFile(tmp_path, "run-7", "127.0.0.1", 40123)
    target.write()
    group = json.loads((tmp_path / "run-7.json").read_text())
    assert group == [
        {"targets": ["127.0.0.1:40123"], "labels": {"instance": "run-7"}}
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["run-7.json"]
    target.remove()
    assert list(tmp_path.iterdir()) == []


def test_sd_dir_is_created_and_a_file_is_refused(tmp_path):
    check_sd_dir(tmp_path / "a" / "runs")
    assert (tmp_path / "a" / "runs").is_dir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(CowsimError, match="--prometheus-sd"):
        check_sd_dir(tmp_path / "f")


def test_bad_sd_dir_is_one_line_exit_2_and_no_results(tmp_path):
    (tmp_path / "f").write_text("x")
    proc = cowsim(
        "run",
        str(small_scenario(tmp_path)),
        "--results",
        str(tmp_path / "r"),
        "--prometheus-sd",
        str(tmp_path / "f"),
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "--prometheus-sd" in err and str(tmp_path / "f") in err
    assert not (tmp_path / "r").exists()
