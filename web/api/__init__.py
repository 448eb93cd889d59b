"""The REST enrollment API (``/api/v1``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from flask import Blueprint, Response, jsonify

from ca.authority import Authority
from ca.batching import IssuanceQueue
from ca.revocation import AfterRevoke
from web.api.audit import register_audit_routes
from web.api.openapi import openapi_document
from web.api.views import api_blueprint as _views


def api_blueprint(
    authority: Callable[[], Authority],
    queue: Callable[[], IssuanceQueue],
    after_revoke: Sequence[AfterRevoke] = (),
) -> Blueprint:
    """The blueprint with every endpoint, plus the unauthenticated OpenAPI document.

    ``after_revoke``: hooks run after each revocation commits (see ``web/hooks.py``).
    """
    bp = _views(authority, queue, after_revoke)
    register_audit_routes(bp, authority)  # /audit/export (web/api/audit.py)

    @bp.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(openapi_document())

    return bp


__all__ = ["api_blueprint"]
