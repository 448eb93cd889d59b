"""The REST enrollment API (``/api/v1``)."""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Response, jsonify

from ca.authority import Authority
from ca.batching import IssuanceQueue
from web.api.openapi import openapi_document
from web.api.views import api_blueprint as _views


def api_blueprint(
    authority: Callable[[], Authority], queue: Callable[[], IssuanceQueue]
) -> Blueprint:
    """The blueprint with every endpoint, plus the unauthenticated OpenAPI document."""
    bp = _views(authority, queue)

    @bp.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(openapi_document())

    return bp


__all__ = ["api_blueprint"]
