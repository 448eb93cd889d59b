"""SQLAlchemy 2 models: the schema. Rows are not domain objects; ``ca.store.db`` converts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UtcDateTime(TypeDecorator[datetime]):
    """Stores naive UTC; returns aware UTC. Refuses naive input so no local time sneaks in."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class CertificateAuthority(Base):
    """A CA of the hierarchy: its certificate and where its key lives (token, label, CKA_ID)."""

    __tablename__ = "certificate_authorities"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("certificate_authorities.id"))
    subject: Mapped[str] = mapped_column(Text)
    serial: Mapped[str] = mapped_column(String(64))
    key_token: Mapped[str] = mapped_column(String(64))
    key_label: Mapped[str] = mapped_column(String(128))
    key_id: Mapped[str] = mapped_column(String(64))
    key_type: Mapped[str] = mapped_column(String(16))
    certificate_der: Mapped[bytes] = mapped_column(LargeBinary)
    fingerprint_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    not_before: Mapped[datetime] = mapped_column(UtcDateTime)
    not_after: Mapped[datetime] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class IssuanceIntent(Base):
    """A serial reserved and the certificate we meant to sign, recorded before the HSM signs.

    ``state`` is ``pending`` until the certificate is stored (``issued``) or a recovery gives up
    on it (``abandoned``); the serial is never used again either way.
    """

    __tablename__ = "issuance_intents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    serial: Mapped[str] = mapped_column(String(64), unique=True)
    issuer_name: Mapped[str] = mapped_column(String(64))
    profile: Mapped[str] = mapped_column(String(64))
    requester: Mapped[str] = mapped_column(String(128))
    request_sha256: Mapped[str] = mapped_column(String(64))
    details: Mapped[str] = mapped_column(Text)  # JSON: subject, SANs, validity, key type
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Certificate(Base):
    """An issued certificate (end-entity or subordinate CA), as handed out."""

    __tablename__ = "certificates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    serial: Mapped[str] = mapped_column(String(64), unique=True)
    issuer_id: Mapped[int] = mapped_column(ForeignKey("certificate_authorities.id"), index=True)
    subject: Mapped[str] = mapped_column(Text)
    sans: Mapped[str] = mapped_column(Text)  # JSON list of "dns:…"/"ip:…"
    key_type: Mapped[str] = mapped_column(String(16))
    not_before: Mapped[datetime] = mapped_column(UtcDateTime)
    not_after: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    profile: Mapped[str] = mapped_column(String(64), index=True)
    requester: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="issued", index=True)
    der: Mapped[bytes] = mapped_column(LargeBinary)
    fingerprint_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revocation_reason: Mapped[int | None] = mapped_column(Integer)  # RFC 5280 CRLReason code
    # The partition of the issuer's CRL this certificate's CDP names (fixed at issuance).
    crl_shard: Mapped[int] = mapped_column(Integer, default=0)
    # What the requester said about the certificate (owner, team, contact, service, ...).
    owner: Mapped[str | None] = mapped_column(String(128), index=True)
    meta: Mapped[str | None] = mapped_column(Text)  # JSON object


class ApiClient(Base):
    """A REST API client: roles, the profiles and names it may ask for, and its token's hash.

    The bearer token itself is shown once at creation and never stored.
    """

    __tablename__ = "api_clients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    roles: Mapped[str] = mapped_column(Text)  # JSON list
    profiles: Mapped[str] = mapped_column(Text)  # JSON list; empty: every profile
    names: Mapped[str] = mapped_column(Text)  # JSON list of name rules; empty: the profile's
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(String(128))
    disabled_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class EnrollmentRequest(Base):
    """A certificate request waiting for approval (dual control), and what became of it.

    ``state``: ``pending`` → ``approved`` → ``issued``, or ``rejected`` / ``expired``; an approved
    request whose issuance failed goes back to ``pending``.
    """

    __tablename__ = "enrollment_requests"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    requester: Mapped[str] = mapped_column(String(128), index=True)
    profile: Mapped[str] = mapped_column(String(64))
    csr_der: Mapped[bytes] = mapped_column(LargeBinary)
    validity_days: Mapped[int | None] = mapped_column(Integer)
    meta: Mapped[str] = mapped_column(Text)  # JSON object
    decision: Mapped[str] = mapped_column(Text)  # JSON: the policy decision at submission
    state: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    decided_by: Mapped[str | None] = mapped_column(String(128))
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    reason: Mapped[str | None] = mapped_column(Text)
    serial: Mapped[str | None] = mapped_column(String(64))


