"""The coordinator scaling benchmark runs and reports ratios (no time
is asserted: the benchmark's numbers go to the README)."""

import ray

from cluster.scaling import format_rows, measure


def test_scaling_benchmark_reports_ratios():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        rows = measure((1, 2), ticks=4)
    finally:
        ray.shutdown()
    assert [r["hosts"] for r in rows] == [1, 2]
    assert rows[0]["growth_ratio"] == 1.0
    assert all(r["rounds"] == 3 for r in rows)
    assert all(r["cpu_seconds_per_tick"] > 0 for r in rows)
    assert "growth ratio" in format_rows(rows)
