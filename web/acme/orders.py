"""ACME orders: ``newOrder``, orders, authorizations, challenges, ``finalize`` and certificate
download (RFC 8555 §7.4–7.5)."""

from __future__ import annotations

import base64
import binascii
import logging
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import Blueprint, Response

from ca.acme import orders, validation
from ca.acme.errors import AcmeError, malformed
from ca.authority import Authority
from ca.store import acme as store
from ca.store.acme import AccountRow, AuthzRow, ChallengeRow
from web.acme.http import PEM_CHAIN, AcmeHttp

log = logging.getLogger(__name__)

#: Challenge validations run here, in the background of the web process.
_VALIDATORS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="acme-validate")


def register(bp: Blueprint, h: AcmeHttp) -> None:
    """Add the order, authorization, challenge and certificate routes to ``bp``."""
    h.directory["newOrder"] = "acme.new_order"

    @bp.post("/new-order")
    def new_order() -> Response:
        jws, acct = h.authenticated("kid")
        assert acct is not None
        payload = jws.json()
        if payload.get("notBefore") is not None or payload.get("notAfter") is not None:
            raise malformed("notBefore and notAfter are not supported; the profile sets validity")
        allowed = h.auth().config.acme_profiles
        profile = payload.get("profile") or allowed[0]  # draft-aaron-acme-profiles
        if not isinstance(profile, str):
            raise malformed("profile must be a profile name")
        if profile not in allowed:
            raise AcmeError(
                "invalidProfile",
                f"profile {profile[:64]!r} is not offered (directory meta.profiles)",
            )
        order = orders.create_order(
            h.auth(), acct, payload.get("identifiers"), profile, replaces=payload.get("replaces")
        )
        return h.reply(h.order_json(order), 201, h.order_url(order.id))

    @bp.post("/order/<int:order_id>")
    def order(order_id: int) -> Response:
        jws, acct = h.authenticated("kid")
        assert acct is not None
        if not jws.post_as_get:
            raise malformed("an order is read with POST-as-GET (an empty payload)")
        a = h.auth()
        current = orders.refresh_order(a.db, h.owned_order(order_id, acct), a.now())
        resp = h.reply(h.order_json(current), 200, h.order_url(order_id))
        if current.status in ("pending", "processing"):
            resp.headers["Retry-After"] = "1"
        return resp

    @bp.post("/authz/<int:authz_id>")
    def authz(authz_id: int) -> Response:
        jws, acct = h.authenticated("kid")
        assert acct is not None
        found = h.owned_authz(authz_id, acct)
        if not jws.post_as_get:
            payload = jws.json()
            # Only status matters: clients such as lego send the whole (empty) resource.
            if payload.get("status") != "deactivated":
                raise malformed('an authorization may only be updated to {"status": "deactivated"}')
            found = orders.deactivate_authz(h.auth(), acct, found)
        resp = h.reply(h.authz_json(found), 200, h.authz_url(authz_id))
        if any(c.status == "processing" for c in found.challenges):
            resp.headers["Retry-After"] = "1"
        return resp

    @bp.post("/chall/<int:challenge_id>")
    def challenge(challenge_id: int) -> Response:
        jws, acct = h.authenticated("kid")
        assert acct is not None
        a = h.auth()
        ch = store.get_challenge(a.db, challenge_id)
        found = h.owned_authz(ch.authz_id, acct) if ch is not None else None
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
                check = _VALIDATORS.submit(_validate, a, current, found, acct)
                # A check that is done within a moment answers in this response, sparing the
                # client a poll (Retry-After is whole seconds); a slow one goes on behind it.
                wait = a.config.acme.validation_answer_wait_ms / 1000
                if wait > 0:
                    try:
                        current = check.result(timeout=wait) or current
                    except FutureTimeout:
                        pass
        resp = h.reply(h.challenge_json(current), 200)
        resp.headers["Link"] = f'{h.index_link()}, <{h.authz_url(found.id)}>;rel="up"'
        if current.status == "processing":
            resp.headers["Retry-After"] = "1"
        return resp

    @bp.post("/order/<int:order_id>/finalize")
    def finalize(order_id: int) -> Response:
        jws, acct = h.authenticated("kid")
        assert acct is not None
        found = h.owned_order(order_id, acct)
        payload = jws.json()
        csr = payload.get("csr")
        if not isinstance(csr, str) or not csr:
            raise malformed("finalize needs csr (base64url DER)")
        try:
            der = base64.urlsafe_b64decode(csr + "=" * (-len(csr) % 4))
        except (binascii.Error, ValueError):
            raise AcmeError("badCSR", "csr is not base64url") from None
        done = orders.finalize(h.auth(), acct, found, der)
        return h.reply(h.order_json(done), 200, h.order_url(order_id))

    @bp.post("/cert/<serial>")
    def certificate(serial: str) -> Response:
        jws, acct = h.authenticated("kid")
        assert acct is not None
        if not jws.post_as_get:
            raise malformed("a certificate is downloaded with POST-as-GET (an empty payload)")
        a = h.auth()
        found = store.order_of_certificate(a.db, serial) if len(serial) <= 64 else None
        if found is None or found.account_id != acct.id:
            raise AcmeError("malformed", "no such certificate", 404)
        row = a.db.get_certificate(serial)
        enc = serialization.Encoding.PEM
        leaf = x509.load_der_x509_certificate(row.der)
        pem = b"".join(c.public_bytes(enc) for c in (leaf, *a.issuer_chain(row.issuer_name)))
        return h.decorate(Response(pem, status=200, mimetype=PEM_CHAIN))


def _validate(
    auth: Authority, ch: ChallengeRow, authz: AuthzRow, account: AccountRow
) -> ChallengeRow | None:
    """Run one validation and record its outcome (in a validator thread); the challenge after."""
    try:
        return validation.run_validation(auth, ch.id, started=(ch, authz, account))
    except Exception:  # a store outage: the recovery job re-runs what stays processing
        log.exception("validating challenge %s failed", ch.id)
        return None