class AuditEvent(Base):
    """One link of the audit chain: ``hash = SHA-256(prev_hash || canonical_json(event))``."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    time: Mapped[str] = mapped_column(String(40))  # RFC 3339 UTC, exactly as hashed
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(String(256))
    details: Mapped[str] = mapped_column(Text)  # canonical JSON, exactly as hashed
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


Index("ix_certificates_issuer_status", Certificate.issuer_id, Certificate.status)


class CrlRecord(Base):
    """A CRL as published: one row per (CA, shard, CRL number); the newest number is current."""

    __tablename__ = "crls"
    __table_args__ = (UniqueConstraint("issuer_id", "shard", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    issuer_id: Mapped[int] = mapped_column(ForeignKey("certificate_authorities.id"))
    shard: Mapped[int] = mapped_column(Integer)
    number: Mapped[int] = mapped_column(BigInteger)
    this_update: Mapped[datetime] = mapped_column(UtcDateTime)
    next_update: Mapped[datetime] = mapped_column(UtcDateTime)
    entries: Mapped[int] = mapped_column(Integer)
    der: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class OcspResponder(Base):
    """A delegated OCSP responder of an issuing CA: its certificate and where its HSM key lives."""

    __tablename__ = "ocsp_responders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    issuer_id: Mapped[int] = mapped_column(ForeignKey("certificate_authorities.id"), index=True)
    serial: Mapped[str] = mapped_column(String(64), unique=True)
    certificate_der: Mapped[bytes] = mapped_column(LargeBinary)
    key_token: Mapped[str] = mapped_column(String(64))
    key_label: Mapped[str] = mapped_column(String(128))
    key_id: Mapped[str] = mapped_column(String(64))
    key_type: Mapped[str] = mapped_column(String(16))
    not_before: Mapped[datetime] = mapped_column(UtcDateTime)
    not_after: Mapped[datetime] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class OcspResponse(Base):
    """The current pre-signed OCSP response for one certificate (replaced when re-signed)."""

    __tablename__ = "ocsp_responses"
    __table_args__ = (UniqueConstraint("issuer_id", "serial"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    issuer_id: Mapped[int] = mapped_column(ForeignKey("certificate_authorities.id"))
    serial: Mapped[str] = mapped_column(String(64))
    cert_status: Mapped[str] = mapped_column(String(8))  # good | revoked
    this_update: Mapped[datetime] = mapped_column(UtcDateTime)
    next_update: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    produced_at: Mapped[datetime] = mapped_column(UtcDateTime)
    der: Mapped[bytes] = mapped_column(LargeBinary)


class AcmeNonce(Base):
    """An ACME ``Replay-Nonce`` that was used (RFC 8555 §6.5; ``ca/acme/nonces.py``).

    Nonces are MAC'd, not stored, when handed out; using one inserts its row, and the primary
    key lets exactly one request across every worker and node do so. ``created_at`` is the
    nonce's issue time: rows older than ``[acme] nonce_lifetime_seconds`` are purged, since
    such a nonce fails its age check anyway.
    """

    __tablename__ = "acme_nonces"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class AcmeNonceKey(Base):
    """The HMAC key of ACME nonces, shared by every worker and node (one row, made at first use)."""

    __tablename__ = "acme_nonce_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64))  # base64url of 32 random octets
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class AcmeAccount(Base):
    """An ACME account: its key (RFC 7638 thumbprint + canonical public JWK), contacts, status."""

    __tablename__ = "acme_accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_thumbprint: Mapped[str] = mapped_column(String(64), unique=True)
    jwk: Mapped[str] = mapped_column(Text)  # canonical JSON of the public JWK
    status: Mapped[str] = mapped_column(String(16))  # valid | deactivated | revoked
    contact: Mapped[str] = mapped_column(Text)  # JSON list of URLs (mailto:)
    tos_agreed: Mapped[bool] = mapped_column(Boolean)
    requester: Mapped[str | None] = mapped_column(String(128))  # API client bound by EAB
    eab_key_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    created_ip: Mapped[str | None] = mapped_column(String(64))  # for new-accounts-per-IP limits
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class AcmeEabKey(Base):
    """An external account binding key (RFC 8555 §7.3.4) made for one API client.

    The HMAC key is stored because the server must verify with it; it is single use: the
    account it bound is recorded, and a used or expired key binds nothing more.
    """

    __tablename__ = "acme_eab_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hmac_key: Mapped[str] = mapped_column(String(128))  # base64url of 32 random octets
    client: Mapped[str] = mapped_column(String(128))  # the API client the account acts as
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires: Mapped[datetime] = mapped_column(UtcDateTime)
    account_id: Mapped[int | None] = mapped_column(Integer)  # set when used
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class AcmeOrder(Base):
    """An ACME order (RFC 8555 §7.1.3): identifiers, profile, status and the certificate issued.

    ``status``: pending → ready (every authorization valid) → processing (finalize won the
    conditional move) → valid; or invalid (an authorization failed, or the order expired).
    """

    __tablename__ = "acme_orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("acme_accounts.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))  # pending|ready|processing|valid|invalid
    identifiers: Mapped[str] = mapped_column(Text)  # JSON list of {"type", "value"}
    profile: Mapped[str] = mapped_column(String(64))
    not_before: Mapped[datetime | None] = mapped_column(UtcDateTime)  # requested, unused yet
    not_after: Mapped[datetime | None] = mapped_column(UtcDateTime)
    expires: Mapped[datetime] = mapped_column(UtcDateTime)
    error: Mapped[str | None] = mapped_column(Text)  # JSON problem document
    certificate_serial: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    replaces: Mapped[str | None] = mapped_column(String(64), index=True)  # ARI: serial replaced
    processing_since: Mapped[datetime | None] = mapped_column(UtcDateTime)  # finalize started


class AcmeAuthorization(Base):
    """An ACME authorization of one identifier for one order (RFC 8555 §7.1.4)."""

    __tablename__ = "acme_authorizations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("acme_accounts.id"))
    order_id: Mapped[int] = mapped_column(ForeignKey("acme_orders.id"), index=True)
    identifier_type: Mapped[str] = mapped_column(String(8))  # dns | ip
    identifier_value: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))  # pending|valid|invalid|deactivated|expired
    expires: Mapped[datetime] = mapped_column(UtcDateTime)
    wildcard: Mapped[bool] = mapped_column(Boolean)


class AcmeChallenge(Base):
    """An ACME challenge of an authorization (RFC 8555 §7.1.5): http-01, dns-01 or tls-alpn-01."""

    __tablename__ = "acme_challenges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    authz_id: Mapped[int] = mapped_column(ForeignKey("acme_authorizations.id"), index=True)
    type: Mapped[str] = mapped_column(String(16))  # http-01
    token: Mapped[str] = mapped_column(String(64), unique=True)  # 43 chars base64url
    status: Mapped[str] = mapped_column(String(16))  # pending|processing|valid|invalid
    validated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    error: Mapped[str | None] = mapped_column(Text)  # JSON problem document
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # validation started


class AuditCheckpoint(Base):
    """A signed chain head: ``(seq, hash, time)`` signed in the HSM by the audit key.

    Each is also written to the configured external witnesses, so rolling the database back or
    truncating the chain shows against them.
    """

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)  # the chain head signed
    hash: Mapped[str] = mapped_column(String(64))  # hex of that event's hash
    time: Mapped[str] = mapped_column(String(40))  # RFC 3339 UTC, exactly as signed
    key_serial: Mapped[str] = mapped_column(String(64))  # serial of the audit certificate
    algorithm: Mapped[str] = mapped_column(String(32))  # e.g. ecdsa-with-SHA256
    signature: Mapped[str] = mapped_column(Text)  # base64 of the signature (DER for ECDSA)


class AppSecret(Base):
    """A secret every node shares (e.g. the compliance view's session key), made at first use."""

    __tablename__ = "app_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))  # base64url
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class UiUser(Base):
    """A local user of the compliance view (``hsmca user add NAME --role auditor|operator``)."""

    __tablename__ = "ui_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # auditor | operator
    password_hash: Mapped[str] = mapped_column(String(256))  # scrypt, with its parameters
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class UiLoginFailure(Base):
    """A failed sign-in (for rate limiting by name and by address); old rows are purged."""

    __tablename__ = "ui_login_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    address: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class ExpiryNotice(Base):
    """One certificate's expiry notice for one window and channel (``ca/notices_job.py``).

    Written in the transaction of the ``notice.sent`` / ``notice.failed`` event. ``sent``
    rows are never sent again; a ``failed`` row is tried again from ``next_attempt_at``.
    No row at all means "not sent yet" (a crash after a POST and before this row's commit
    sends the notice again: delivery is at least once).
    """

    __tablename__ = "expiry_notices"
    __table_args__ = (UniqueConstraint("serial", "window_days", "channel"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    serial: Mapped[str] = mapped_column(String(64), index=True)
    window_days: Mapped[int] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(16))  # webhook | email
    owner: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))  # sent | failed
    notice_id: Mapped[str] = mapped_column(String(64))  # of the last notice it was part of
    attempts: Mapped[int] = mapped_column(Integer)  # runs that tried (failed runs + the sent one)
    first_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # failed only
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
