"""docs/monitoring: the alert rules pass promtool (syntax and their unit tests) and the Grafana
dashboard is valid JSON whose every panel queries hsmca metrics. That every name they use is
really exported is checked against a live server in tests/integration/test_metrics.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from monitoring_names import (
    ALERT_TESTS,
    ALERTS,
    DASHBOARD,
    MONITORING,
    dashboard_exprs,
    metric_names,
)


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            raise AssertionError("promtool is missing (Debian package prometheus, tests/run.sh)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return found


def test_promtool_accepts_the_alert_rules():
    done = subprocess.run(
        [_promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 10 rules found" in done.stdout


def test_the_alert_rules_fire_as_their_unit_tests_say():
    done = subprocess.run(
        [_promtool(), "test", "rules", str(ALERT_TESTS.name)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=MONITORING,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_alerts_cover_what_an_operator_must_be_paged_for():
    text = ALERTS.read_text()
    for alert in (
        "HsmcaTargetDown",
        "HsmcaCertificateExpiringSoon",
        "HsmcaCrlStale",
        "HsmcaOcspStale",
        "HsmcaHsmErrors",
        "HsmcaAuditCheckpointOverdue",
        "HsmcaSchedulerJobFailing",
    ):
        assert f"alert: {alert}\n" in text


def test_the_dashboard_is_grafana_json_whose_every_panel_queries_hsmca_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "hsmca-overview"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert any("hsmca_" in t["expr"] for t in panel["targets"]), panel["title"]
    used = metric_names(dashboard_exprs())
    for family in ("issued", "denied", "revoked", "crl_age", "ocsp_requests", "hsm_sign"):
        assert any(family in name for name in used), family
