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

from flask import Blueprint, Response, request, url_for
from werkzeug.exceptions import HTTPException

from ca.acme import accounts as core_accounts
from ca.acme.errors import AcmeError
from ca.authority import Authority
from ca.errors import CAError, HsmUnavailable, StoreError
from web.acme import accounts, orders
from web.acme.http import PROBLEM_JSON, AcmeHttp


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
        return h.problem(AcmeError("malformed", exc.description or exc.name, status))

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
    return bp
