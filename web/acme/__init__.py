"""ACME (RFC 8555) under ``/acme``: directory, nonces, accounts, orders, authorizations,
challenges, finalize and certificate download.

Served on the HTTPS listener (the plain-HTTP surface refuses ``/acme``). Every response to a POST
and every error carries a fresh ``Replay-Nonce`` and a ``Link: <directory>;rel="index"``; errors
are ``application/problem+json`` with ``urn:ietf:params:acme:error:*`` types.

**URLs.** The directory's URLs and the expected JWS ``url`` are built from the request as the
server sees it (``request.url``: scheme, Host header, script root and path). A reverse proxy in
front must therefore preserve the Host header and tell the app the original scheme (e.g. with
werkzeug's ``ProxyFix``), or clients' signed ``url`` will not match and they get
``unauthorized``. Account URLs (the ``kid``) are ``{request.url_root}acme/acct/{id}``.

Challenge validation runs in a thread pool of the web process (``web/acme/orders.py``): the
challenge request answers at once with the challenge ``processing``; authorization and order
polls show the outcome when the check is done.

The routes live in one module per group (``accounts``, ``orders``, ...), each registering
itself on the blueprint with the shared :class:`~web.acme.http.AcmeHttp`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, request, url_for
from werkzeug.exceptions import HTTPException

from ca.acme import accounts as core_accounts
from ca.acme.errors import AcmeError
from ca.authority import Authority
from ca.errors import CAError, HsmUnavailable, StoreError
from web.acme import accounts, orders, renewal, revocation
from web.acme.http import MAX_ID, PROBLEM_JSON, AcmeHttp

#: ``app.extensions`` key of the blueprint's answer to routing errors under /acme.
_ROUTING_ERROR = "hsmca.acme.routing_error"


def routing_problem(exc: HTTPException) -> Response | None:
    """The ACME problem for a 404/405 that URL routing raised under ``/acme``; None elsewhere.

    Routing fails before a blueprint is chosen, so the blueprint's own error handlers never see
    such errors: the app's 404/405 handlers ask here first, so that every ACME URL answers with
    an ACME problem and a fresh nonce (RFC 8555 §6.7), unknown ones included.
    """
    if request.path != "/acme" and not request.path.startswith("/acme/"):
        return None
    handler: Callable[[HTTPException], Response] | None = current_app.extensions.get(_ROUTING_ERROR)
    return handler(exc) if handler is not None else None


def acme_blueprint(authority: Callable[[], Authority]) -> Blueprint:
    """The ``/acme`` blueprint over the process's Authority."""
    bp = Blueprint("acme", __name__, url_prefix="/acme")
    h = AcmeHttp(authority)
    h.directory["newNonce"] = "acme.new_nonce"

    @bp.errorhandler(AcmeError)
    def acme_error(exc: AcmeError) -> Response:
        if isinstance(exc, core_accounts.KeyInUse):
            return h.problem(exc, {"Location": h.account_url(exc.account_id)})
        return h.problem(exc, exc.headers)

    @bp.errorhandler(CAError)
    def core_error(exc: CAError) -> Response:
        if isinstance(exc, (HsmUnavailable, StoreError)):
            err = AcmeError("serverInternal", "the CA is temporarily unavailable", 503)
            return h.problem(err, {"Retry-After": "5"})
        return h.problem(AcmeError("serverInternal", "internal error", 500))

    @bp.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status >= 500:
            return h.problem(AcmeError("serverInternal", "internal error", status))
        detail = {
            404: "no such ACME resource",
            405: f"{request.method[:10]} is not allowed on this ACME resource",
        }.get(status, exc.description or exc.name)
        # A 405 says which methods the resource has (RFC 9110 §15.5.6).
        allow = {name: value for name, value in exc.get_headers() if name == "Allow"}
        return h.problem(AcmeError("malformed", detail, status), allow)

    def routing_error(exc: HTTPException) -> Response:
        return _enabled() or http_error(exc)

    bp.record_once(lambda state: state.app.extensions.setdefault(_ROUTING_ERROR, routing_error))

    @bp.url_value_preprocessor
    def _ids(endpoint: str | None, values: dict[str, Any] | None) -> None:
        # An id no row can have (0, or past the 32-bit id columns) names nothing: answer 404
        # without asking the database, which would overflow (SQLite 64 bits, PostgreSQL 32).
        if not h.auth().config.acme.enabled:
            return  # _enabled answers
        for name, value in (values or {}).items():
            if name.endswith("_id") and isinstance(value, int) and not 0 < value <= MAX_ID:
                raise AcmeError("malformed", "no such resource", 404)

    @bp.before_request
    def _enabled() -> Response | None:
        if not h.auth().config.acme.enabled:
            return Response(
                json.dumps({"type": "about:blank", "status": 404, "detail": "ACME is disabled"}),
                status=404,
                mimetype=PROBLEM_JSON,
            )
        return None

    @bp.get("/directory")
    def directory() -> Response:
        a = h.auth()
        cfg = a.config.acme
        meta: dict[str, Any] = {}
        if cfg.terms_of_service_url:
            meta["termsOfService"] = cfg.terms_of_service_url
        if cfg.website:
            meta["website"] = cfg.website
        meta["externalAccountRequired"] = cfg.require_eab
        meta["profiles"] = {
            name: a.config.profiles[name].description or name for name in a.config.acme_profiles
        }
        body: dict[str, Any] = {
            key: url_for(endpoint, _external=True) for key, endpoint in h.directory.items()
        }
        body["meta"] = meta
        resp = Response(json.dumps(body), mimetype="application/json")
        resp.headers["Cache-Control"] = "public, max-age=300"
        return resp

    @bp.route("/new-nonce", methods=["GET", "HEAD"])
    def new_nonce() -> Response:
        # RFC 8555 §7.2: HEAD answers 200, GET 204; neither is cached.
        resp = h.decorate(Response(status=200 if request.method == "HEAD" else 204))
        return resp

    accounts.register(bp, h)
    orders.register(bp, h)
    revocation.register(bp, h)
    renewal.register(bp, h)
    return bp
