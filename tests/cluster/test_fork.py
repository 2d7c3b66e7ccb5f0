"""Forking end to end: the shipped scenario, its memory curve, and the
scenario keys for stubs and clones."""

import json
from pathlib import Path

import pytest

from cluster.coordinator import place
from cluster.plots import main as plots_main
from cluster.plots import read_series
from cluster.scenario import ScenarioError, load_scenario
from cluster.study import shipped_path
from tests.cluster.test_run import run_shipped, small_scenario


def test_shipped_fork_scenario_and_its_curve(tmp_path):
    results = tmp_path / "out"
    done = run_shipped("fork", results)
    assert done.returncode == 0, done.stderr
    assert "fork" in done.stdout
    summary = json.loads((results / "summary.json").read_text())
    clones, booted = summary["hosts"]
    assert len(clones["guests"]) == 9 and clones["guests"][0] == "stub"
    assert clones["saved_by_source_bytes"]["fork"] > 0
    assert booted["saved_by_source_bytes"]["fork"] == 0

    series = read_series(results)
    first = {
        h: int(rows[0]["machine_bytes_used"]) for h, rows in series.items()
    }
    last = {
        h: int(rows[-1]["machine_bytes_used"]) for h, rows in series.items()
    }
    # Clones start far below the booted guests and diverge towards them.
    assert first["host-0"] < first["host-1"] / 2
    assert last["host-0"] > 3 * first["host-0"]
    fork = [int(r["saved_fork_bytes"]) for r in series["host-0"]]
    assert fork == sorted(fork, reverse=True)

    out = tmp_path / "curve.png"
    assert plots_main([str(results), str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert plots_main([str(tmp_path)]) == 2


def with_guests(tmp_path: Path, extra: str) -> Path:
    path = small_scenario(tmp_path)
    path.write_text(path.read_text() + extra)
    return path


STUB = (
    '\n[[guests]]\nname = "stub"\nimage = "a"\nmemory = "2MiB"\nstub = true\n'
)


def clone(**fields) -> str:
    base = {"name": '"cl"', "image": '"a"', "memory": '"2MiB"'}
    base |= {"clone_of": '"stub"', "count": "2"} | fields
    body = "".join(f"{k} = {v}\n" for k, v in base.items())
    return "\n[[guests]]\n" + body


def test_clones_are_placed_with_their_stub(tmp_path):
    scenario = load_scenario(with_guests(tmp_path, STUB + clone()))
    placement = place(scenario)
    assert placement["cl-0"] == placement["cl-1"] == placement["stub"]


@pytest.mark.parametrize(
    "extra, key",
    [
        (clone(), "guests[3].clone_of"),
        (STUB + clone(clone_of='"ga-0"'), "guests[4].clone_of"),
        (STUB + clone(memory='"4MiB"'), "guests[4].memory"),
        (STUB + clone(image='"b"'), "guests[4].image"),
        (STUB + clone(stub="true"), "guests[4].stub"),
        (
            STUB.replace("stub = true", "stub = true\ncount = 2"),
            "guests[3].count",
        ),
        (STUB.replace("stub = true", "stub = 1"), "guests[3].stub"),
        (
            STUB.replace("stub = true", "warmup_ticks = -1"),
            "guests[3].warmup_ticks",
        ),
    ],
)
def test_bad_stub_and_clone_keys(tmp_path, extra, key):
    path = with_guests(tmp_path, extra)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}: {key}:"), str(info.value)


def test_a_stub_host_without_room_for_clones_is_refused(tmp_path):
    path = with_guests(tmp_path, STUB + clone(count="4"))
    with pytest.raises(ScenarioError, match="cannot place clone"):
        place(load_scenario(path))


def test_fork_scenario_round_trips(tmp_path):
    from cluster.scenario import dump_scenario

    scenario = load_scenario(shipped_path("fork"))
    path = tmp_path / "fork.toml"
    path.write_text(dump_scenario(scenario))
    assert load_scenario(path) == scenario
