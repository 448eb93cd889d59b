"""ACME problem types (RFC 8555 §6.7): ``urn:ietf:params:acme:error:<kind>``."""

from __future__ import annotations

from typing import Any

#: The URN prefix of every ACME error type.
ACME_ERROR_PREFIX = "urn:ietf:params:acme:error:"

#: kind → default HTTP status.
STATUS: dict[str, int] = {
    "accountDoesNotExist": 400,
    "badNonce": 400,
    "badPublicKey": 400,
    "badSignatureAlgorithm": 400,
    "badCSR": 400,
    "connection": 400,
    "incorrectResponse": 400,
    "rejectedIdentifier": 400,
    "unsupportedIdentifier": 400,
    "invalidContact": 400,
    "malformed": 400,
    "unsupportedContact": 400,
    "alreadyRevoked": 400,
    "badRevocationReason": 400,
    "alreadyReplaced": 409,  # RFC 9773 §7.4
    "orderNotReady": 403,
    "unauthorized": 403,
    "userActionRequired": 403,
    "rateLimited": 429,
    "serverInternal": 500,
}


class AcmeError(Exception):
    """An ACME error: ``kind`` (the last part of the type URN), a safe ``detail`` and a status.

    ``extra`` members go into the problem document (e.g. ``algorithms`` for
    badSignatureAlgorithm, RFC 8555 §6.2); ``headers`` go on the response (e.g. ``Retry-After``
    for rateLimited).
    """

    def __init__(
        self,
        kind: str,
        detail: str,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.status = status if status is not None else STATUS.get(kind, 400)
        self.headers = dict(headers or {})
        self.extra = extra

    @property
    def type(self) -> str:
        return ACME_ERROR_PREFIX + self.kind

    def problem(self) -> dict[str, Any]:
        """The problem document (RFC 7807/9457 members plus ``extra``)."""
        body: dict[str, Any] = {"type": self.type, "detail": self.detail, "status": self.status}
        body.update(self.extra)
        return body

    def __repr__(self) -> str:
        return f"AcmeError({self.kind!r}, {self.detail!r}, {self.status})"


def malformed(detail: str) -> AcmeError:
    return AcmeError("malformed", detail)
