"""Request and response bodies of the REST API (pydantic models; the OpenAPI schemas come from them)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MetaKey = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
MetaValue = Annotated[str, StringConstraints(max_length=256)]
Serial = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{2,40}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class EnrollIn(_Strict):
    """``POST /certificates``: a CSR and the profile to issue it under."""

    csr: str = Field(
        min_length=1,
        max_length=65536,
        description="PKCS#10 certificate signing request, PEM",
        json_schema_extra={"contentMediaType": "application/pkcs10"},
    )
    profile: str = Field(min_length=1, max_length=64, description="issuance profile name")
    validity_days: int | None = Field(
        None, ge=1, le=36500, description="validity wanted; at most the profile's maximum"
    )
    metadata: dict[MetaKey, MetaValue] = Field(
        default_factory=dict,
        max_length=32,
        description="owner, team, contact, service, ... (kept with the certificate)",
    )


#: RFC 5280 reasons an end-entity certificate may be revoked for (the CA/Browser Forum's set:
#: no certificateHold, removeFromCRL, cACompromise or aACompromise).
RevocationReason = Literal[
    "unspecified",
    "keyCompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
]


class RevokeIn(_Strict):
    """``POST /certificates/{serial}/revoke``."""

    reason: RevocationReason = Field(
        description="RFC 5280 CRLReason; unspecified is listed without a reasonCode"
    )
    comment: str = Field("", max_length=500, description="kept in the audit record")


class RejectIn(_Strict):
    """``POST /requests/{id}/reject``."""

    reason: str = Field("", max_length=500)


class ApproveIn(_Strict):
    """``POST /requests/{id}/approve`` (no fields yet; an empty object or no body)."""


class Links(_Strict):
    self: str
    issuer: str | None = None
    chain: str | None = None


class CertificateOut(_Strict):
    """A certificate as the API shows it. Times are RFC 3339 UTC."""

    serial: Serial
    status: str
    profile: str
    issuer: str
    subject: str
    sans: list[str]
    key_type: str
    not_before: str
    not_after: str
    requester: str
    owner: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    fingerprint_sha256: str
    revoked_at: str | None = Field(None, description="when it was revoked (status revoked)")
    revocation_reason: str | None = Field(None, description="RFC 5280 reason name (revoked)")
    certificate: str = Field(description="the certificate, PEM")
    chain: str | None = Field(None, description="the issuing CAs up to the root (exclusive), PEM")
    links: Links


class CertificatePage(_Strict):
    items: list[CertificateOut]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next page; null at the end"
    )


class ProfileOut(_Strict):
    name: str
    description: str
    issuer: str
    key_types: list[str]
    validity_days: int
    max_validity_days: int
    dns_names: list[str]
    allow_wildcards: bool
    ip_ranges: list[str]
    uri_patterns: list[str]
    email_patterns: list[str]
    extended_key_usage: list[str]
    key_usage: list[str]
    subject_attributes: list[str]
    common_name: str
    requires_approval: bool
    sha256: str = Field(description="hash of the profile as configured (cited in audit records)")


class CaOut(_Strict):
    name: str
    subject: str
    serial: str
    key_type: str
    not_before: str
    not_after: str
    status: str
    parent: str | None
    fingerprint_sha256: str
    certificate: str
    links: Links


class RequestOut(_Strict):
    """A request kept for approval."""

    id: str
    state: Literal["pending", "approved", "issued", "rejected", "expired"]
    requester: str
    profile: str
    validity_days: int | None
    metadata: dict[str, str]
    created_at: str
    expires_at: str
    decided_by: str | None
    decided_at: str | None
    reason: str | None
    serial: str | None
    links: Links


class Violation(_Strict):
    rule: str
    detail: str
    value: str | None = None


class Problem(BaseModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    violations: list[Violation] | None = None
    errors: list[dict[str, str]] | None = None


class AuditEventOut(_Strict):
    """One audit event exactly as chained (``details`` decoded from its canonical JSON)."""

    seq: int = Field(ge=1)
    time: str = Field(description="RFC 3339 UTC, as hashed")
    actor: str
    action: str
    subject: str
    details: dict[str, object]
    prev_hash: str = Field(description="hex SHA-256 of the previous event (zeros for seq 1)")
    hash: str = Field(description="hex SHA-256 of this event (docs/audit-verification.md)")


class AuditEventPage(_Strict):
    items: list[AuditEventOut] = Field(description="oldest first")
    next_after: int | None = Field(
        description="pass as ?after= for the next page; null when this page reached the head"
    )


class AuditVerifyOut(_Strict):
    """The outcome of verifying the live chain, its checkpoints and its witness file."""

    ok: bool
    events: int = Field(description="events verified (before the first problem)")
    checkpoints: int = Field(description="checkpoint signatures verified")
    head_seq: int
    last_checkpoint_seq: int | None
    last_checkpoint_time: str | None
    unsigned_events: int = Field(description="events after the newest verified checkpoint")
    witnessed: int = Field(description="witness file lines that matched a stored checkpoint")
    first_bad_seq: int | None
    problem: str | None = Field(description="what is wrong at first_bad_seq")
    warnings: list[str]
    seconds: float = Field(description="time the verification took")
