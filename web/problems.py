"""RFC 9457 problem documents (``application/problem+json``) with a stable ``type`` per kind."""

from __future__ import annotations

import json
from typing import Any

from flask import Response

from ca.errors import CAError, HsmKeyNotFound, HsmUnavailable, KeyMismatch, StoreError

#: The URI prefix of our problem types: ``urn:hsmca:problem:policy-denied`` and so on.
TYPE_PREFIX = "urn:hsmca:problem:"

#: kind → (HTTP status, type slug, title). Kinds are ``CAError.kind`` values plus the web's own.
KINDS: dict[str, tuple[int, str, str]] = {
    "badCSR": (400, "bad-csr", "The CSR is not acceptable"),
    "badPublicKey": (400, "bad-public-key", "The public key is not acceptable"),
    "unknownProfile": (400, "unknown-profile", "No such profile"),
    "malformed": (400, "malformed-request", "The request is malformed"),
    "unauthorized": (401, "unauthorized", "Authentication required"),
    "forbidden": (403, "forbidden", "Not allowed"),
    "policyDenied": (403, "policy-denied", "The issuance policy denies this request"),
    "notFound": (404, "not-found", "Not found"),
    "methodNotAllowed": (405, "method-not-allowed", "Method not allowed"),
    "notAcceptable": (406, "not-acceptable", "No acceptable representation"),
    "conflict": (409, "conflict", "Conflict with the current state"),
    "expired": (409, "expired", "Expired"),
    "tooLarge": (413, "request-too-large", "Request body too large"),
    "unsupportedMediaType": (415, "unsupported-media-type", "Unsupported content type"),
    "config": (500, "server-internal", "Internal server error"),
    "serverInternal": (500, "server-internal", "Internal server error"),
    "unavailable": (503, "unavailable", "The CA is temporarily unavailable"),
}
_OUTAGES = (HsmUnavailable, StoreError, HsmKeyNotFound, KeyMismatch)


def problem(
    status: int, title: str, detail: str, type_: str = "about:blank", **extra: Any
) -> Response:
    """A problem+json response; 5xx details stay generic so nothing internal leaks."""
    body: dict[str, Any] = {"type": type_, "title": title, "status": status, "detail": detail}
    body.update({k: v for k, v in extra.items() if v is not None})
    return Response(json.dumps(body), status=status, mimetype="application/problem+json")


def problem_of(kind: str, detail: str, **extra: Any) -> Response:
    """The problem document of a kind from :data:`KINDS`."""
    status, slug, title = KINDS.get(kind, KINDS["serverInternal"])
    if status >= 500:
        detail = title if kind != "unavailable" else detail
    resp = problem(status, title, detail, TYPE_PREFIX + slug, **extra)
    if status == 503:
        resp.headers["Retry-After"] = "5"
    return resp


def problem_for(exc: CAError) -> Response:
    """Render a core error. Outages become 503 + Retry-After without internal detail."""
    if isinstance(exc, _OUTAGES):
        return problem_of("unavailable", "the CA is temporarily unavailable; retry shortly")
    extra: dict[str, Any] = {}
    violations = getattr(exc, "violations", ())
    if violations:
        extra["violations"] = [
            v.as_dict() if hasattr(v, "as_dict") else {"rule": "policy", "detail": str(v)}
            for v in violations
        ]
    kind = exc.kind if exc.kind in KINDS else "serverInternal"
    return problem_of(kind, str(exc), **extra)
