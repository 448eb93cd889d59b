"""Delegated OCSP responders: one per active CA, key generated in the HSM, renewed before expiry.

A responder certificate follows the CA/Browser Forum profile of OCSP responder certificates
(BR 7.1.2.8): keyUsage digitalSignature (critical), extKeyUsage id-kp-OCSPSigning only,
id-pkix-ocsp-nocheck, AKI, SKI, a short validity (``[ocsp] responder_validity_days``). It is issued with
the intent pattern of the CA hierarchy: key generated in the token (random label suffix), intent +
``key.generated`` + ``ocsp.responder_requested`` in one commit, the CA signs, the signature is
checked, then the certificate (also a ``certificates`` row, profile ``ocsp-responder``), the
responder row and ``ocsp.responder_created`` in one commit. The previous responder of the CA is
marked ``superseded`` in that same commit; responses it signed stay valid until they are re-signed
(at the latest ``refresh_hours`` later), long before its certificate expires.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.authority import Authority, fingerprint, same_public_key, serial_hex
from ca.errors import CAError, Conflict, KeyMismatch
from ca.hierarchy import own_certificate_row, record_intent
from ca.issuance import new_serial
from ca.keys import KeyRef, KeySpec, PublicKey
from ca.store import ocsp as store
from ca.store.db import CaRow
from ca.store.ocsp import ResponderRow
from ca.x509build import authority_key_identifier, ca_subject
from ocsp.signer import IssuerIds, ResponderSigner

PROFILE = "ocsp-responder"
BACKDATE = timedelta(minutes=5)


@dataclass
class RespondersReport:
    """What :func:`run_once` did: responders created (CA name -> serial) and CAs that failed."""

    created: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def build_responder_certificate(
    issuer: x509.Certificate,
    subject: x509.Name,
    public_key: PublicKey,
    serial: int,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    """An OCSP responder certificate for ``issuer`` (unsigned)."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(min(not_after, issuer.not_valid_after_utc))
        .add_extension(authority_key_identifier(issuer), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        .add_extension(x509.OCSPNoCheck(), critical=False)
    )


def responder_subject(auth: Authority, ca_cert: x509.Certificate) -> x509.Name:
    """``C``, ``O`` of the configuration and CN "<CA common name> OCSP Responder" (≤ 64)."""
    cns = ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ca_cn = str(cns[0].value) if cns else "hsmca"
    suffix = " OCSP Responder"
    cfg = auth.config.ca
    return ca_subject(ca_cn[: 64 - len(suffix)] + suffix, cfg.organization, cfg.country)


def current(rows: list[ResponderRow], issuer_id: int) -> ResponderRow | None:
    """The newest active responder of a CA."""
    mine = [r for r in rows if r.issuer_id == issuer_id and r.status == "active"]
    return max(mine, key=lambda r: (r.not_after, r.id)) if mine else None


def needs_new(ca: CaRow, responder: ResponderRow | None, auth: Authority, now: datetime) -> bool:
    """Whether ``ca`` needs a (new) responder ``now``."""
    if ca.status != "active" or ca.not_after <= now:
        return False
    if responder is None:
        return True
    renew_at = responder.not_after - timedelta(days=auth.config.ocsp.responder_renew_days)
    # Near the CA's own end a new responder could not outlive the current one: keep it.
    return now >= renew_at and ca.not_after > responder.not_after + timedelta(hours=1)


