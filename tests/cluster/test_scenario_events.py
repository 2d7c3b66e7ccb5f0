"""Scenario keys for failures and migrations: shipped files load, and
the resolved form dumps and loads back equal."""

from pathlib import Path

import pytest

from cluster.scenario import dump_scenario, load_scenario
from cluster.study import shipped_path


@pytest.mark.parametrize("name", ["failure", "migration"])
def test_shipped_event_scenarios_round_trip(tmp_path, name):
    scenario = load_scenario(shipped_path(name))
    path = tmp_path / "dumped.toml"
    path.write_text(dump_scenario(scenario))
    again = load_scenario(path)
    assert again == scenario
    assert again.failures or again.migrations


def test_events_are_sorted_by_tick(tmp_path):
    text = Path(shipped_path("migration")).read_text()
    text += (
        '\n[[migrations]]\nguest = "web-1"\nto = "host-3"\nat_tick = 9\n'
        '\n[[migrations]]\nguest = "web-2"\nto = "host-3"\nat_tick = 3\n'
    )
    path = tmp_path / "s.toml"
    path.write_text(text)
    ticks = [m.at_tick for m in load_scenario(path).migrations]
    assert ticks == [3, 9, 20]
