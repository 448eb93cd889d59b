"""``/metrics`` and ``/readyz`` of a real ``hsmca serve`` (2 workers per listener and the scheduler).

Certificates are issued over the REST API (HTTPS workers) and the scrape is read from the
plain-HTTP listener, whose workers issued nothing: the counts it shows are the sum of every
process's metric files in ``DATA_DIR/run/metrics``.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from helpers import make_csr
from monitoring_names import alert_exprs, dashboard_exprs, metric_names
from prometheus_client.parser import text_string_to_metric_families
from serve import Server, run, start_server, wait_until

from web import create_app

pytestmark = [pytest.mark.hsm, pytest.mark.db]

PROFILES = """
[profiles.metrics]
description = "certificates this test counts"
dns_names = [".metrics.test"]

[profiles.short]
description = "short-lived certificates"
dns_names = [".short.test"]
validity_days = 3
"""


@dataclass
class Appliance:
    server: Server
    data: Path
    root: Path
    token: str

    def post(self, path: str, body: dict[str, object]) -> requests.Response:
        return requests.post(
            f"{self.server.https}{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
            verify=str(self.root),
            timeout=60,
        )

    def issue(self, name: str, profile: str = "metrics", days: int | None = None) -> dict:
        body: dict[str, object] = {"csr": make_csr([name]).decode(), "profile": profile}
        if days is not None:
            body["validity_days"] = days
        resp = self.post("/api/v1/certificates", body)
        assert resp.status_code == 201, resp.text
        return dict(resp.json())


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _init(data: Path) -> tuple[Path, str]:
    done = run(data, "init")
    assert done.returncode == 0, done.stderr
    with open(data / "hsmca.toml", "a") as f:
        f.write(PROFILES)
    root = data / "root.pem"
    root.write_text(run(data, "ca", "show", "root", "--pem").stdout)
    added = run(data, "client", "add", "ops", "--role", "enroll", "--role", "revoke")
    assert added.returncode == 0, added.stderr
    return root, added.stdout.strip()


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    data = tmp_path_factory.mktemp("metrics") / "data"
    root, token = _init(data)
    # No caching of the database-derived gauges, so each scrape shows the state of the moment.
    env = {"HSMCA_MONITORING_METRICS_CACHE_SECONDS": "0"}
    server = start_server(data, tmp_path_factory.mktemp("metrics-log"), env=env)
    try:
        server.workers_up()
        yield Appliance(server, data, root, token)
    finally:
        server.stop()


def _files_counting(data: Path, needle: bytes) -> int:
    return sum(needle in f.read_bytes() for f in (data / "run" / "metrics").glob("counter_*.db"))


def test_the_issued_counter_sums_certificates_issued_by_every_worker(appliance: Appliance):
    issued = 0
    # Concurrent requests spread over both HTTPS workers; go on until two of them have issued.
    with ThreadPoolExecutor(4) as pool:
        for round_ in range(10):
            names = [f"w{round_}-{i}.metrics.test" for i in range(6)]
            list(pool.map(appliance.issue, names))
            issued += len(names)
            if _files_counting(appliance.data, b'"profile": "metrics"') >= 2:
                break
    assert _files_counting(appliance.data, b'"profile": "metrics"') >= 2
    for _ in range(3):  # whichever plain-HTTP worker answers, the sum is the same
        samples = scrape(appliance.server.http)
        assert value(samples, "hsmca_certificates_issued_total", profile="metrics") == issued
    assert value(samples, "hsmca_issuance_duration_seconds_count") >= issued
    assert value(samples, "hsmca_hsm_sign_duration_seconds_count", key_type="ec") >= issued


def test_a_denial_is_counted_with_its_profile_and_broken_rule(appliance: Appliance):
    before = scrape(appliance.server.http)
    body = {"csr": make_csr(["www.elsewhere.test"]).decode(), "profile": "metrics"}
    assert appliance.post("/api/v1/certificates", body).status_code == 403
    unknown = {"csr": make_csr(["a.metrics.test"]).decode(), "profile": "no-such-profile"}
    assert appliance.post("/api/v1/certificates", unknown).status_code in (400, 404)
    after = scrape(appliance.server.http)
    name = "hsmca_certificates_denied_total"
    for labels in (
        {"profile": "metrics", "reason": "dns.not_allowed"},
        {"profile": "other", "reason": "unknownProfile"},
    ):
        assert value(after, name, **labels) - value(before, name, **labels) == 1, labels


def test_expiry_gauges_count_short_lived_certificates_by_window(appliance: Appliance):
    made = [appliance.issue(f"s{d}.short.test", "short", d) for d in (3, 10, 20)]
    samples = scrape(appliance.server.http)
    expiring = {
        days: value(samples, "hsmca_certificates_expiring", profile="short", days=days)
        for days in ("7", "14", "30")
    }
    assert expiring == {"7": 1, "14": 2, "30": 3}
    soonest = x509.load_pem_x509_certificate(made[0]["certificate"].encode()).not_valid_after_utc
    got = value(samples, "hsmca_certificates_soonest_expiry_timestamp_seconds", profile="short")
    assert got == soonest.timestamp()
    assert value(samples, "hsmca_certificates_expiring", profile="client", days="30") == 0


def _ocsp_request(leaf: x509.Certificate, issuer: x509.Certificate) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)


def test_every_metric_the_dashboard_and_the_alerts_use_is_in_a_real_scrape(
    appliance: Appliance,
):
    made = appliance.issue("revoked.metrics.test")
    leaf = x509.load_pem_x509_certificate(made["certificate"].encode())
    issuer = x509.load_pem_x509_certificates(made["chain"].encode())[0]
    resp = appliance.post(f"/api/v1/certificates/{made['serial']}/revoke", {"reason": "superseded"})
    assert resp.status_code == 200, resp.text
    for _ in range(3):
        answer = requests.post(
            f"{appliance.server.http}/ocsp",
            data=_ocsp_request(leaf, issuer),
            headers={"Content-Type": "application/ocsp-request"},
            timeout=30,
        )
        assert ocsp.load_der_ocsp_response(answer.content).certificate_status.name == "REVOKED"
    crl = urllib.request.urlopen(f"{appliance.server.http}/crl/issuing.crl", timeout=30).read()
    x509.load_der_x509_crl(crl)
    denied = {"csr": make_csr(["x.elsewhere.test"]).decode(), "profile": "metrics"}
    assert appliance.post("/api/v1/certificates", denied).status_code == 403

    def revoked_answers_counted() -> bool:  # OCSP tallies reach the metric files within 1 s
        return (
            value(scrape(appliance.server.http), "hsmca_ocsp_requests_total", status="revoked") >= 3
        )

    wait_until(revoked_answers_counted, 10, "the OCSP answers to be counted")
    samples = scrape(appliance.server.http)
    assert value(samples, "hsmca_certificates_revoked_total", reason="superseded") == 1
    assert value(samples, "hsmca_ocsp_response_age_seconds_count") >= 3
    assert value(samples, "hsmca_crl_size_bytes", ca="issuing", shard="0") >= 200
    assert value(samples, "hsmca_database_up") == 1
    assert (
        value(samples, "hsmca_audit_chain_head_seq")
        >= value(samples, "hsmca_audit_checkpoint_seq")
        > 0
    )
    wait_until(
        lambda: (
            value(
                scrape(appliance.server.http),
                "hsmca_scheduler_job_runs_total",
                job_name="publish-crls",
            )
            > 0
        ),
        30,
        "the scheduler's first runs",
    )
    samples = scrape(appliance.server.http)
    exported = {name for name, _ in samples}
    used = metric_names(dashboard_exprs()) | metric_names(alert_exprs())
    assert used, "no metric names found in docs/monitoring"
    assert sorted(used - exported) == []
    # The HTTPS listener's /metrics shows the same multiprocess sums.
    tls = requests.get(f"{appliance.server.https}/metrics", verify=str(appliance.root), timeout=30)
    assert tls.status_code == 200 and "hsmca_certificates_issued_total" in tls.text


def _readyz(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_readyz_names_a_crl_past_next_update_and_stale_ocsp_responses(sqlite_ca_env):
    """In-process, with the clock moved past the CRL's and the responses' nextUpdate."""
    from crl.publisher import publish
    from ocsp import set_up

    auth = sqlite_ca_env.auth
    for name in ("root", "issuing"):
        publish(auth, name, actor="test")
    set_up(auth, actor="test")
    issue_csr = make_csr(["ready.corp.test"])
    from ca.issuance import IssuanceRequest, issue
    from ocsp.presign import run_once

    issue(auth, IssuanceRequest(issue_csr, "server", "test"))
    run_once(auth, auth.now())

    def app_at(offset: timedelta):
        class Later:
            def now(self):
                return auth.clock.now() + offset

        def factory(cfg):
            return replace(auth, clock=Later(), _issuers={})

        return create_app(sqlite_ca_env.config, authority_factory=factory).test_client()

    ok = app_at(timedelta(0)).get("/readyz")
    assert ok.status_code == 200, ok.json
    assert ok.json["checks"] == {"database": "ok", "hsm": "ok", "crl": "ok", "ocsp": "ok"}
    late = app_at(timedelta(days=8)).get("/readyz")  # CRLs: 7 days; OCSP responses: 4 days
    assert late.status_code == 503 and late.headers["Retry-After"] == "5"
    assert late.json["failed"] == ["crl", "ocsp"]
    assert "issuing: the CRL is past its nextUpdate" in late.json["checks"]["crl"]
    assert "pre-signed OCSP response(s) are stale" in late.json["checks"]["ocsp"]
    assert late.json["checks"]["database"] == "ok"


def test_readyz_fails_on_a_crl_older_than_the_limit_and_a_restart_empties_the_metrics(
    tmp_path: Path,
):
    data = tmp_path / "data"
    _init(data)
    server = start_server(data, tmp_path, env={"HSMCA_MONITORING_CRL_MAX_AGE_SECONDS": "1"})
    try:
        time.sleep(1.5)  # the CRLs of init are now older than the limit
        status, body = _readyz(server.http)
        assert status == 503
        assert body["failed"] == ["crl"], body
        assert "older than 1 s" in body["checks"]["crl"] and body["checks"]["ocsp"] == "ok"
        assert value(scrape(server.http), "hsmca_crl_age_seconds", ca="issuing", shard="0") > 1
    finally:
        assert server.stop() == 0
    metrics_dir = data / "run" / "metrics"
    left = sorted(p.name for p in metrics_dir.iterdir())
    assert left, "the first run wrote no metric files"
    stale = metrics_dir / "counter_999999.db"
    stale.write_bytes((metrics_dir / left[0]).read_bytes())
    server = start_server(data, tmp_path)
    try:
        assert not stale.exists()
        status, body = _readyz(server.http)
        assert status == 200 and body["status"] == "ok", body
    finally:
        assert server.stop() == 0


def test_the_monitoring_reads_answer_alike_on_sqlite_and_postgresql(ca_env):
    from ca.issuance import IssuanceRequest, issue
    from ca.store import monitoring
    from crl.publisher import publish
    from ocsp import set_up

    auth = ca_env.auth
    publish(auth, "issuing", actor="test")
    set_up(auth, actor="test")
    made = issue(auth, IssuanceRequest(make_csr(["soon.corp.test"]), "server", "t", 10))
    now = auth.now()
    snap = monitoring.snapshot(auth.db, now, tuple(auth.config.profiles), 300)
    assert [c.name for c in snap.cas] == ["root", "issuing"]
    (crl,) = [c for c in snap.crls if c.ca == "issuing"]
    assert crl.shard == 0 and crl.size_bytes > 200 and crl.next_update > now
    assert {r.ca for r in snap.responders} == {"root", "issuing"}
    assert snap.stale_ocsp_responses == 0
    assert monitoring.stale_ocsp_responses(auth.db, now + timedelta(days=5)) >= 1
    server = next(e for e in snap.expiry if e.profile == "server")
    assert server.within == {7: 0, 14: 1, 30: 1}
    assert server.soonest == made.certificate.not_valid_after_utc
    assert snap.acme_orders == {}
    assert snap.audit.head_seq > 0 and snap.audit.since is not None


def test_hsm_failures_are_counted_by_operation_and_pkcs11_error(softhsm_token):
    from pkcs11 import exceptions as p11e
    from prometheus_client import REGISTRY

    from ca.errors import HsmUnavailable
    from ca.keys.pkcs11 import Pkcs11KeyStore

    def errors(kind: str) -> float:
        labels = {"operation": "sign", "kind": kind}
        return REGISTRY.get_sample_value("hsmca_hsm_errors_total", labels) or 0.0

    token, pin = softhsm_token
    store = Pkcs11KeyStore(token.module, {"hsmca": lambda: pin}, pool_size=1)
    sessions = store.sessions("hsmca")
    assert sessions.run(lambda s: "fine", "sign") == "fine"
    lost, device = errors("sessionLost"), errors("DeviceError")

    def broken(_session: object) -> None:
        raise p11e.DeviceError()

    with pytest.raises(HsmUnavailable):
        sessions.run(broken, "sign")  # lost, re-opened, retried, lost again
    assert errors("sessionLost") == lost + 1
    assert errors("DeviceError") == device + 1
    store.close()
