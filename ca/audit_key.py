"""The audit key: the HSM key that signs audit checkpoints, and its certificate.

The key is generated in the issuing token like every CA key (sensitive, non-extractable, label
``hsmca-audit-<8 hex>``; the random suffix means a key left by a crashed run never collides) and
its certificate is issued by ``[ca] default_issuer`` with the intent pattern of the CA hierarchy:
intent + ``key.generated`` + ``audit.key.requested`` in one commit, the CA signs, the signature is
checked, then the certificate (a ``certificates`` row, profile ``audit-signer``, its key reference
in ``meta``) and ``audit.key.created`` in one commit.

The certificate (all chosen here, nothing configurable but the key type ``[audit] key``):

* subject C/O of ``[ca]`` and CN ``hsmca audit``; validity 5 years, never past the issuer's;
* basicConstraints CA:FALSE (critical), keyUsage digitalSignature (critical);
* extKeyUsage id-kp-documentSigning (1.3.6.1.5.5.7.3.36, RFC 9336): a checkpoint is a signed
  statement, and the EKU keeps TLS and code-signing verifiers from accepting the certificate;
* AKI, SKI, and the issuer's AIA and CDP, so it can be revoked like any certificate.

A new audit key is made when none is current: none yet, the current one revoked, or within
:data:`RENEW_BEFORE` of its end (old certificates stay in the inventory: checkpoints they signed
keep verifying).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

from ca.authority import Authority, fingerprint, same_public_key, serial_hex
from ca.errors import Conflict, KeyMismatch
from ca.hierarchy import own_certificate_row, record_intent
from ca.issuance import new_serial
from ca.keys import IssuerKey, KeyRef, KeySpec, PublicKey
from ca.store.db import CertificateFilter, CertificateRow, Database
from ca.x509build import CaUrls, authority_key_identifier, ca_subject

PROFILE = "audit-signer"
COMMON_NAME = "hsmca audit"
#: id-kp-documentSigning (RFC 9336).
DOCUMENT_SIGNING = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")
VALIDITY = timedelta(days=5 * 365)
RENEW_BEFORE = timedelta(days=30)
BACKDATE = timedelta(minutes=5)


@dataclass(frozen=True)
class AuditKeyResult:
    """What :func:`create_audit_key` did: the audit certificate now current, and whether it is new."""

    created: bool
    serial: str
    certificate: x509.Certificate
    key_ref: KeyRef
    reason: str  # why a key was (or was not) made


@dataclass(frozen=True)
class AuditSigner:
    """The audit key loaded from the HSM, checked against its certificate, ready to sign."""

    serial: str
    certificate: x509.Certificate
    key: IssuerKey


def build_audit_certificate(
    issuer: x509.Certificate,
    subject: x509.Name,
    public_key: PublicKey,
    serial: int,
    not_before: datetime,
    not_after: datetime,
    urls: CaUrls,
) -> x509.CertificateBuilder:
    """The audit certificate (unsigned); see the module docstring for its profile."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(min(not_after, issuer.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
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
        .add_extension(x509.ExtendedKeyUsage([DOCUMENT_SIGNING]), critical=False)
        .add_extension(authority_key_identifier(issuer), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP,
                        x509.UniformResourceIdentifier(urls.ocsp),
                    ),
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS,
                        x509.UniformResourceIdentifier(urls.ca_issuers),
                    ),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        full_name=[
                            x509.UniformResourceIdentifier(urls.crl_url(urls.crl_shard(serial)))
                        ],
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            ),
            critical=False,
        )
    )


def audit_certificate_rows(db: Database) -> list[CertificateRow]:
    """Every audit certificate ever issued (any status), oldest first."""
    rows: list[CertificateRow] = []
    after = 0
    while True:
        page = db.find_certificates(CertificateFilter(profile=PROFILE), after_id=after, limit=100)
        rows.extend(page)
        if len(page) < 100:
            return rows
        after = page[-1].id


def audit_certificates(auth: Authority) -> list[x509.Certificate]:
    """Every audit certificate ever issued (any status), oldest first."""
    return [x509.load_der_x509_certificate(r.der) for r in audit_certificate_rows(auth.db)]


def current_row(rows: list[CertificateRow], now: datetime) -> CertificateRow | None:
    """The audit certificate to sign with at ``now``: the newest unrevoked one in its validity."""
    usable = [r for r in rows if r.status == "issued" and r.not_before <= now < r.not_after]
    return max(usable, key=lambda r: (r.not_after, r.id)) if usable else None


def renewal_reason(current: CertificateRow | None, now: datetime) -> str | None:
    """Why a new audit key is needed at ``now`` (None: the current one serves)."""
    if current is None:
        return "no current audit key"
    if current.not_after - now <= RENEW_BEFORE:
        return f"the audit certificate {current.serial} expires {current.not_after:%Y-%m-%d}"
    return None


