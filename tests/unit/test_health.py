"""Readiness freshness rules (ca/health.py) and the metric helpers' no-fail contract (ca/metrics.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ca import health, metrics
from ca.store.monitoring import AuditState, CaState, CrlState, ExpiryState, Snapshot

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CAS = (
    CaState(1, "root", NOW + timedelta(days=3650)),
    CaState(2, "issuing", NOW + timedelta(days=900)),
)


def _crl(ca: str, shard: int = 0, age: timedelta = timedelta(hours=1), left=timedelta(days=6)):
    return CrlState(ca, shard, NOW - age, NOW + left, 300)


def test_fresh_crls_of_every_ca_and_shard_are_ok():
    crls = [_crl("root"), _crl("issuing", 0), _crl("issuing", 1)]
    assert health.crl_problems(CAS, crls, {"root": 1, "issuing": 2}, NOW, None) == []


def test_a_missing_crl_and_one_past_next_update_are_named():
    crls = [_crl("root", left=timedelta(seconds=-1))]
    problems = health.crl_problems(CAS, crls, {"root": 1, "issuing": 2}, NOW, None)
    assert problems[0].startswith("root: the CRL is past its nextUpdate")
    assert problems[1:] == [
        "issuing shard 0: no CRL published",
        "issuing shard 1: no CRL published",
    ]


def test_a_crl_older_than_the_configured_age_fails_only_with_a_limit():
    crls = [_crl("root"), _crl("issuing", age=timedelta(hours=30))]
    assert health.crl_problems(CAS, crls, {}, NOW, None) == []
    (problem,) = health.crl_problems(CAS, crls, {}, NOW, timedelta(hours=25))
    assert problem.startswith("issuing: the CRL's thisUpdate") and "90000 s" in problem


def test_ocsp_problems_name_missing_expired_and_expiring_responders_and_stale_responses():
    from ca.store.monitoring import ResponderState

    responders = [ResponderState("root", NOW - timedelta(seconds=1))]
    problems = health.ocsp_problems(CAS, responders, 3, NOW, timedelta(0))
    assert problems == [
        "root: the OCSP responder certificate expired 2026-06-01T11:59:59Z",
        "issuing: no OCSP responder certificate",
        "3 pre-signed OCSP response(s) are stale",
    ]
    soon = [
        ResponderState("root", NOW + timedelta(hours=2)),
        ResponderState("issuing", NOW + timedelta(days=9)),
    ]
    assert health.ocsp_problems(CAS, soon, 0, NOW, timedelta(0)) == []
    (problem,) = health.ocsp_problems(CAS, soon, 0, NOW, timedelta(hours=24))
    assert problem.startswith("root: the OCSP responder certificate expires")
    assert health.summary([]) == "ok" and health.summary(["a", "b"]) == "a; b"


def test_metric_helpers_never_raise_whatever_they_are_given():
    # A metric that cannot be recorded must not fail an issuance or an OCSP answer.
    metrics.certificate_issued("p", -5)  # a counter refuses to go down: swallowed
    metrics.ocsp_answered("no-such-status", None)
    metrics.hsm_signed("ec", float("nan"))
    metrics.job_ran("job", False, 0.1)


def test_the_database_collector_reads_once_per_ttl_and_reports_a_failed_read():
    reads = []
    clock = [0.0]

    def read() -> Snapshot:
        reads.append(clock[0])
        if len(reads) == 2:
            raise RuntimeError("database down")
        return Snapshot(
            NOW,
            cas=CAS,
            crls=(_crl("issuing"),),
            expiry=(ExpiryState("server", {7: 1, 14: 2, 30: 2}, NOW + timedelta(days=3)),),
            audit=AuditState(10, 8, NOW - timedelta(seconds=42), 300),
        )

    collector = metrics.DatabaseCollector(read, ttl=5, clock=lambda: clock[0])
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in collector.collect()
        for s in family.samples
    }
    assert samples[("hsmca_database_up", ())] == 1
    assert samples[("hsmca_crl_age_seconds", (("ca", "issuing"), ("shard", "0")))] == 3600
    assert samples[("hsmca_certificates_expiring", (("days", "14"), ("profile", "server")))] == 2
    assert samples[("hsmca_audit_seconds_since_checkpoint", ())] == 42
    assert samples[("hsmca_acme_orders", (("state", "valid"),))] == 0
    clock[0] = 4.9
    list(collector.collect())
    assert len(reads) == 1  # cached
    clock[0] = 5.0
    down = {s.name: s.value for f in collector.collect() for s in f.samples}
    assert down == {"hsmca_database_up": 0}
    assert len(reads) == 2


def test_ocsp_answers_are_tallied_and_reach_the_metrics_at_the_next_flush():
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    metrics.ocsp_answered("good")  # the metrics exist from here on
    metrics.flush()
    before = sample("hsmca_ocsp_requests_total", status="revoked")
    bucket = sample("hsmca_ocsp_response_age_seconds_bucket", le="300.0")
    count = sample("hsmca_ocsp_response_age_seconds_count")
    metrics.ocsp_answered("revoked", 120.0)
    metrics.ocsp_answered("revoked", 7200.0)
    metrics.ocsp_answered("malformedRequest")
    metrics.flush()
    assert sample("hsmca_ocsp_requests_total", status="revoked") == before + 2
    assert sample("hsmca_ocsp_response_age_seconds_bucket", le="300.0") == bucket + 1
    assert sample("hsmca_ocsp_response_age_seconds_count") == count + 2
