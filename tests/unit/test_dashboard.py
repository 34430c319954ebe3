"""The Grafana dashboard and the Prometheus alerts: generated file in sync, structure, every query parses
(promtool), names only metrics the service exports; alert unit tests and config pass promtool."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml
from harness import REPO, require

from lifelong.monitoring.dashboard import DATASOURCE_UID, build_dashboard, expand, queries, render
from lifelong.monitoring.metrics import Metrics
from lifelong.stream.errors import REASONS

DASHBOARD = REPO / "deploy" / "grafana" / "lifelong.json"
PROMETHEUS = REPO / "deploy" / "prometheus"
GRAFANA_PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"
METRIC_NAME = re.compile(r"\blifelong_[a-z0-9_]+")
SERIES_SUFFIXES = {"counter": ("_total",), "info": ("_info",), "histogram": ("_bucket", "_count", "_sum"),
                   "gauge": ("",)}


def all_metrics() -> Metrics:
    """Every family any role exports (the snapshot channel's included)."""
    from lifelong.service.snapshot_wire import REJECT_REASONS

    metrics = Metrics(REASONS)
    metrics.add_snapshot_channel(REJECT_REASONS)
    metrics.add_merge()
    metrics.add_keys()
    return metrics


def exported_series_names() -> set[str]:
    """Every series name the service can export, from the one registry of metrics.py."""
    names = set()
    for family in all_metrics().registry.collect():
        names.update(family.name + suffix for suffix in SERIES_SUFFIXES[family.type])
    return names


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_committed_dashboard_is_the_generators_output() -> None:
    assert DASHBOARD.read_text() == render(), \
        "run `python -m lifelong.monitoring.dashboard > deploy/grafana/lifelong.json`"


def test_dashboard_structure() -> None:
    board = build_dashboard()
    assert board["uid"] == "lifelong" and board["schemaVersion"] >= 39
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    (variable,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus" and variable["current"]["value"] == DATASOURCE_UID
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows == ["Throughput & lag", "Learning", "Stability gap", "Memory", "Serving",
                    "Snapshots (learner and predictors)", "Forgetting and sources",
                    "Learner replicas (scaleout.learning.mode merge)",
                    "Models per key (scaleout.learning.mode per_key)"]
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0, panel["title"]
        covered = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                   for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not covered & cells, f"panel {panel['title']!r} overlaps another"
        cells |= covered
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_dashboard_and_alerts_use_only_exported_metrics() -> None:
    exported = exported_series_names()
    exprs = [expr for _, _, expr in queries(build_dashboard())] + [r["expr"] for r in alert_rules()]
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert used, "no lifelong_ metric found in the queries"
    assert not used - exported, f"not exported by monitoring/metrics.py: {sorted(used - exported)}"


def test_dashboard_covers_every_exported_family() -> None:
    """A metric added to metrics.py gets a panel (build info aside, and process metrics but resident memory)."""
    used = {name for _, _, expr in queries(build_dashboard()) for name in METRIC_NAME.findall(expr)}
    families = {f.name: f.type for f in all_metrics().registry.collect()}
    missing = sorted(name for name, kind in families.items()
                     if not name.startswith("process_")
                     and not any(name + s in used for s in SERIES_SUFFIXES[kind]))
    assert not missing, f"metrics without a panel: {missing}"


def test_every_panel_query_parses(tmp_path: Path) -> None:
    rules = [{"record": f"dashboard:query_{n}:{ref.lower()}", "expr": expand(expr)}
             for n, (_, ref, expr) in enumerate(queries(build_dashboard()))]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = promtool("check", "rules", str(path), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(rules)} rules found" in checked.stdout


def test_alert_rules_are_valid_and_labelled() -> None:
    checked = promtool("check", "rules", "alerts.yml", cwd=PROMETHEUS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for rule in alert_rules():
        assert rule["alert"].startswith("Lifelong"), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_every_alert_links_to_its_runbook_section() -> None:
    book = (PROMETHEUS / "RUNBOOK.md").read_text()
    anchors = {"#" + line[3:].strip().lower() for line in book.splitlines() if line.startswith("## ")}
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("deploy/prometheus/RUNBOOK.md#"), rule["alert"]
        assert url[url.index("#"):] in anchors and url.endswith(rule["alert"].lower()), rule["alert"]


def test_alert_unit_tests_pass_and_cover_every_alert() -> None:
    tested = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    cases = [case for test in tested["tests"] for case in test["alert_rule_test"]]
    for name in (rule["alert"] for rule in alert_rules()):
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name}: no case where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{name}: no case where it stays quiet"
    result = promtool("test", "rules", "alerts_test.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_example_config_is_valid(tmp_path: Path) -> None:
    # From another folder: rule_files resolve relative to the config file, not the working directory.
    checked = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout


def test_grafana_provisioning_points_at_the_dashboards_datasource() -> None:
    sources = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["uid"] == DATASOURCE_UID and source["type"] == "prometheus"
    assert source["url"] == "http://127.0.0.1:9090"
    providers = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "lifelong.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert json.loads(DASHBOARD.read_text())["uid"] == "lifelong"


def test_expand_substitutes_the_rate_interval() -> None:
    expr = "sum(rate(lifelong_events_consumed_total[$__rate_interval]))"
    assert expand(expr, "5m") == "sum(rate(lifelong_events_consumed_total[5m]))"
