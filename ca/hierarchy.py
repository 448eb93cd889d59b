"""The CA hierarchy: the root and its issuing intermediates, keys generated in the HSM.

A CA is created like any certificate: the key is generated in the token, the intent is recorded
and audited, the HSM signs once, the signature is checked, then the CA and its certificate are
stored with their audit event. Key labels carry a random suffix, so a key left in the token by a
crashed ceremony never collides with the next attempt.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.authority import Authority, fingerprint, serial_hex
from ca.errors import Conflict, NotFound
from ca.issuance import new_serial
from ca.keys import KeyRef, KeySpec, signature_hash_for
from ca.x509build import build_intermediate, build_root, ca_subject

ROOT_PROFILE = "root-ca"
SUBORDINATE_PROFILE = "subordinate-ca"


@dataclass(frozen=True)
class CreatedCa:
    name: str
    certificate: x509.Certificate
    key_ref: KeyRef


def _check_name(auth: Authority, name: str) -> None:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_" for c in name):
        raise Conflict(f"CA name {name!r} must be 1-64 letters, digits, '-' or '_'")
    try:
        auth.db.get_ca(name)
    except NotFound:
        return
    raise Conflict(f"a CA named {name!r} already exists")


def create_root(auth: Authority, actor: str = "hsmca") -> CreatedCa:
    """Create the root CA from ``[ca]`` config: key on the root token, self-signed certificate."""
    cfg = auth.config.ca
    subject = ca_subject(cfg.root_common_name, cfg.organization, cfg.country)
    return _create(
        auth,
        name=cfg.root_name,
        subject=subject,
        spec=KeySpec.parse(cfg.root_key),
        token=auth.config.root_token_label,
        validity=timedelta(days=cfg.root_validity_days),
        parent=None,
        actor=actor,
    )


def create_intermediate(
    auth: Authority,
    name: str,
    common_name: str | None = None,
    key: str | None = None,
    validity_days: int | None = None,
    parent: str | None = None,
    actor: str = "hsmca",
) -> CreatedCa:
    """Create an issuing CA signed by ``parent`` (the root by default); its key on the issuing token."""
    cfg = auth.config.ca
    subject = ca_subject(
        common_name or f"{cfg.organization} {name} CA".strip(), cfg.organization, cfg.country
    )
    return _create(
        auth,
        name=name,
        subject=subject,
        spec=KeySpec.parse(key or cfg.intermediate_key),
        token=auth.config.hsm.token_label,
        validity=timedelta(days=validity_days or cfg.intermediate_validity_days),
        parent=parent or cfg.root_name,
        actor=actor,
    )


def _create(
    auth: Authority,
    name: str,
    subject: x509.Name,
    spec: KeySpec,
    token: str,
    validity: timedelta,
    parent: str | None,
    actor: str,
) -> CreatedCa:
    _check_name(auth, name)
    issuer = auth.issuer(parent) if parent else None
    if issuer is not None:
        bc = issuer.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not bc.ca or bc.path_length == 0:
            raise Conflict(f"CA {parent!r} may not sign CA certificates (pathLen 0); use the root")
    key_id = secrets.token_hex(8)
    ref = KeyRef(token_label=token, label=f"hsmca-{name}-{key_id[:8]}", key_id=key_id)

    # The key is generated in the token first; an abandoned key is harmless (unique label).
    key = auth.keys.generate(ref, spec)
    public_key = key.public_key()
    now = auth.now()
    not_before = (now - timedelta(minutes=5)).replace(microsecond=0)
    not_after = not_before + validity
    serial = new_serial()
    s = serial_hex(serial)
    if issuer is None:
        builder = build_root(subject, public_key, serial, not_before, not_after)
        signing_key, hash_alg = key, signature_hash_for(key)
    else:
        builder = build_intermediate(
            subject,
            public_key,
            issuer.certificate,
            serial,
            not_before,
            not_after,
            auth.urls_for(parent or ""),
        )
        signing_key, hash_alg = issuer.key, issuer.hash_algorithm
    profile = ROOT_PROFILE if issuer is None else SUBORDINATE_PROFILE
    issuer_name = parent or name
    key_details = {
        "token": ref.token_label,
        "label": ref.label,
        "id": ref.key_id,
        "type": str(spec),
    }
    details = {
        "ca": name,
        "serial": s,
        "issuer": issuer_name,
        "subject": subject.rfc4514_string(),
        "key": key_details,
    }
    record_intent(
        auth,
        now,
        s,
        issuer_name,
        profile,
        actor,
        details,
        [
            (actor, "key.generated", ref.label, key_details | {"ca": name}),
            (actor, "ca.requested", name, details),
        ],
    )

    cert = builder.sign(signing_key, hash_alg)
    cert.verify_directly_issued_by(cert if issuer is None else issuer.certificate)

    stored_at = auth.now()
    der = cert.public_bytes(serialization.Encoding.DER)
    fp = fingerprint(cert)
    with auth.db.write() as conn:
        if auth.db.complete_intents(conn, [s], stored_at) != 1:
            raise Conflict(
                "the CA's issuance intent was resolved by recovery; run the command again"
            )
        ca_id = auth.db.add_ca(
            conn,
            {
                "name": name,
                "parent_id": issuer.row.id if issuer else None,
                "subject": subject.rfc4514_string(),
                "serial": s,
                "key_token": ref.token_label,
                "key_label": ref.label,
                "key_id": ref.key_id,
                "key_type": str(spec),
                "certificate_der": der,
                "fingerprint_sha256": fp,
                "not_before": cert.not_valid_before_utc,
                "not_after": cert.not_valid_after_utc,
                "status": "active",
                "created_at": stored_at,
            },
        )
        if issuer is not None:
            auth.db.add_certificates(
                conn,
                [
                    own_certificate_row(
                        cert,
                        s,
                        issuer.row.id,
                        str(spec),
                        profile,
                        actor,
                        stored_at,
                        crl_shard=auth.urls_for(issuer_name).crl_shard(serial),
                    )
                ],
            )
        auth.db.append_audit(
            conn,
            stored_at,
            actor,
            "ca.created",
            name,
            {"ca": name, "id": ca_id, "serial": s, "issuer": issuer_name, "fingerprint_sha256": fp},
        )
    return CreatedCa(name, cert, ref)


def own_certificate_row(
    cert: x509.Certificate,
    serial: str,
    issuer_id: int,
    key_type: str,
    profile: str,
    actor: str,
    stored_at: datetime,
    crl_shard: int | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The inventory row of a certificate the CA makes for itself (a CA, an OCSP responder,
    the audit key), stored beside its intent's completion like any issued certificate."""
    row: dict[str, Any] = {
        "serial": serial,
        "issuer_id": issuer_id,
        "subject": cert.subject.rfc4514_string(),
        "sans": "[]",
        "key_type": key_type,
        "not_before": cert.not_valid_before_utc,
        "not_after": cert.not_valid_after_utc,
        "profile": profile,
        "requester": actor,
        "status": "issued",
        "der": cert.public_bytes(serialization.Encoding.DER),
        "fingerprint_sha256": fingerprint(cert),
        "created_at": stored_at,
    }
    if crl_shard is not None:
        row["crl_shard"] = crl_shard
    if meta is not None:
        row["meta"] = json.dumps(meta, sort_keys=True)
    return row


def record_intent(
    auth: Authority,
    now: datetime,
    serial: str,
    issuer_name: str,
    profile: str,
    actor: str,
    details: dict[str, Any],
    events: list[tuple[str, str, str, dict[str, Any]]],
) -> None:
    """Reserve ``serial`` and record the intent to sign with its audit events, in one commit.

    For certificates the CA makes for itself (CAs, OCSP responders) once their key exists in the
    HSM: a crash before the certificate is stored leaves an intent recovery resolves.
    """
    with auth.db.write() as conn:
        if auth.db.serial_taken(conn, serial):
            raise Conflict("serial collision; try again")
        auth.db.add_intents(
            conn,
            [
                {
                    "serial": serial,
                    "issuer_name": issuer_name,
                    "profile": profile,
                    "requester": actor,
                    "request_sha256": "",
                    "details": json.dumps(details, sort_keys=True),
                    "state": "pending",
                    "created_at": now,
                }
            ],
        )
        auth.db.append_audit_many(conn, now, events)
