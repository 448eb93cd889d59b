"""What every ACME view shares: JWS authentication, nonces, replies, problems and URLs.

One :class:`AcmeHttp` per blueprint; the view modules (``web/acme/accounts.py``,
``orders.py``, ``revocation.py``, ``renewal.py``) register their routes with it, and add
themselves to the directory through :attr:`AcmeHttp.directory`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import IO, Any, Literal

from flask import Response, request, url_for

from ca.acme import orders, renewal
from ca.acme.errors import AcmeError, malformed
from ca.acme.jws import Jws, key_from_jwk, parse, verify
from ca.authority import Authority
from ca.errors import CAError
from ca.store import acme as store
from ca.store.acme import AccountRow, AuthzRow, ChallengeRow, OrderRow

JOSE_JSON = "application/jose+json"
PROBLEM_JSON = "application/problem+json"
PEM_CHAIN = "application/pem-certificate-chain"


class AcmeHttp:
    """The request-side helpers of the ACME views, over the process's Authority."""

    def __init__(self, authority: Callable[[], Authority]) -> None:
        self._authority = authority
        #: directory key → endpoint name (``newOrder`` → ``acme.new_order``), in RFC order.
        self.directory: dict[str, str] = {}

    def auth(self) -> Authority:
        return self._authority()

    # Nonces, links and replies ------------------------------------------------------------------

    def fresh_nonce(self) -> str:
        a = self.auth()
        return store.issue_nonce(a.db, a.now(), a.config.acme.nonce_lifetime_seconds)

    def index_link(self) -> str:
        return f'<{url_for("acme.directory", _external=True)}>;rel="index"'

    def reply(
        self, body: dict[str, Any] | None, status: int = 200, location: str | None = None
    ) -> Response:
        """A JSON (or empty) reply with a fresh nonce, the index link and no caching."""
        resp = Response(
            json.dumps(body) if body is not None else b"",
            status=status,
            mimetype="application/json" if body is not None else None,
        )
        self.decorate(resp)
        if location:
            resp.headers["Location"] = location
        return resp

    def decorate(self, resp: Response) -> Response:
        """Add ``Replay-Nonce``, ``Link: rel=index`` and ``Cache-Control: no-store``."""
        resp.headers["Replay-Nonce"] = self.fresh_nonce()
        resp.headers["Link"] = self.index_link()
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def problem(self, exc: AcmeError, headers: dict[str, str] | None = None) -> Response:
        """``application/problem+json`` for ``exc``, with a fresh nonce when the store answers."""
        resp = Response(json.dumps(exc.problem()), status=exc.status, mimetype=PROBLEM_JSON)
        try:
            resp.headers["Replay-Nonce"] = self.fresh_nonce()
        except CAError:
            pass  # the store is down: the error is what matters
        resp.headers["Link"] = self.index_link()
        resp.headers["Cache-Control"] = "no-store"
        for name, value in (headers or {}).items():
            resp.headers[name] = value
        return resp

    # Authentication -----------------------------------------------------------------------------

    def read_body(self, limit: int) -> bytes:
        """The body: 415 unless ``application/jose+json``, 413 if over ``limit`` bytes."""
        if request.mimetype != JOSE_JSON:
            raise AcmeError("malformed", f"the Content-Type must be {JOSE_JSON}", 415)
        too_large = AcmeError("malformed", f"the body is larger than {limit} bytes", 413)
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        # A chunked body has no Content-Length: read one byte past the limit, never more.
        body = read_at_most(request.stream, limit + 1)
        if len(body) > limit:
            raise too_large
        return body

    def parse_request(self) -> Jws:
        """Parse the request's JWS and use its nonce (signature not yet verified)."""
        a = self.auth()
        cfg = a.config.acme
        jws = parse(self.read_body(cfg.max_jws_bytes), request.url, cfg.max_jws_bytes)
        if not store.use_nonce(a.db, jws.nonce, a.now(), cfg.nonce_lifetime_seconds):
            raise AcmeError("badNonce", "the nonce is unknown, used or expired")
        return jws

    def authenticated(self, expect: Literal["jwk", "kid"]) -> tuple[Jws, AccountRow | None]:
        """Parse the JWS, use its nonce, verify its signature; the account for ``kid``."""
        a = self.auth()
        cfg = a.config.acme
        jws = parse(self.read_body(cfg.max_jws_bytes), request.url, cfg.max_jws_bytes)
        if expect == "jwk" and jws.jwk is None:
            raise malformed("this resource is signed with a jwk, not a kid")
        if expect == "kid" and jws.kid is None:
            raise malformed("this resource is signed with a kid (the account URL), not a jwk")
        if not store.use_nonce(a.db, jws.nonce, a.now(), cfg.nonce_lifetime_seconds):
            raise AcmeError("badNonce", "the nonce is unknown, used or expired")
        if jws.kid is None:
            verify(jws)
            return jws, None
        return jws, self.verified_account(jws)

    def verified_account(self, jws: Jws) -> AccountRow:
        """The valid account of ``jws.kid`` whose key signed ``jws``."""
        assert jws.kid is not None
        account = self.account_of_kid(jws.kid)
        verify(jws, key_from_jwk(account.jwk))
        if account.status != "valid":
            raise AcmeError("unauthorized", f"the account is {account.status}")
        return account

    def account_of_kid(self, kid: str) -> AccountRow:
        prefix = request.url_root + "acme/acct/"
        if not kid.startswith(prefix):
            raise malformed(f"kid must be an account URL of this server ({prefix}ID)")
        account_id = parse_id(kid[len(prefix) :])
        account = None if account_id is None else store.get_account(self.auth().db, account_id)
        if account is None:
            raise AcmeError("accountDoesNotExist", "no such account")
        return account

    # URLs and resources -------------------------------------------------------------------------

    def account_url(self, account_id: int) -> str:
        return url_for("acme.account", account_id=account_id, _external=True)

    def order_url(self, order_id: int) -> str:
        return url_for("acme.order", order_id=order_id, _external=True)

    def authz_url(self, authz_id: int) -> str:
        return url_for("acme.authz", authz_id=authz_id, _external=True)

    def challenge_url(self, challenge_id: int) -> str:
        return url_for("acme.challenge", challenge_id=challenge_id, _external=True)

    def certificate_url(self, serial: str) -> str:
        return url_for("acme.certificate", serial=serial, _external=True)

    def order_json(self, order: OrderRow) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": order.status,
            "expires": rfc3339(order.expires),
            "identifiers": order.identifiers,
            "authorizations": [self.authz_url(i) for i in order.authz_ids],
            "finalize": url_for("acme.finalize", order_id=order.id, _external=True),
            "profile": order.profile,
        }
        if order.error:
            body["error"] = order.error
        if order.certificate_serial and order.status == "valid":
            body["certificate"] = self.certificate_url(order.certificate_serial)
        if order.replaces:  # RFC 9773 §5: the certID the client sent
            body["replaces"] = renewal.cert_id_of_serial(self.auth().db, order.replaces)
        return body

    def challenge_json(self, ch: ChallengeRow) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": ch.type,
            "url": self.challenge_url(ch.id),
            "status": ch.status,
            "token": ch.token,
        }
        if ch.validated_at is not None and ch.status == "valid":
            body["validated"] = rfc3339(ch.validated_at)
        if ch.error:
            body["error"] = ch.error
        return body

    def authz_json(self, authz: AuthzRow) -> dict[str, Any]:
        body: dict[str, Any] = {
            "identifier": {"type": authz.identifier_type, "value": authz.identifier_value},
            "status": orders.authz_status(authz.status, authz.expires, self.auth().now()),
            "expires": rfc3339(authz.expires),
            "challenges": [self.challenge_json(c) for c in authz.challenges],
        }
        if authz.wildcard:
            body["wildcard"] = True
        return body

    def owned_order(self, order_id: int, account: AccountRow) -> OrderRow:
        order = store.get_order(self.auth().db, order_id)
        if order is None or order.account_id != account.id:
            raise AcmeError("malformed", "no such order", 404)
        return order

    def owned_authz(self, authz_id: int, account: AccountRow) -> AuthzRow:
        authz = store.get_authz(self.auth().db, authz_id)
        if authz is None or authz.account_id != account.id:
            raise AcmeError("malformed", "no such authorization", 404)
        return authz


#: Row ids are 32-bit integer columns (PostgreSQL ``integer``): a larger id names nothing.
MAX_ID = 2**31 - 1
_ID = re.compile(r"[1-9][0-9]{0,9}")


def parse_id(text: str) -> int | None:
    """The row id written exactly as the server writes it (no sign, no leading zero), or None."""
    if not _ID.fullmatch(text):
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def read_at_most(stream: IO[bytes], size: int) -> bytes:
    """Up to ``size`` bytes of ``stream`` (reads may return short, so loop)."""
    chunks: list[bytes] = []
    left = size
    while left > 0:
        chunk = stream.read(min(left, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def rfc3339(value: datetime) -> str:
    """``2026-11-27T22:28:14Z`` (RFC 3339, UTC, whole seconds)."""
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def payload_bool(payload: dict[str, Any], name: str) -> bool:
    """A boolean member of a JWS payload (absent or null: false)."""
    value = payload.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise malformed(f"{name} must be true or false")
    return value
