"""The observability files of deploy/observability/ as data: the alert rules, the Grafana
dashboard's queries, and the metric names they use.

Shared by tests/unit/test_observability.py (the files hold together, promtool accepts
them) and tests/e2e/test_observability_metrics.py (every metric they use is exported).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
OBSERVABILITY = ROOT / "deploy" / "observability"
PROMETHEUS_CONFIG = OBSERVABILITY / "prometheus" / "prometheus.yml"
RULES = OBSERVABILITY / "prometheus" / "rules" / "livecommerce.yml"
RULE_TESTS = OBSERVABILITY / "prometheus" / "tests" / "alerts.test.yml"
DATASOURCES = OBSERVABILITY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = OBSERVABILITY / "grafana" / "provisioning" / "dashboards" / "livecommerce.yml"
DASHBOARDS = OBSERVABILITY / "grafana" / "dashboards"

# Series that come from Prometheus itself (`up`, per scrape target) or from redis_exporter
# (prefix `redis_`), not from our services.
PROMETHEUS_SERIES = frozenset({"up"})
EXPORTER_PREFIXES = ("redis_",)

# Grafana's interval variables, replaced by what Prometheus would see.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "30m"}

PROMQL_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "and",
        "or",
        "unless",
        "atan2",
        "inf",
        "nan",
        # Aggregation operators: also written `sum by (label) (...)`, not only `sum(...)`.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
# `by (a, b)`, `on(a)`, `group_left(a)`: label lists, not series.
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_DURATION = re.compile(r"^\d+[smhdwy]")


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects: identifiers that are not functions,
    keywords, label names (in matchers or by/on lists) or durations."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(r"\1 ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in PROMQL_KEYWORDS or _DURATION.match(name):
            continue
        names.add(name)
    return names


def grafana_expr(expr: str) -> str:
    """A dashboard query as Prometheus receives it."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


@dataclass(frozen=True)
class Query:
    where: str  # "rule LcConsumerLagHigh" or "panel 'Consumer lag per group'"
    expr: str


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def dashboards() -> dict[Path, dict[str, Any]]:
    return {path: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, also those nested in collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def queries() -> list[Query]:
    """Every PromQL expression of the rules and the dashboards (Grafana variables replaced)."""
    found = [Query(f"rule {r.get('alert') or r.get('record')}", r["expr"]) for r in rules()]
    for path, dashboard in dashboards().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                found.append(
                    Query(f"{path.name} panel {panel['title']!r}", grafana_expr(target["expr"]))
                )
    return found


def is_ours(name: str) -> bool:
    """A series one of the services must export (not Prometheus' own, not the exporter's)."""
    return name not in PROMETHEUS_SERIES and not name.startswith(EXPORTER_PREFIXES)


def used_metric_names() -> dict[str, set[str]]:
    """metric name -> where it is used, over the rules and the dashboards."""
    used: dict[str, set[str]] = {}
    for query in queries():
        for name in metric_names(query.expr):
            used.setdefault(name, set()).add(query.where)
    return used
