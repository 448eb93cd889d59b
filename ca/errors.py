"""Typed errors of the CA core. The web edge maps them to problem documents; nothing here knows HTTP."""

from __future__ import annotations


class CAError(Exception):
    """Base of every error the core raises on purpose. ``str(err)`` is safe to show to a user."""

    #: Short machine-readable kind, used for problem types and audit records.
    kind = "serverInternal"


class ConfigError(CAError):
    """The configuration is invalid (names the offending key)."""

    kind = "config"


class BadCSR(CAError):
    """The CSR cannot be parsed, its signature is wrong, or its key or content is unacceptable."""

    kind = "badCSR"


class BadPublicKey(BadCSR):
    """The CSR's public key is of a type, size or curve we do not certify."""

    kind = "badPublicKey"


class UnknownProfile(CAError):
    """No issuance profile of that name is configured."""

    kind = "unknownProfile"


class NotFound(CAError):
    """The named object (CA, certificate) does not exist."""

    kind = "notFound"


class BadRequest(CAError):
    """The request is malformed or asks for something undefined (e.g. an unknown reason code)."""

    kind = "malformed"


class Conflict(CAError):
    """The request conflicts with existing state (e.g. a CA name already taken)."""

    kind = "conflict"


class HsmUnavailable(CAError):
    """The HSM cannot be used right now: token missing, session lost, or login refused.

    Callers show a clear message (and later answer 503 with Retry-After). The message never carries a PIN.
    """

    kind = "hsmUnavailable"


class HsmKeyNotFound(CAError):
    """The token is reachable but holds no key with the given label/ID."""

    kind = "hsmKeyNotFound"


class KeyMismatch(CAError):
    """The key in the token does not match the CA certificate's public key."""

    kind = "keyMismatch"


class AuditChainBroken(CAError):
    """The audit chain failed verification; ``seq`` names the first bad event."""

    kind = "auditChainBroken"

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"audit chain broken at seq {seq}: {reason}")
        self.seq = seq
        self.reason = reason


class StoreError(CAError):
    """The database refused a write; the change did not happen."""

    kind = "storeError"


class PolicyDenied(CAError):
    """The request breaks issuance policy; ``violations`` lists every broken rule."""

    kind = "policyDenied"

    def __init__(
        self,
        message: str,
        violations: tuple[object, ...] = (),
        details: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.violations = violations
        #: What the audit record keeps of the decision (profile hash, rules matched and failed).
        self.details = details or {}


class Forbidden(CAError):
    """The requester lacks the role or permission for this action."""

    kind = "forbidden"


class Expired(CAError):
    """The thing acted on (e.g. a pending request) has expired."""

    kind = "expired"
