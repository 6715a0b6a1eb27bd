"""deploy/observability/ checked offline: the Prometheus config, the alert rules and their
promtool unit tests, the Grafana dashboard and its provisioning.

With `promtool` on the PATH (Debian's `prometheus` package, which `make system-deps`
installs) the config, the rules and every dashboard query are also checked by Prometheus'
own parser, and the rules' unit tests run. Without it, the structural checks here still
hold the files together. That every metric used is really exported by a running service
is tests/e2e/test_observability_metrics.py.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability_config import (
    DASHBOARD_PROVIDERS,
    DATASOURCES,
    PROMETHEUS_CONFIG,
    ROOT,
    RULE_TESTS,
    RULES,
    dashboards,
    grafana_expr,
    is_ours,
    metric_names,
    panels,
    queries,
    rules,
    used_metric_names,
)

OPERATIONS = ROOT / "docs" / "operations.md"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")
SEVERITIES = {"warning", "critical"}


# ----------------------------------------------------------------------- metric names


def test_metric_names_are_told_apart_from_functions_labels_and_keywords() -> None:
    expr = (
        'sum by (group, topic) (increase(lc_a_total{group="x", le=~"1.*"}[5m])) > 0 or '
        "lc_b unless lc_b offset 5m or histogram_quantile(0.99, sum by (le) "
        "(rate(lc_c_bucket[$__rate_interval]))) / on (job) group_left (instance) up"
    )
    assert metric_names(grafana_expr(expr)) == {"lc_a_total", "lc_b", "lc_c_bucket", "up"}
    assert metric_names("max(lc_inventory_holds_outstanding) > 1e3") == {
        "lc_inventory_holds_outstanding"
    }


def defined_series() -> set[str]:
    """Every series name the services' metrics.py files define, with the suffixes
    prometheus_client exports (`_total` for counters, `_bucket/_sum/_count` histograms)."""
    suffixes = {
        "Counter": ("_total",),
        "Gauge": ("",),
        "Histogram": ("_bucket", "_sum", "_count"),
    }
    names = set()
    for path in (ROOT / "services").glob("*/metrics.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in suffixes
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names |= {f"{node.args[0].value}{s}" for s in suffixes[node.func.id]}
    return names


def test_every_service_metric_used_is_defined_in_a_metrics_module() -> None:
    defined = defined_series()
    assert "lc_consumer_lag" in defined and "lc_http_requests_total" in defined
    used = used_metric_names()
    ours = {name: where for name, where in used.items() if is_ours(name)}
    assert len(ours) >= 15
    unknown = {name: sorted(where) for name, where in ours.items() if name not in defined}
    assert not unknown, f"not defined in services/*/metrics.py: {unknown}"
    # The rest is Prometheus' `up` and redis_exporter's series.
    assert set(used) - set(ours) <= {
        "up",
        "redis_up",
        "redis_memory_used_bytes",
        "redis_memory_max_bytes",
    }


def test_every_query_has_balanced_brackets_and_selects_a_series() -> None:
    pairs = {")": "(", "]": "[", "}": "{"}
    for query in queries():
        stack: list[str] = []
        for char in re.sub(r'"(?:[^"\\]|\\.)*"', '""', query.expr):
            if char in "([{":
                stack.append(char)
            elif char in pairs:
                assert stack and stack.pop() == pairs[char], query
        assert not stack, query
        assert metric_names(query.expr), query
        assert "$" not in query.expr, f"unreplaced Grafana variable: {query}"


# ----------------------------------------------------------------------- Prometheus


def test_prometheus_loads_the_rules_next_to_it() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    matched = {
        path for pattern in config["rule_files"] for path in PROMETHEUS_CONFIG.parent.glob(pattern)
    }
    assert matched == {RULES}
    assert config["global"]["scrape_interval"] == "15s"


def alerts() -> dict[str, dict[str, Any]]:
    found = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    assert len(found) == len([r for r in rules() if "alert" in r]), "duplicate alert names"
    return found


def github_anchors(markdown: str) -> set[str]:
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_alert_is_labelled_explained_and_has_a_runbook_section() -> None:
    anchors = github_anchors(OPERATIONS.read_text())
    for name, rule in alerts().items():
        assert re.fullmatch(r"Lc[A-Za-z0-9]+", name), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        path, _, anchor = annotations["runbook"].partition("#")
        assert path == "docs/operations.md", name
        assert anchor in anchors, f"{name}: no section #{anchor} in docs/operations.md"


def _alert_using(metric: str, pattern: str = "") -> list[str]:
    return [
        name
        for name, rule in alerts().items()
        if metric in metric_names(rule["expr"]) and re.search(pattern, rule["expr"])
    ]


def test_the_alerts_cover_what_goes_wrong_on_sale_day() -> None:
    assert _alert_using("lc_consumer_lag")
    assert _alert_using("lc_live_orders_decision_seconds_bucket", r"histogram_quantile\(0\.99")
    assert _alert_using("lc_inventory_decision_seconds_bucket", r"histogram_quantile\(0\.99")
    assert _alert_using("lc_events_dead_lettered_total")
    assert _alert_using("lc_inventory_expiry_backlog")
    memory = _alert_using("redis_memory_used_bytes")
    assert memory and memory == _alert_using("redis_memory_max_bytes")
    assert _alert_using("lc_readiness_check")
    assert _alert_using("up")


def test_every_alert_has_a_promtool_unit_test_that_fires_it() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert [(RULE_TESTS.parent / f).resolve() for f in tests["rule_files"]] == [RULES]
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == set(alerts())
    for test in tests["tests"]:
        for case in test["alert_rule_test"]:
            for expected in case["exp_alerts"]:
                assert expected["exp_labels"]["severity"] in SEVERITIES


def promtool(*args: str) -> str:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@needs_promtool
def test_promtool_accepts_the_config_and_the_rules() -> None:
    out = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert "SUCCESS" in out
    out = promtool("check", "rules", str(RULES))
    assert f"SUCCESS: {len(rules())} rules found" in out


@needs_promtool
def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    assert "SUCCESS" in promtool("test", "rules", str(RULE_TESTS))


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    # promtool has no bare "parse this expression": each query becomes a recording rule.
    dashboard_queries = [q for q in queries() if not q.where.startswith("rule ")]
    assert dashboard_queries
    groups = [
        {
            "name": "dashboard",
            "rules": [
                {"record": f"dashboard:query_{i}", "expr": q.expr}
                for i, q in enumerate(dashboard_queries)
            ],
        }
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    assert f"SUCCESS: {len(dashboard_queries)} rules found" in promtool("check", "rules", str(path))


@needs_promtool
def test_promtool_would_catch_a_broken_expression(tmp_path: Path) -> None:
    path = tmp_path / "broken.rules.yml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x", "expr": "sum(("}]}]})
    )
    done = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(path)], capture_output=True, check=False
    )
    assert done.returncode != 0


# ----------------------------------------------------------------------- Grafana


def datasource_uid() -> str:
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus"
    uid: str = source["uid"]
    return uid


def test_dashboard_panels_use_the_provisioned_datasource_and_do_not_overlap() -> None:
    uid = datasource_uid()
    (dashboard,) = dashboards().values()
    assert dashboard["uid"] and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
            assert target["expr"].strip(), panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def _panel_with(dashboard: dict[str, Any], metric: str, pattern: str = "") -> list[str]:
    return [
        panel["title"]
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        if metric in metric_names(grafana_expr(target["expr"]))
        and re.search(pattern, target["expr"])
    ]


def test_dashboard_shows_what_sale_day_needs() -> None:
    (dashboard,) = dashboards().values()
    assert _panel_with(dashboard, "lc_live_orders_order_outcomes_total", r"by \(outcome\)")
    latency = "lc_live_orders_decision_seconds_bucket"
    for quantile in ("0.5", "0.9", "0.99"):
        assert _panel_with(dashboard, latency, rf"histogram_quantile\({quantile},")
    assert _panel_with(dashboard, "lc_consumer_lag", r"by \(group\)")
    assert _panel_with(dashboard, "lc_inventory_holds_outstanding")
    assert _panel_with(dashboard, "lc_notifier_clients", r"by \(kind\)")
    assert _panel_with(dashboard, "lc_notifier_open_picks", r"by \(warehouse_id\)")
    assert _panel_with(dashboard, "lc_inventory_expiry_backlog")
    assert _panel_with(dashboard, "redis_memory_used_bytes")


def test_grafana_provisioning_files_are_complete() -> None:
    datasources = yaml.safe_load(DATASOURCES.read_text())
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["isDefault"] is True
    assert source["access"] == "proxy"
    assert re.fullmatch(r"http://[\w-]+:\d+", source["url"])
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
