"""The shipped Grafana and Prometheus files, checked without a server.

promtool (Debian's ``prometheus`` package) checks the config and the
rules and runs the rules' unit tests; the rest reads the files.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from cluster.metrics import METRICS
from tests.dashboards.prom import MISSING, PROMTOOL, dashboard_queries

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "dashboards" / "grafana"
PROM = ROOT / "dashboards" / "prometheus"
UIDS = {"cowsim-overview", "cowsim-host", "cowsim-detection"}
# Grafana unit ids used for counts, bytes, rates, ratios and seconds.
UNITS = {"short", "bytes", "Bps", "ops", "cps", "percentunit", "s"}
DS = {"type": "prometheus", "uid": "${datasource}"}

promtool = pytest.mark.skipif(not PROMTOOL, reason=MISSING)


def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in GRAFANA.glob("*.json")}


def rules() -> list[dict]:
    groups = yaml.safe_load((PROM / "cowsim.rules.yml").read_text())
    return [r for g in groups["groups"] for r in g["rules"]]


def run_promtool(*args: str) -> str:
    proc = subprocess.run(
        [PROMTOOL, *args], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@promtool
def test_promtool_checks_config_and_rules():
    out = run_promtool(
        "check", "config", "dashboards/prometheus/prometheus.yml"
    )
    assert "SUCCESS" in out
    out = run_promtool(
        "check", "rules", "dashboards/prometheus/cowsim.rules.yml"
    )
    assert f"SUCCESS: {len(rules())} rules found" in out


@promtool
def test_promtool_runs_the_rules_unit_tests():
    out = run_promtool(
        "test", "rules", "dashboards/prometheus/cowsim.rules.test.yml"
    )
    assert "SUCCESS" in out


def test_every_rule_has_a_unit_test():
    tests = yaml.safe_load((PROM / "cowsim.rules.test.yml").read_text())
    tested = {
        t["expr"] for case in tests["tests"] for t in case["promql_expr_test"]
    }
    assert {r["record"] for r in rules()} <= tested


def test_rule_names_are_level_metric_operations():
    for rule in rules():
        level, metric, ops = rule["record"].split(":")
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", level), rule["record"]
        assert re.fullmatch(r"cowsim_[a-z_]+", metric), rule["record"]
        assert not metric.endswith("_total"), rule["record"]
        assert re.fullmatch(r"[a-z0-9_]+", ops), rule["record"]
        if "rate(" in rule["expr"]:
            assert "rate1m" in ops and "[1m]" in rule["expr"], rule
        # The level names every label the result keeps besides job.
        kept = re.search(r"without \(([^)]*)\)", rule["expr"])
        if kept:
            for label in kept.group(1).split(", "):
                assert label not in level.split("_"), rule["record"]


def test_dashboards_have_stable_uids_and_a_datasource_variable():
    boards = dashboards()
    assert {d["uid"] for d in boards.values()} == UIDS
    for name, d in boards.items():
        assert f"{d['uid']}.json" == name
        assert d["id"] is None
        text = (GRAFANA / name).read_text()
        assert "${DS_" not in text and "__inputs" not in text
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for var in variables.values():
            if var["type"] == "query":
                assert var["datasource"] == DS


def test_every_panel_has_a_unit_and_uses_the_variable_datasource():
    for name, d in dashboards().items():
        for panel in d["panels"]:
            if panel["type"] == "row":
                continue
            where = f"{name}: {panel['title']}"
            assert panel["datasource"] == DS, where
            assert panel["fieldConfig"]["defaults"]["unit"] in UNITS, where
            assert panel["description"], where
            assert panel["targets"], where
            for target in panel["targets"]:
                assert target["datasource"] == DS, where


def test_rate_windows_follow_grafana():
    for d in dashboards().values():
        for title, expr in dashboard_queries(d):
            windows = re.findall(r"\[([^\]]+)\]", expr)
            assert windows == ["$__rate_interval"] * len(windows), title
            uses = len(re.findall(r"\b(?:rate|irate|increase)\(", expr))
            assert uses == len(windows), title


def test_panels_are_laid_out_without_overlap():
    for name, d in dashboards().items():
        cells = set()
        for panel in d["panels"]:
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24, name
            mine = {
                (x, y)
                for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])
            }
            assert not cells & mine, f"{name}: {panel['title']}"
            cells |= mine
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids))


def test_every_metric_is_used_by_a_panel_or_a_rule():
    exprs = [e for d in dashboards().values() for _, e in dashboard_queries(d)]
    exprs += [r["expr"] for r in rules()]
    used = set(re.findall(r"\bcowsim_\w+", " ".join(exprs)))
    names = {"cowsim_tick", "cowsim_sim_time_seconds"}
    for m in METRICS:
        suffix = "_total" if m.kind == "counter" else ""
        names |= {
            f"cowsim_{m.name}{suffix}",
            f"cowsim_cluster_{m.name}{suffix}",
        }
    assert names - used == set()
    assert used - names == set()


def test_overview_host_and_detection_cover_what_they_promise():
    boards = {d["uid"]: d for d in dashboards().values()}

    def text(uid):
        return " ".join(e for _, e in dashboard_queries(boards[uid]))

    overview = text("cowsim-overview")
    for name in ("saved_bytes", "potential_saved_bytes"):
        assert f"cowsim_cluster_{name}" in overview
    assert "by (job, instance, host)" in overview
    host = text("cowsim-host")
    for name in ("shared_frames", "cow_faults_total", "hints_total"):
        assert f"cowsim_{name}" in host
    for name in ("bonus_pages", "fifo_pages", "fifo_shortfall_pages"):
        assert f"cowsim_{name}" in host
    detection = text("cowsim-detection")
    assert "by (job, instance, source)" in detection
    assert 'kind="mismatch"' in detection


def test_provisioning_matches_the_prometheus_config():
    prom = yaml.safe_load((PROM / "prometheus.yml").read_text())
    ds_file = GRAFANA / "provisioning" / "datasources" / "cowsim.yml"
    (ds,) = yaml.safe_load(ds_file.read_text())["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["url"].startswith("http://127.0.0.1:")
    # $__rate_interval is computed from the data source's scrape interval.
    assert ds["jsonData"]["timeInterval"] == prom["global"]["scrape_interval"]
    db_file = GRAFANA / "provisioning" / "dashboards" / "cowsim.yml"
    (provider,) = yaml.safe_load(db_file.read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "$COWSIM_DASHBOARDS"


def test_prometheus_config_scrapes_loopback_only():
    prom = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["cowsim"]["static_configs"] == [
        {"targets": ["127.0.0.1:9691"]}
    ]
    assert jobs["cowsim_runs"]["file_sd_configs"] == [
        {"files": ["runs/*.json"]}
    ]
    assert prom["rule_files"] == ["cowsim.rules.yml"]


def _unknown_keys(ours, back, path="") -> list[str]:
    """Keys of ``ours`` that a round trip through the schema dropped."""
    if isinstance(ours, dict) and isinstance(back, dict):
        out = [f"{path}.{k}" for k in ours if k not in back]
        for k in ours.keys() & back.keys():
            out += _unknown_keys(ours[k], back[k], f"{path}.{k}")
        return out
    if isinstance(ours, list) and isinstance(back, list):
        assert len(ours) == len(back), path
        return [
            key
            for a, b in zip(ours, back, strict=True)
            for key in _unknown_keys(a, b, f"{path}[]")
        ]
    return []


def test_dashboards_fit_grafanas_dashboard_schema():
    """Every key is one of Grafana's schema types, read back the same.

    grafana-foundation-sdk's types are generated from Grafana's own
    dashboard schema. ``definition`` (the text Grafana shows for a query
    variable) and a null ``id`` are the only keys its model leaves out.
    """
    sdk = pytest.importorskip("grafana_foundation_sdk")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    assert sdk
    for name, d in dashboards().items():
        model = Dashboard.from_json(d)
        back = json.loads(json.dumps(model, cls=JSONEncoder))
        unknown = set(_unknown_keys(d, back))
        assert unknown <= {".id", ".templating.list[].definition"}, name
        assert back["uid"] == d["uid"]
        assert [p["type"] for p in back["panels"]] == [
            p["type"] for p in d["panels"]
        ]


def test_every_rule_is_documented():
    text = (ROOT / "dashboards" / "README.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)` \|", text, re.M))
    assert documented == {r["record"] for r in rules()}
