"""ACME (RFC 8555) under ``/acme``: directory, nonces and accounts (the first slice).

Served on the HTTPS listener (the plain-HTTP surface refuses ``/acme``). Every response to a POST
and every error carries a fresh ``Replay-Nonce`` and a ``Link: <directory>;rel="index"``; errors
are ``application/problem+json`` with ``urn:ietf:params:acme:error:*`` types.

**URLs.** The directory's URLs and the expected JWS ``url`` are built from the request as the
server sees it (``request.url``: scheme, Host header, script root and path). A reverse proxy in
front must therefore preserve the Host header and tell the app the original scheme (e.g. with
werkzeug's ``ProxyFix``), or clients' signed ``url`` will not match and they get
``unauthorized``. Account URLs (the ``kid``) are ``{request.url_root}acme/acct/{id}``.

Orders, authorizations, challenges, finalize, revokeCert and ARI are not served yet; the
directory lists only what exists.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from flask import Blueprint, Response, request, url_for
from werkzeug.exceptions import HTTPException

from ca.acme import accounts
from ca.acme.errors import AcmeError, malformed
from ca.acme.jws import Jws, key_from_jwk, parse, thumbprint, verify
from ca.authority import Authority
from ca.errors import CAError, HsmUnavailable, StoreError
from ca.store import acme as store
from ca.store.acme import AccountRow

JOSE_JSON = "application/jose+json"
PROBLEM_JSON = "application/problem+json"


def acme_blueprint(authority: Callable[[], Authority]) -> Blueprint:
    """The ``/acme`` blueprint over the process's Authority."""
    bp = Blueprint("acme", __name__, url_prefix="/acme")

    def auth() -> Authority:
        return authority()

    # Helpers ----------------------------------------------------------------------------------

    def fresh_nonce() -> str:
        a = auth()
        return store.issue_nonce(a.db, a.now(), a.config.acme.nonce_lifetime_seconds)

    def index_link() -> str:
        return f'<{url_for("acme.directory", _external=True)}>;rel="index"'

    def account_url(account_id: int) -> str:
        return url_for("acme.account", account_id=account_id, _external=True)

    def reply(
        body: dict[str, Any] | None, status: int = 200, location: str | None = None
    ) -> Response:
        resp = Response(
            json.dumps(body) if body is not None else b"",
            status=status,
            mimetype="application/json" if body is not None else None,
        )
        resp.headers["Replay-Nonce"] = fresh_nonce()
        resp.headers["Link"] = index_link()
        resp.headers["Cache-Control"] = "no-store"
        if location:
            resp.headers["Location"] = location
        return resp

    def read_body(limit: int) -> bytes:
        if request.mimetype != JOSE_JSON:
            raise AcmeError("malformed", f"the Content-Type must be {JOSE_JSON}", 415)
        if request.content_length is not None and request.content_length > limit:
            raise AcmeError("malformed", f"the body is larger than {limit} bytes", 413)
        return request.get_data(cache=False)

    def authenticated(expect: Literal["jwk", "kid"]) -> tuple[Jws, AccountRow | None]:
        """Parse the JWS, use its nonce, verify its signature; the account for ``kid``."""
        a = auth()
        cfg = a.config.acme
        jws = parse(read_body(cfg.max_jws_bytes), request.url, cfg.max_jws_bytes)
        if expect == "jwk" and jws.jwk is None:
            raise malformed("this resource is signed with a jwk, not a kid")
        if expect == "kid" and jws.kid is None:
            raise malformed("this resource is signed with a kid (the account URL), not a jwk")
        if not store.use_nonce(a.db, jws.nonce, a.now(), cfg.nonce_lifetime_seconds):
            raise AcmeError("badNonce", "the nonce is unknown, used or expired")
        if jws.kid is None:
            verify(jws)
            return jws, None
        account = account_of_kid(jws.kid)
        verify(jws, key_from_jwk(account.jwk))
        if account.status != "valid":
            raise AcmeError("unauthorized", f"the account is {account.status}")
        return jws, account

    def account_of_kid(kid: str) -> AccountRow:
        prefix = request.url_root + "acme/acct/"
        if not kid.startswith(prefix):
            raise malformed(f"kid must be an account URL of this server ({prefix}ID)")
        rest = kid[len(prefix) :]
        account = None
        if rest.isascii() and rest.isdigit() and len(rest) <= 18:
            account = store.get_account(auth().db, int(rest))
        if account is None:
            raise AcmeError("accountDoesNotExist", "no such account")
        return account

    # Errors -----------------------------------------------------------------------------------

    def problem(exc: AcmeError, headers: dict[str, str] | None = None) -> Response:
        resp = Response(json.dumps(exc.problem()), status=exc.status, mimetype=PROBLEM_JSON)
        try:
            resp.headers["Replay-Nonce"] = fresh_nonce()
        except CAError:
            pass  # the store is down: the error is what matters
        resp.headers["Link"] = index_link()
        resp.headers["Cache-Control"] = "no-store"
        for name, value in (headers or {}).items():
            resp.headers[name] = value
        return resp

    @bp.errorhandler(AcmeError)
    def acme_error(exc: AcmeError) -> Response:
        if isinstance(exc, accounts.KeyInUse):
            return problem(exc, {"Location": account_url(exc.account_id)})
        return problem(exc)

    @bp.errorhandler(CAError)
    def core_error(exc: CAError) -> Response:
        if isinstance(exc, (HsmUnavailable, StoreError)):
            err = AcmeError("serverInternal", "the CA is temporarily unavailable", 503)
            return problem(err, {"Retry-After": "5"})
        return problem(AcmeError("serverInternal", "internal error", 500))

    @bp.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status >= 500:
            return problem(AcmeError("serverInternal", "internal error", status))
        return problem(AcmeError("malformed", exc.description or exc.name, status))

    @bp.before_request
    def _enabled() -> Response | None:
        if not auth().config.acme.enabled:
            resp = Response(
                json.dumps({"type": "about:blank", "status": 404, "detail": "ACME is disabled"}),
                status=404,
                mimetype=PROBLEM_JSON,
            )
            return resp
        return None

    # Resources --------------------------------------------------------------------------------

    @bp.get("/directory")
    def directory() -> Response:
        a = auth()
        cfg = a.config.acme
        meta: dict[str, Any] = {}
        if cfg.terms_of_service_url:
            meta["termsOfService"] = cfg.terms_of_service_url
        if cfg.website:
            meta["website"] = cfg.website
        meta["externalAccountRequired"] = False
        meta["profiles"] = {
            name: p.description or name for name, p in sorted(a.config.profiles.items())
        }
        body = {
            "newNonce": url_for("acme.new_nonce", _external=True),
            "newAccount": url_for("acme.new_account", _external=True),
            "keyChange": url_for("acme.key_change", _external=True),
            "meta": meta,
        }
        resp = Response(json.dumps(body), mimetype="application/json")
        resp.headers["Cache-Control"] = "public, max-age=300"
        return resp

    @bp.route("/new-nonce", methods=["GET", "HEAD"])
    def new_nonce() -> Response:
        # RFC 8555 §7.2: HEAD answers 200, GET 204; neither is cached.
        resp = Response(status=200 if request.method == "HEAD" else 204)
        resp.headers["Replay-Nonce"] = fresh_nonce()
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["Link"] = index_link()
        return resp

    @bp.post("/new-account")
    def new_account() -> Response:
        jws, _ = authenticated("jwk")
        assert jws.jwk is not None and jws.thumbprint is not None
        payload = jws.json()
        a = auth()
        only_existing = _bool(payload, "onlyReturnExisting")
        existing = store.account_by_thumbprint(a.db, jws.thumbprint)
        if existing is not None:
            if existing.status != "valid":
                raise AcmeError("unauthorized", f"the account of this key is {existing.status}")
            return reply(accounts.account_json(existing), 200, account_url(existing.id))
        if only_existing:
            raise AcmeError("accountDoesNotExist", "no account has this key")
        if payload.get("externalAccountBinding") is not None:
            raise malformed("external account binding is not supported yet")
        contact = accounts.check_contact(payload.get("contact") or [])
        agreed = _bool(payload, "termsOfServiceAgreed")
        if a.config.acme.terms_of_service_url and not agreed:
            raise malformed("the terms of service must be agreed to (termsOfServiceAgreed)")
        done = accounts.find_or_create(a.db, a.now(), jws.jwk, jws.thumbprint, contact, agreed)
        return reply(
            accounts.account_json(done.account),
            201 if done.created else 200,
            account_url(done.account.id),
        )

    @bp.post("/acct/<int:account_id>")
    def account(account_id: int) -> Response:
        jws, acct = authenticated("kid")
        assert acct is not None
        if acct.id != account_id:
            raise AcmeError("unauthorized", "the kid is not the account of this URL")
        a = auth()
        if not jws.post_as_get:
            payload = jws.json()
            status = payload.get("status")
            if status is not None and status not in ("valid", "deactivated"):
                raise malformed("status may only be set to deactivated")
            contact = payload.get("contact")
            if contact is not None:
                accounts.update_contact(a.db, a.now(), acct, accounts.check_contact(contact))
            if _bool(payload, "termsOfServiceAgreed"):
                accounts.agree_to_terms(a.db, a.now(), acct)
            if status == "deactivated":
                accounts.deactivate(a.db, a.now(), acct)
        current = store.get_account(a.db, acct.id)
        assert current is not None
        return reply(accounts.account_json(current), 200, account_url(acct.id))

    @bp.post("/key-change")
    def key_change() -> Response:
        outer, acct = authenticated("kid")
        assert acct is not None and outer.kid is not None
        a = auth()
        # RFC 8555 §7.3.5: the payload is a JWS by the new key, with a jwk, no nonce, same url.
        inner = parse(outer.payload, request.url, a.config.acme.max_jws_bytes, inner=True)
        if inner.jwk is None or inner.thumbprint is None:
            raise malformed("the inner JWS must carry the new key as jwk")
        verify(inner)
        body = inner.json()
        if body.get("account") != outer.kid:
            raise AcmeError("unauthorized", "the inner account is not the outer kid")
        old_key = body.get("oldKey")
        if not isinstance(old_key, dict):
            raise malformed("the inner payload needs oldKey (a JWK)")
        try:
            old_thumb = thumbprint(old_key)
        except AcmeError:
            raise malformed("oldKey is not a valid public JWK") from None
        if old_thumb != acct.key_thumbprint:
            raise AcmeError("unauthorized", "oldKey is not the account's current key")
        if inner.thumbprint == acct.key_thumbprint:
            raise malformed("the new key is the account's current key")
        accounts.change_key(a.db, a.now(), acct, inner.jwk, inner.thumbprint)
        current = store.get_account(a.db, acct.id)
        assert current is not None
        return reply(accounts.account_json(current), 200, account_url(acct.id))

    return bp


def _bool(payload: dict[str, Any], name: str) -> bool:
    value = payload.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise malformed(f"{name} must be true or false")
    return value
