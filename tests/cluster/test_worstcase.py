"""The two shipped worst-case scenarios, run as a user runs them.

After heavy sharing every guest writes every page at once. With the
repayment invariant held, the free pool and the FIFOs serve every fault;
with it broken on purpose, faults go unsatisfied, guests pause, and the
run still ends cleanly and says what happened.
"""

import json

from tests.cluster.test_run import cowsim


def run(name, tmp_path):
    results = tmp_path / name
    proc = cowsim(
        "run",
        name,
        "--results",
        str(results),
        "--metrics-port",
        "0",
        "--quiet",
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out, json.loads((results / "summary.json").read_text())


def test_worst_case_with_the_invariant_needs_no_pause(tmp_path):
    out, summary = run("worstcase", tmp_path)
    c = summary["cluster"]
    assert c["cow_faults_by_kind"]["unsatisfied"] == 0
    assert c["guests_paused"] == 0
    assert c["repaid_pages"] > 0  # the burst did need the FIFOs
    assert c["cow_faults_by_kind"]["nocopy"] > 0
    assert c["fifo_shortfall_pages"] == 0
    assert summary["events"] == []


def test_worst_case_with_the_invariant_broken_pauses_guests(tmp_path):
    out, summary = run("worstcase-broken", tmp_path)
    c = summary["cluster"]
    assert c["cow_faults_by_kind"]["unsatisfied"] > 0
    assert c["guests_paused"] > 0
    assert c["fifo_shortfall_pages"] > 0
    paused = {e["guest"] for e in summary["events"]}
    assert len(paused) == c["guests_paused"]
    assert "unsatisfied" in out and "paused" in out
