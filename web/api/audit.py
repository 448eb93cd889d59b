"""``GET /api/v1/audit/export``: the audit export bundle (``ca.audit_export``), streamed.

For clients with the ``audit`` role. Like every API handler: authenticate (401), check the role
(403, audited as ``api.denied``), parse the query strictly (400), then act. The export itself is
audited (``audit.exported``: range and requester) before the first byte is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from flask import Blueprint, Response, request

from ca.audit_export import (
    MEDIA_TYPE,
    Bound,
    bundle_chunks,
    parse_bound,
    record_export,
    resolve_range,
)
from ca.authority import Authority
from ca.errors import BadRequest, Forbidden
from web.api.auth import TokenCache, Unauthorized, current_requester

log = logging.getLogger("hsmca.api")

_PARAMS = ("from", "to")


def register_audit_routes(bp: Blueprint, authority: Callable[[], Authority]) -> None:
    """Add the audit endpoints to the ``/api/v1`` blueprint (whose error handlers they use)."""
    tokens = TokenCache()

    @bp.get("/audit/export")
    def audit_export() -> Response:
        auth = authority()
        try:
            requester = current_requester(auth, tokens)
        except Unauthorized:
            log.info("api: unauthenticated %s %s", request.method, request.path)
            raise
        if not requester.has_role("audit"):
            detail = (
                f"client {requester.name!r} lacks the 'audit' role needed to export the audit log"
            )
            auth.audit(
                requester.name,
                "api.denied",
                "export the audit log",
                {"reason": detail, "role": "audit"},
            )
            raise Forbidden(detail)
        since, until = _bounds()
        with auth.db.read() as conn:
            rng = resolve_range(conn, since, until)
        record_export(auth, requester.name, rng, via="api")
        resp = Response(_logged(bundle_chunks(auth, rng)), mimetype=MEDIA_TYPE)
        resp.headers["Content-Disposition"] = f'attachment; filename="{rng.filename()}"'
        resp.headers["Cache-Control"] = "no-store"
        return resp


def _bounds() -> tuple[Bound | None, Bound | None]:
    """``from`` and ``to`` of the query (each a seq or an RFC 3339 time); 400 for anything else."""
    unknown = sorted(set(request.args) - set(_PARAMS))
    if unknown:
        raise BadRequest(f"unknown query parameter(s): {', '.join(unknown)} (use from, to)")
    bounds: list[Bound | None] = []
    for name in _PARAMS:
        values = request.args.getlist(name)
        if len(values) > 1:
            raise BadRequest(f"{name} given more than once")
        bounds.append(parse_bound(values[0], name) if values else None)
    return bounds[0], bounds[1]


def _logged(chunks: Iterator[bytes]) -> Iterator[bytes]:
    # Once streaming has begun a failure cannot become a problem document: the download is cut
    # short (without its manifest, so it never verifies) and the cause goes to the log.
    try:
        yield from chunks
    except Exception:
        log.exception("api: audit export failed while streaming")
        raise