def create_responder(
    auth: Authority, ca_name: str, actor: str = "hsmca", now: datetime | None = None
) -> ResponderRow:
    """Issue a new delegated responder certificate for CA ``ca_name`` (key made in the HSM)."""
    cfg = auth.config.ocsp
    issuer = auth.issuer(ca_name)
    spec = KeySpec.parse(cfg.responder_key)
    key_id = secrets.token_hex(8)
    ref = KeyRef(
        token_label=auth.config.hsm.token_label,
        label=f"hsmca-ocsp-{ca_name}-{key_id[:8]}",
        key_id=key_id,
    )
    key = auth.keys.generate(ref, spec)
    now = now or auth.now()
    not_before = (now - BACKDATE).replace(microsecond=0)
    not_after = not_before + timedelta(days=cfg.responder_validity_days) - timedelta(seconds=1)
    subject = responder_subject(auth, issuer.certificate)
    serial = new_serial()
    s = serial_hex(serial)
    builder = build_responder_certificate(
        issuer.certificate, subject, key.public_key(), serial, not_before, not_after
    )
    key_details = {
        "token": ref.token_label,
        "label": ref.label,
        "id": ref.key_id,
        "type": str(spec),
    }
    details = {
        "ca": ca_name,
        "serial": s,
        "subject": subject.rfc4514_string(),
        "key": key_details,
        "not_before": not_before.isoformat(),
        "not_after": min(not_after, issuer.certificate.not_valid_after_utc).isoformat(),
    }
    record_intent(
        auth,
        now,
        s,
        ca_name,
        PROFILE,
        actor,
        details,
        [
            (actor, "key.generated", ref.label, key_details | {"ocsp_responder_for": ca_name}),
            (actor, "ocsp.responder_requested", ca_name, details),
        ],
    )

    cert = builder.sign(issuer.key, issuer.hash_algorithm)
    cert.verify_directly_issued_by(issuer.certificate)

    stored_at = auth.now()
    der = cert.public_bytes(serialization.Encoding.DER)
    fp = fingerprint(cert)
    row: dict[str, Any] = {
        "issuer_id": issuer.row.id,
        "serial": s,
        "certificate_der": der,
        "key_token": ref.token_label,
        "key_label": ref.label,
        "key_id": ref.key_id,
        "key_type": str(spec),
        "not_before": cert.not_valid_before_utc,
        "not_after": cert.not_valid_after_utc,
        "status": "active",
        "created_at": stored_at,
    }
    with auth.db.write() as conn:
        if auth.db.complete_intents(conn, [s], stored_at) != 1:
            raise Conflict("the responder's issuance intent was resolved by recovery; run it again")
        auth.db.add_certificates(
            conn,
            [own_certificate_row(cert, s, issuer.row.id, str(spec), PROFILE, actor, stored_at)],
        )
        responder_id = store.add_responder(conn, row)
        superseded = store.supersede_responders(conn, issuer.row.id, responder_id)
        auth.db.append_audit(
            conn,
            stored_at,
            actor,
            "ocsp.responder_created",
            ca_name,
            {
                "ca": ca_name,
                "serial": s,
                "fingerprint_sha256": fp,
                "not_after": cert.not_valid_after_utc.isoformat(),
                "key_label": ref.label,
                "supersedes": superseded,
            },
        )
    return ResponderRow(id=responder_id, **row)


def run_once(auth: Authority, now: datetime, actor: str = "hsmca") -> RespondersReport:
    """Create a responder for every active CA that has none, renew those within
    ``responder_renew_days`` of expiry. One CA's failure (e.g. its token is missing) does not
    stop the others; it is reported and retried on the next run."""
    report = RespondersReport()
    rows = store.responders(auth.db)
    for ca in auth.db.list_cas():
        if not needs_new(ca, current(rows, ca.id), auth, now):
            continue
        try:
            created = create_responder(auth, ca.name, actor=actor, now=now)
        except CAError as exc:
            report.errors[ca.name] = f"{exc.kind}: {exc}"
            continue
        report.created[ca.name] = created.serial
    return report


def load_signer(
    auth: Authority, row: ResponderRow, ids: IssuerIds | None = None
) -> ResponderSigner:
    """The responder's HSM key, checked against its certificate, ready to sign."""
    cert = x509.load_der_x509_certificate(row.certificate_der)
    key = auth.keys.load(KeyRef(row.key_token, row.key_label, row.key_id))
    if not same_public_key(key.public_key(), cert.public_key()):
        raise KeyMismatch(f"the key of OCSP responder {row.serial} does not match its certificate")
    if ids is None:
        ca = next(c for c in auth.db.list_cas() if c.id == row.issuer_id)
        ids = IssuerIds.of(ca.id, ca.name, x509.load_der_x509_certificate(ca.certificate_der))
    return ResponderSigner(row=row, issuer=ids, certificate=cert, key=key)
