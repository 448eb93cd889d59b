"""ACME (RFC 8555) under ``/acme``: directory, nonces, accounts, orders, authorizations,
http-01 challenges, finalize and certificate download.

Served on the HTTPS listener (the plain-HTTP surface refuses ``/acme``). Every response to a POST
and every error carries a fresh ``Replay-Nonce`` and a ``Link: <directory>;rel="index"``; errors
are ``application/problem+json`` with ``urn:ietf:params:acme:error:*`` types.

**URLs.** The directory's URLs and the expected JWS ``url`` are built from the request as the
server sees it (``request.url``: scheme, Host header, script root and path). A reverse proxy in
front must therefore preserve the Host header and tell the app the original scheme (e.g. with
werkzeug's ``ProxyFix``), or clients' signed ``url`` will not match and they get
``unauthorized``. Account URLs (the ``kid``) are ``{request.url_root}acme/acct/{id}``.

Challenge validation runs in a thread pool of the web process (:data:`_VALIDATORS`): the
challenge request answers at once with the challenge ``processing``; authorization and order
polls show the outcome when the check is done. revokeCert and ARI are not served yet; the
directory lists only what exists.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import Blueprint, Response, request, url_for
from werkzeug.exceptions import HTTPException

from ca.acme import accounts, http01, orders
from ca.acme.errors import AcmeError, malformed
from ca.acme.jws import Jws, key_from_jwk, parse, thumbprint, verify
from ca.authority import Authority
from ca.errors import CAError, HsmUnavailable, StoreError
from ca.store import acme as store
from ca.store.acme import AccountRow, AuthzRow, ChallengeRow, OrderRow

JOSE_JSON = "application/jose+json"
PROBLEM_JSON = "application/problem+json"
PEM_CHAIN = "application/pem-certificate-chain"

log = logging.getLogger(__name__)

#: http-01 validations run here, in the background of the web process.
_VALIDATORS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="acme-http01")


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
            "newOrder": url_for("acme.new_order", _external=True),
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

    # Orders -------------------------------------------------------------------------------------

    def order_url(order_id: int) -> str:
        return url_for("acme.order", order_id=order_id, _external=True)

    def authz_url(authz_id: int) -> str:
        return url_for("acme.authz", authz_id=authz_id, _external=True)

    def challenge_url(challenge_id: int) -> str:
        return url_for("acme.challenge", challenge_id=challenge_id, _external=True)

    def order_json(order: OrderRow) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": order.status,
            "expires": _time(order.expires),
            "identifiers": order.identifiers,
            "authorizations": [authz_url(i) for i in order.authz_ids],
            "finalize": url_for("acme.finalize", order_id=order.id, _external=True),
            "profile": order.profile,
        }
        if order.error:
            body["error"] = order.error
        if order.certificate_serial and order.status == "valid":
            body["certificate"] = url_for(
                "acme.certificate", serial=order.certificate_serial, _external=True
            )
        return body

    def challenge_json(ch: ChallengeRow) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": ch.type,
            "url": challenge_url(ch.id),
            "status": ch.status,
            "token": ch.token,
        }
        if ch.validated_at is not None and ch.status == "valid":
            body["validated"] = _time(ch.validated_at)
        if ch.error:
            body["error"] = ch.error
        return body

    def authz_json(authz: AuthzRow) -> dict[str, Any]:
        body: dict[str, Any] = {
            "identifier": {"type": authz.identifier_type, "value": authz.identifier_value},
            "status": orders.authz_status(authz.status, authz.expires, auth().now()),
            "expires": _time(authz.expires),
            "challenges": [challenge_json(c) for c in authz.challenges],
        }
        if authz.wildcard:
            body["wildcard"] = True
        return body

    def owned_order(order_id: int, account: AccountRow) -> OrderRow:
        order = store.get_order(auth().db, order_id)
        if order is None or order.account_id != account.id:
            raise AcmeError("malformed", "no such order", 404)
        return order

    def owned_authz(authz_id: int, account: AccountRow) -> AuthzRow:
        authz = store.get_authz(auth().db, authz_id)
        if authz is None or authz.account_id != account.id:
            raise AcmeError("malformed", "no such authorization", 404)
        return authz

    @bp.post("/new-order")
    def new_order() -> Response:
        jws, acct = authenticated("kid")
        assert acct is not None
        payload = jws.json()
        if payload.get("notBefore") is not None or payload.get("notAfter") is not None:
            raise malformed("notBefore and notAfter are not supported; the profile sets validity")
        profile = payload.get("profile") or "server"  # draft-aaron-acme-profiles
        if not isinstance(profile, str):
            raise malformed("profile must be a profile name")
        order = orders.create_order(auth(), acct, payload.get("identifiers"), profile)
        return reply(order_json(order), 201, order_url(order.id))

    @bp.post("/order/<int:order_id>")
    def order(order_id: int) -> Response:
        jws, acct = authenticated("kid")
        assert acct is not None
        if not jws.post_as_get:
            raise malformed("an order is read with POST-as-GET (an empty payload)")
        a = auth()
        current = orders.refresh_order(a.db, owned_order(order_id, acct), a.now())
        resp = reply(order_json(current), 200, order_url(order_id))
        if current.status in ("pending", "processing"):
            resp.headers["Retry-After"] = "1"
        return resp

    @bp.post("/authz/<int:authz_id>")
    def authz(authz_id: int) -> Response:
        jws, acct = authenticated("kid")
        assert acct is not None
        found = owned_authz(authz_id, acct)
        if not jws.post_as_get:
            payload = jws.json()
            if payload.get("status") != "deactivated" or set(payload) != {"status"}:
                raise malformed('an authorization may only be updated to {"status": "deactivated"}')
            found = orders.deactivate_authz(auth(), acct, found)
        resp = reply(authz_json(found), 200, authz_url(authz_id))
        if any(c.status == "processing" for c in found.challenges):
            resp.headers["Retry-After"] = "1"
        return resp

    @bp.post("/chall/<int:challenge_id>")
    def challenge(challenge_id: int) -> Response:
        jws, acct = authenticated("kid")
        assert acct is not None
        a = auth()
        ch = store.get_challenge(a.db, challenge_id)
        found = owned_authz(ch.authz_id, acct) if ch is not None else None
        if ch is None or found is None:
            raise AcmeError("malformed", "no such challenge", 404)
        if jws.post_as_get:
            current = ch
        else:
            if jws.json():
                raise malformed("a challenge is answered with an empty object {}")
            started = orders.start_challenge(a, found, ch)
            current = started.challenge
            if started.validate:
                _VALIDATORS.submit(_validate, a, acct, found, current)
        resp = reply(challenge_json(current), 200)
        resp.headers["Link"] = f'{index_link()}, <{authz_url(found.id)}>;rel="up"'
        if current.status == "processing":
            resp.headers["Retry-After"] = "1"
        return resp

    @bp.post("/order/<int:order_id>/finalize")
    def finalize(order_id: int) -> Response:
        jws, acct = authenticated("kid")
        assert acct is not None
        found = owned_order(order_id, acct)
        payload = jws.json()
        csr = payload.get("csr")
        if not isinstance(csr, str) or not csr:
            raise malformed("finalize needs csr (base64url DER)")
        try:
            der = base64.urlsafe_b64decode(csr + "=" * (-len(csr) % 4))
        except (binascii.Error, ValueError):
            raise AcmeError("badCSR", "csr is not base64url") from None
        done = orders.finalize(auth(), acct, found, der)
        return reply(order_json(done), 200, order_url(order_id))

    @bp.post("/cert/<serial>")
    def certificate(serial: str) -> Response:
        jws, acct = authenticated("kid")
        assert acct is not None
        if not jws.post_as_get:
            raise malformed("a certificate is downloaded with POST-as-GET (an empty payload)")
        a = auth()
        found = store.order_of_certificate(a.db, serial) if len(serial) <= 64 else None
        if found is None or found.account_id != acct.id:
            raise AcmeError("malformed", "no such certificate", 404)
        row = a.db.get_certificate(serial)
        enc = serialization.Encoding.PEM
        leaf = x509.load_der_x509_certificate(row.der)
        pem = b"".join(c.public_bytes(enc) for c in (leaf, *a.issuer_chain(row.issuer_name)))
        resp = Response(pem, status=200, mimetype=PEM_CHAIN)
        resp.headers["Replay-Nonce"] = fresh_nonce()
        resp.headers["Link"] = index_link()
        resp.headers["Cache-Control"] = "no-store"
        return resp

    return bp


def _validate(auth: Authority, account: AccountRow, authz: AuthzRow, ch: ChallengeRow) -> None:
    """Run one http-01 validation and record its outcome (in a validator thread)."""
    cfg = auth.config.acme
    try:
        error = http01.validate(
            authz.identifier_type,
            authz.identifier_value,
            ch.token,
            orders.key_authorization(ch.token, account.key_thumbprint),
            port=cfg.validation_http01_port,
            resolve_to=cfg.validation_resolve_to,
        )
    except Exception as exc:  # never leave the challenge processing on a validator bug
        log.exception("http-01 validation of challenge %s failed", ch.id)
        error = f"validation failed: {type(exc).__name__}"
    try:
        orders.finish_challenge(auth, account.id, authz, ch.id, error)
    except Exception:
        log.exception("recording the http-01 outcome of challenge %s failed", ch.id)


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _bool(payload: dict[str, Any], name: str) -> bool:
    value = payload.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise malformed(f"{name} must be true or false")
    return value
