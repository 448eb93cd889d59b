"""The metric names docs/monitoring/ (alert rules, Grafana dashboard) query, for the tests that
check them against promtool and against a real scrape."""

from __future__ import annotations

import json
import re
from pathlib import Path

MONITORING = Path(__file__).resolve().parents[1] / "docs" / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERT_TESTS = MONITORING / "alerts.test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"

_NAME = re.compile(r"\b(hsmca_[a-z0-9_]+)")


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard (panel targets and template queries)."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def alert_exprs() -> list[str]:
    """Every ``expr:`` of the alert rules (the file is simple YAML: one expression a line)."""
    return [
        line.split("expr:", 1)[1].strip()
        for line in ALERTS.read_text().splitlines()
        if line.strip().startswith("expr:")
    ]


def metric_names(exprs: list[str]) -> set[str]:
    """The hsmca_* series names the expressions select (histogram/counter suffixes kept)."""
    return {m for e in exprs for m in _NAME.findall(e)}