def key_ref_of(row: CertificateRow) -> KeyRef:
    """Where the audit key of certificate ``row`` lives (from its ``meta``)."""
    key = row.meta.get("key")
    if not isinstance(key, dict) or not all(
        isinstance(key.get(f), str) for f in ("token", "label", "id")
    ):
        raise KeyMismatch(f"audit certificate {row.serial} has no key reference")
    return KeyRef(token_label=key["token"], label=key["label"], key_id=key["id"])


def load_signer(auth: Authority, now: datetime) -> AuditSigner | None:
    """The current audit key from the HSM, checked against its certificate (None: no audit key)."""
    row = current_row(audit_certificate_rows(auth.db), now)
    if row is None:
        return None
    cert = x509.load_der_x509_certificate(row.der)
    key = auth.keys.load(key_ref_of(row))
    if not same_public_key(key.public_key(), cert.public_key()):
        raise KeyMismatch(f"the audit key of certificate {row.serial} does not match it")
    return AuditSigner(serial=row.serial, certificate=cert, key=key)


def create_audit_key(
    auth: Authority, actor: str = "hsmca", now: datetime | None = None, force: bool = False
) -> AuditKeyResult:
    """Make the audit key and its certificate unless a current one exists (idempotent).

    ``force`` makes a new one anyway (e.g. after a suspected compromise, with the old one revoked).
    """
    now = now or auth.now()
    current = current_row(audit_certificate_rows(auth.db), now)
    reason = "requested" if force else renewal_reason(current, now)
    if reason is None and current is not None:
        return AuditKeyResult(
            False,
            current.serial,
            x509.load_der_x509_certificate(current.der),
            key_ref_of(current),
            "a current audit key exists",
        )
    issuer_name = auth.config.ca.default_issuer
    issuer = auth.issuer(issuer_name)
    if current is not None and not force:
        # Near the issuer's own end a new certificate could not outlive the current one.
        if issuer.certificate.not_valid_after_utc <= current.not_after + timedelta(hours=1):
            return AuditKeyResult(
                False,
                current.serial,
                x509.load_der_x509_certificate(current.der),
                key_ref_of(current),
                f"issuing CA {issuer_name!r} expires first; renew it",
            )
    spec = KeySpec.parse(auth.config.audit.key)
    key_id = secrets.token_hex(8)
    ref = KeyRef(auth.config.hsm.token_label, f"hsmca-audit-{key_id[:8]}", key_id)
    key = auth.keys.generate(ref, spec)
    not_before = (now - BACKDATE).replace(microsecond=0)
    not_after = min(
        not_before + VALIDITY - timedelta(seconds=1), issuer.certificate.not_valid_after_utc
    )
    cfg = auth.config.ca
    subject = ca_subject(COMMON_NAME, cfg.organization, cfg.country)
    serial = new_serial()
    s = serial_hex(serial)
    builder = build_audit_certificate(
        issuer.certificate, subject, key.public_key(), serial, not_before, not_after, issuer.urls
    )
    key_details = {
        "token": ref.token_label,
        "label": ref.label,
        "id": ref.key_id,
        "type": str(spec),
    }
    details: dict[str, Any] = {
        "serial": s,
        "issuer": issuer_name,
        "subject": subject.rfc4514_string(),
        "key": key_details,
        "not_before": not_before.isoformat(),
        "not_after": not_after.isoformat(),
        "reason": reason,
    }
    record_intent(
        auth,
        now,
        s,
        issuer_name,
        PROFILE,
        actor,
        details,
        [
            (actor, "key.generated", ref.label, key_details | {"purpose": "audit"}),
            (actor, "audit.key.requested", ref.label, details),
        ],
    )

    cert = builder.sign(issuer.key, issuer.hash_algorithm)
    cert.verify_directly_issued_by(issuer.certificate)

    stored_at = auth.now()
    fp = fingerprint(cert)
    with auth.db.write() as conn:
        if auth.db.complete_intents(conn, [s], stored_at) != 1:
            raise Conflict("the audit key's issuance intent was resolved by recovery; run it again")
        auth.db.add_certificates(
            conn,
            [
                own_certificate_row(
                    cert,
                    s,
                    issuer.row.id,
                    str(spec),
                    PROFILE,
                    actor,
                    stored_at,
                    crl_shard=issuer.urls.crl_shard(serial),
                    meta={"key": key_details},
                )
            ],
        )
        auth.db.append_audit(
            conn,
            stored_at,
            actor,
            "audit.key.created",
            ref.label,
            {
                "serial": s,
                "issuer": issuer_name,
                "fingerprint_sha256": fp,
                "not_after": cert.not_valid_after_utc.isoformat(),
                "key": key_details,
                "supersedes": current.serial if current is not None else None,
            },
        )
    return AuditKeyResult(True, s, cert, ref, reason or "requested")
