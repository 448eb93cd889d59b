"""Issuance: the one path every front end (CLI, REST, ACME) uses.

Step 1  check the CSR and the profile (pure; a denial is audited and nothing else changes).
Step 2  reserve a serial and record the intent with its audit event, and commit.
Step 3  sign once in the HSM and verify the signature against the issuer's public key.
Step 4  store the certificate with its audit event, and commit; only then is it returned.

A crash between any two steps leaves a pending intent: :func:`recover_intents` resolves it at
start-up (abandoned, audited; the serial is never used again). A certificate is stored only if
its intent is still pending in the same transaction, so a late writer cannot resurrect an
abandoned serial.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca import metrics
from ca.authority import Authority, LoadedIssuer, fingerprint, serial_hex
from ca.csr import CsrFacts, check_csr
from ca.errors import (
    CAError,
    ConfigError,
    HsmKeyNotFound,
    HsmUnavailable,
    KeyMismatch,
    NotFound,
    PolicyDenied,
    StoreError,
)
from ca.policy import Decision, Requester, decide, name_constraints_of, violations_text
from ca.profiles import Profile
from ca.store.crls import inactive_cas
from ca.x509build import build_leaf, leaf_validity

#: Called with the name of each step reached ("intent", "signed", "stored"): crash tests hook here.
StepHook = Callable[[str], None]


@dataclass(frozen=True)
class IssuanceRequest:
    """What a front end asks for."""

    csr: bytes
    profile: str
    requester: str
    validity_days: int | None = None
    #: The API client asking, whose own restrictions apply; ``None``: the local operator (CLI).
    client: Requester | None = None
    #: What the requester says about the certificate (owner, team, contact, service, ...).
    metadata: Mapping[str, str] | None = None
    #: The approved enrollment request this issuance completes (dual control), and its approver.
    request_id: str | None = None
    approved_by: str | None = None


@dataclass(frozen=True)
class IssuedCertificate:
    """A stored and audited certificate with the chain to hand out beside it."""

    serial: str
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    profile: str
    issuer: str
    #: As stored: SANs ("dns:…", "ip:…", …), key type, DER and its SHA-256.
    sans: tuple[str, ...] = ()
    key_type: str = ""
    der: bytes = b""
    fingerprint_sha256: str = ""

    def pem_chain(self) -> bytes:
        """Leaf followed by the intermediates (RFC 8555 ``application/pem-certificate-chain``)."""
        enc = serialization.Encoding.PEM
        return b"".join(c.public_bytes(enc) for c in (self.certificate, *self.chain))


@dataclass(frozen=True)
class _Prepared:
    request: IssuanceRequest
    facts: CsrFacts
    profile: Profile
    issuer: LoadedIssuer
    not_before: datetime
    not_after: datetime
    decision: Decision


def new_serial() -> int:
    """A positive 128-bit serial from ``secrets`` (RFC 5280 allows up to 20 octets)."""
    while True:
        serial = secrets.randbits(128)
        if serial >= 1 << 64:  # keeps at least 64 bits of entropy visible in every serial
            return serial


def _check(auth: Authority, req: IssuanceRequest, now: datetime) -> _Prepared:
    """Step 1: every check that needs no state change. Raises a CAError naming the problem."""
    profile = auth.profile(req.profile)
    facts = check_csr(req.csr)
    issuer = auth.issuer(profile.issuer)
    requester = req.client or Requester.operator(req.requester)
    decision = decide(
        facts,
        profile,
        requester,
        now,
        validity_days=req.validity_days,
        issuer_constraints=name_constraints_of(issuer.certificate),
    )
    if not decision.allowed:
        raise PolicyDenied(
            violations_text(decision.violations), decision.violations, decision.audit_details()
        )
    not_before, not_after = leaf_validity(profile, now, issuer.certificate, decision.validity)
    return _Prepared(req, facts, profile, issuer, not_before, not_after, decision)


def check_request(auth: Authority, req: IssuanceRequest) -> _Prepared:
    """Step 1 alone (for requests kept for approval): the checks, a denial audited and raised."""
    try:
        return _check(auth, req, auth.now())
    except _OUTAGES:
        raise
    except CAError as exc:
        _deny(auth, req, exc)
        raise


_OUTAGES = (StoreError, HsmUnavailable, KeyMismatch, ConfigError, HsmKeyNotFound)


def _deny(auth: Authority, req: IssuanceRequest, error: CAError) -> None:
    """Audit a denial. The request is identified by a hash of whatever bytes were sent."""
    details: dict[str, Any] = {
        "profile": req.profile,
        "reason": str(error),
        "error": error.kind,
        "request_bytes": len(req.csr),
        "request_sha256": hashlib.sha256(req.csr).hexdigest(),
    }
    if isinstance(error, PolicyDenied):
        details.update(error.details)
    elif req.profile in auth.profiles:
        details["profile_sha256"] = auth.profiles[req.profile].sha256
    if req.request_id:
        details["request_id"] = req.request_id
        details["approved_by"] = req.approved_by
    auth.audit(req.requester, "certificate.denied", req.profile[:256], details)
    metrics.certificate_denied(profile_label(auth, req.profile), denial_reason(error))


def profile_label(auth: Authority, profile: str) -> str:
    """``profile`` if it is configured, else "other": a metric label must not take any value a
    requester sends."""
    return profile if profile in auth.config.profiles else "other"


def denial_reason(error: CAError) -> str:
    """The metric reason of a denial: the first broken policy rule, else the error kind."""
    violations = getattr(error, "violations", ())
    rule = getattr(violations[0], "rule", None) if violations else None
    return str(rule) if rule else error.kind


def issue(
    auth: Authority, req: IssuanceRequest, on_step: StepHook | None = None
) -> IssuedCertificate:
    """Issue one certificate; raises the CAError of a denial (which is audited first)."""
    result = issue_many(auth, [req], on_step)[0]
    if isinstance(result, CAError):
        raise result
    return result


def issue_many(
    auth: Authority, requests: Sequence[IssuanceRequest], on_step: StepHook | None = None
) -> list[IssuedCertificate | CAError]:
    """Issue a batch: one intent transaction and one store transaction for the whole batch.

    Returns, per request, its certificate or the error that denied it. Batching is how several
    concurrent requests share the cost of a durable commit (group commit).
    """
    started = time.monotonic()
    now = auth.now()
    results: list[IssuedCertificate | CAError | None] = [None] * len(requests)
    prepared: list[tuple[int, _Prepared]] = []
    for i, req in enumerate(requests):
        try:
            prepared.append((i, _check(auth, req, now)))
        except _OUTAGES:
            raise  # the CA cannot work right now: an outage, not a decision about this request
        except CAError as exc:
            _deny(auth, req, exc)
            results[i] = exc
    prepared = _drop_inactive_issuers(auth, prepared, results)
    if not prepared:
        return [r for r in results if r is not None]

    # Step 2: reserve serials and record intents, with their audit events, in one commit.
    serials: list[str] = []
    builders = []
    intent_rows = []
    audit_events = []
    with auth.db.write() as conn:
        drawn = [serial_hex(new_serial()) for _ in prepared]
        taken = auth.db.serials_taken(conn, drawn)
        while taken or len(set(drawn)) != len(drawn):  # 2^-64 odds, but never twice
            drawn = [
                s if s not in taken else serial_hex(new_serial()) for s in dict.fromkeys(drawn)
            ]
            drawn += [serial_hex(new_serial()) for _ in range(len(prepared) - len(drawn))]
            taken = auth.db.serials_taken(conn, drawn)
        for (_, p), s in zip(prepared, drawn, strict=True):
            serial = int(s, 16)
            serials.append(s)
            builders.append(
                build_leaf(
                    p.facts,
                    p.decision,
                    p.profile,
                    p.issuer.certificate,
                    serial,
                    p.not_before,
                    p.not_after,
                    p.issuer.urls,
                )
            )
            details = {
                "serial": s,
                "issuer": p.issuer.name,
                "profile": p.profile.name,
                "subject_cn": p.decision.common_name,
                "sans": p.decision.san_strings(),
                "key_type": p.facts.key_type,
                "not_before": _iso(p.not_before),
                "not_after": _iso(p.not_after),
                "request_sha256": p.facts.der_sha256,
                "ignored_csr_extensions": list(p.facts.ignored_extensions),
                "metadata": dict(p.request.metadata or {}),
                **p.decision.audit_details(),
            }
            if p.request.request_id:
                details["request_id"] = p.request.request_id
                details["approved_by"] = p.request.approved_by
            intent_rows.append(
                {
                    "serial": s,
                    "issuer_name": p.issuer.name,
                    "profile": p.profile.name,
                    "requester": p.request.requester,
                    "request_sha256": p.facts.der_sha256,
                    "details": json.dumps(details, sort_keys=True),
                    "state": "pending",
                    "created_at": now,
                }
            )
            audit_events.append((p.request.requester, "certificate.requested", s, details))
        auth.db.add_intents(conn, intent_rows)
        auth.db.append_audit_many(conn, now, audit_events)
    if on_step:
        on_step("intent")

    # Step 3: sign once each in the HSM; check each signature before anything is stored.
    certs: list[x509.Certificate] = []
    try:
        for (_, p), builder in zip(prepared, builders, strict=True):
            cert = builder.sign(p.issuer.key, p.issuer.hash_algorithm)
            cert.verify_directly_issued_by(p.issuer.certificate)
            certs.append(cert)
    except Exception as exc:
        _abandon(auth, serials, f"signing failed: {type(exc).__name__}: {exc}")
        raise
    if on_step:
        on_step("signed")

    # Step 4: store the certificates and their audit events; the intents must still be pending.
    stored_at = auth.now()
    cert_rows: list[dict[str, Any]] = []
    issued_events = []
    for (_, p), s, cert in zip(prepared, serials, certs, strict=True):
        fp = fingerprint(cert)
        cert_rows.append(
            {
                "serial": s,
                "issuer_id": p.issuer.row.id,
                "subject": cert.subject.rfc4514_string(),
                "sans": json.dumps(p.decision.san_strings()),
                "key_type": p.facts.key_type,
                "not_before": cert.not_valid_before_utc,
                "not_after": cert.not_valid_after_utc,
                "profile": p.profile.name,
                "requester": p.request.requester,
                "status": "issued",
                "der": cert.public_bytes(serialization.Encoding.DER),
                "fingerprint_sha256": fp,
                "created_at": stored_at,
                "crl_shard": p.issuer.urls.crl_shard(int(s, 16)),
                "owner": (p.request.metadata or {}).get("owner"),
                "meta": json.dumps(dict(p.request.metadata or {}), sort_keys=True),
            }
        )
        issued_events.append(
            (
                p.request.requester,
                "certificate.issued",
                s,
                {
                    "serial": s,
                    "issuer": p.issuer.name,
                    "profile": p.profile.name,
                    "fingerprint_sha256": fp,
                },
            )
        )
    with auth.db.write() as conn:
        if auth.db.complete_intents(conn, serials, stored_at) != len(serials):
            raise _IntentGone(serials)
        for (_, p), s in zip(prepared, serials, strict=True):
            request_id = p.request.request_id
            if request_id and not auth.db.move_request(
                conn, request_id, ["approved"], "issued", serial=s
            ):
                raise _IntentGone(serials)
        auth.db.add_certificates(conn, cert_rows)
        auth.db.append_audit_many(conn, stored_at, issued_events)
    if on_step:
        on_step("stored")
    metrics.issuance_took(time.monotonic() - started, len(prepared))
    for _, p in prepared:
        metrics.certificate_issued(p.profile.name)

    for (i, p), s, cert, row in zip(prepared, serials, certs, cert_rows, strict=True):
        results[i] = IssuedCertificate(
            s,
            cert,
            p.issuer.chain,
            p.profile.name,
            p.issuer.name,
            sans=tuple(p.decision.san_strings()),
            key_type=p.facts.key_type,
            der=row["der"],
            fingerprint_sha256=row["fingerprint_sha256"],
        )
    return [r for r in results if r is not None]


def _drop_inactive_issuers(
    auth: Authority,
    prepared: list[tuple[int, _Prepared]],
    results: list[IssuedCertificate | CAError | None],
) -> list[tuple[int, _Prepared]]:
    """Deny the requests whose issuer was revoked since this process loaded it.

    ``Authority.issuer`` refuses a CA that is not active, but another process (``hsmca ca
    revoke``) may revoke a CA this one has cached: the statuses are read again at most once a
    second, so such a CA stops issuing everywhere within a second.
    """
    if not prepared:
        return prepared
    inactive = inactive_cas(auth.db, {p.issuer.row.id for _, p in prepared}, max_age=1.0)
    if not inactive:
        return prepared
    auth.forget_issuers()
    kept = []
    for i, p in prepared:
        status = inactive.get(p.issuer.row.id)
        if status is None:
            kept.append((i, p))
            continue
        error = NotFound(f"CA {p.issuer.name!r} is {status}")
        _deny(auth, p.request, error)
        results[i] = error
    return kept


class _IntentGone(StoreError):
    def __init__(self, serials: list[str]) -> None:
        super().__init__(
            "an issuance intent was resolved by recovery before its certificate was stored; "
            "the certificate was discarded and its serial will not be reused"
        )
        self.serials = serials


def _abandon(auth: Authority, serials: list[str], reason: str) -> None:
    now = auth.now()
    with auth.db.write() as conn:
        events = []
        for s in serials:
            if auth.db.abandon_intent(conn, s, now):
                events.append(
                    ("hsmca", "certificate.intent_abandoned", s, {"serial": s, "reason": reason})
                )
        if events:
            auth.db.append_audit_many(conn, now, events)


def recover_intents(auth: Authority, older_than: timedelta = timedelta(seconds=0)) -> list[str]:
    """Resolve pending intents left by a crash (older than ``older_than``): abandon and audit them.

    A crashed issuance never handed its certificate to anyone (we return only after storing), so
    abandoning is safe; the serial stays reserved forever. Returns the serials resolved.
    """
    cutoff = auth.now() - older_than
    pending = auth.db.pending_intents(older_than=cutoff)
    resolved = []
    now = auth.now()
    for intent in pending:
        with auth.db.write() as conn:
            # If the certificate did get stored (it cannot without completing the intent, but be
            # defensive), the intent is marked issued instead.
            if auth.db.certificate_exists(conn, intent["serial"]):
                auth.db.complete_intents(conn, [intent["serial"]], now)
                continue
            if auth.db.abandon_intent(conn, intent["serial"], now):
                auth.db.append_audit(
                    conn,
                    now,
                    "hsmca",
                    "certificate.intent_abandoned",
                    intent["serial"],
                    {
                        "serial": intent["serial"],
                        "issuer": intent["issuer_name"],
                        "profile": intent["profile"],
                        "requester": intent["requester"],
                        "reason": "found pending at start-up (the issuing process stopped before storing)",
                    },
                )
                resolved.append(intent["serial"])
    return resolved


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
