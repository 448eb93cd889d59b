"""External account binding (RFC 8555 §7.3.4): keys made for API clients, and their check.

The operator makes a key for an API client (``hsmca acme eab create --client NAME``) and hands
its key id and HMAC key to whoever runs that client's ACME client. New-account then carries a
JWS made with the HMAC key over the account's public key; the account is bound to the client
and acts as it in the policy engine (see :mod:`ca.acme.accounts`).

The rules are pure functions: :func:`parse_binding` checks the binding's shape against the
request (``malformed``; ``unauthorized`` for a ``url`` or key that is not this request's) and
:func:`verify_binding` checks it with the stored key (``unauthorized``: unknown, wrong MAC, used,
expired). The MAC is compared in constant time and checked before the key's state, so only a
holder of the HMAC key learns whether it is used or expired. The operations below them change
the store, each with its audit event; the HMAC key itself is never logged or audited.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ca.acme.errors import AcmeError, malformed
from ca.acme.jws import b64url_decode, b64url_encode, parse_json_object, public_jwk, thumbprint
from ca.authority import Authority
from ca.errors import Conflict, NotFound
from ca.store import acme as store
from ca.store.acme import EabKeyRow
from ca.store.db import Database

#: The MAC algorithms a binding may use (RFC 7518 §3.2).
MAC_ALGORITHMS: dict[str, Callable[[], Any]] = {
    "HS256": hashlib.sha256,
    "HS384": hashlib.sha384,
    "HS512": hashlib.sha512,
}
#: Random octets of an HMAC key (256 bits).
HMAC_KEY_BYTES = 32
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# Pure rules ------------------------------------------------------------------------------------


def new_key_material() -> tuple[str, str]:
    """A fresh ``(key id, HMAC key)``: ``eab_`` and 128 random bits in hex for the id, 256 bits
    of key in base64url, never starting with ``-`` (it would read as an option on command lines
    such as ``certbot --eab-hmac-key KEY``)."""
    key = b64url_encode(secrets.token_bytes(HMAC_KEY_BYTES))
    while key.startswith("-"):
        key = b64url_encode(secrets.token_bytes(HMAC_KEY_BYTES))
    return "eab_" + secrets.token_hex(16), key


@dataclass(frozen=True)
class Binding:
    """An ``externalAccountBinding`` whose shape fits the request; its MAC is not yet checked."""

    key_id: str
    alg: str
    signing_input: bytes
    mac: bytes


def parse_binding(value: Any, url: str, account_jwk: dict[str, str]) -> Binding:
    """Check the shape of an ``externalAccountBinding`` sent to ``url`` by ``account_jwk``.

    A flattened JWS whose protected header has a MAC ``alg``, a ``kid`` and this request's
    ``url``, and no ``nonce`` or ``jwk``; its payload is the account's public key (the outer
    JWS's ``jwk``). ``malformed`` for the shape, ``unauthorized`` for another URL or key.
    """
    if not isinstance(value, dict) or set(value) != {"protected", "payload", "signature"}:
        raise malformed(
            "externalAccountBinding must be a flattened JWS with exactly protected, payload "
            "and signature"
        )
    protected_b64, payload_b64 = value["protected"], value["payload"]
    header = parse_json_object(
        b64url_decode(protected_b64, "externalAccountBinding protected"),
        "the externalAccountBinding protected header",
    )
    payload = b64url_decode(payload_b64, "externalAccountBinding payload")
    mac = b64url_decode(value["signature"], "externalAccountBinding signature")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in MAC_ALGORITHMS:
        raise malformed(
            f"externalAccountBinding alg must be one of {', '.join(MAC_ALGORITHMS)}, "
            f"not {str(alg)[:20]!r}"
        )
    for member in ("nonce", "jwk", "crit", "b64"):
        if member in header:
            raise malformed(f"the externalAccountBinding protected header must not have {member}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not _KEY_ID.match(kid):
        raise malformed("externalAccountBinding kid must be the key id the CA gave out")
    header_url = header.get("url")
    if not isinstance(header_url, str) or not header_url:
        raise malformed("the externalAccountBinding protected header has no url")
    if header_url != url:
        raise AcmeError(
            "unauthorized", f"the externalAccountBinding url is not {url} (the request URL)"
        )
    if not mac:
        raise malformed("the externalAccountBinding signature is empty")
    body = parse_json_object(payload, "the externalAccountBinding payload")
    try:
        bound = thumbprint(public_jwk(body))
    except AcmeError:
        raise malformed("the externalAccountBinding payload is not a public JWK") from None
    if bound != thumbprint(account_jwk):
        raise AcmeError(
            "unauthorized", "the externalAccountBinding payload is not the account's key"
        )
    return Binding(kid, alg, f"{protected_b64}.{payload_b64}".encode("ascii"), mac)


def verify_binding(binding: Binding, key: EabKeyRow | None, now: datetime) -> None:
    """``unauthorized`` unless ``key`` is the binding's, its MAC is right and it is unused and
    unexpired (checked in that order)."""
    if key is None or key.key_id != binding.key_id:
        raise AcmeError("unauthorized", "unknown externalAccountBinding key id")
    expected = hmac.new(
        base64.urlsafe_b64decode(key.hmac_key + "=" * (-len(key.hmac_key) % 4)),
        binding.signing_input,
        MAC_ALGORITHMS[binding.alg],
    ).digest()
    if not hmac.compare_digest(expected, binding.mac):
        raise AcmeError("unauthorized", "the externalAccountBinding MAC is not valid")
    if key.account_id is not None or key.used_at is not None:
        raise AcmeError("unauthorized", "this externalAccountBinding key was used already")
    if now >= key.expires:
        raise AcmeError("unauthorized", "this externalAccountBinding key has expired")


def key_state(key: EabKeyRow, now: datetime) -> str:
    """``unused``, ``expired`` or ``used by account N`` (for listings)."""
    if key.account_id is not None:
        return f"used by account {key.account_id}"
    return "expired" if now >= key.expires else "unused"


# Operations ------------------------------------------------------------------------------------


def create_key(auth: Authority, client: str, actor: str) -> tuple[EabKeyRow, str]:
    """A new EAB key for the enabled API client ``client``; returns it and its HMAC key.

    Audited as ``acme.eab.created`` (key id, client, expiry; never the HMAC key).
    """
    row = auth.db.get_client(client)
    if row is None:
        raise NotFound(f"no client named {client!r} (see hsmca client list)")
    if row.disabled:
        raise Conflict(f"client {client!r} is disabled")
    now = auth.now()
    expires = now + timedelta(hours=auth.config.acme.eab_key_lifetime_hours)
    key_id, hmac_key = new_key_material()
    with auth.db.write() as conn:
        store.add_eab_key(
            conn, key_id=key_id, hmac_key=hmac_key, client=client, now=now, expires=expires
        )
        auth.db.append_audit(
            conn,
            now,
            actor,
            "acme.eab.created",
            f"acme-eab:{key_id}",
            {"key_id": key_id, "client": client, "expires": _rfc3339(expires)},
        )
        key = store.get_eab_key(auth.db, key_id, conn)
    assert key is not None
    return key, hmac_key


def revoke_key(auth: Authority, key_id: str, actor: str) -> EabKeyRow:
    """Delete an unused EAB key (``acme.eab.revoked``); a used key stays as the record of its
    binding (:class:`Conflict`)."""
    with auth.db.write() as conn:
        key = store.get_eab_key(auth.db, key_id, conn)
        if key is None:
            raise NotFound(f"no EAB key {key_id!r}")
        if not store.delete_unused_eab_key(conn, key_id):
            raise Conflict(
                f"EAB key {key_id!r} bound account {key.account_id} already; deactivate the "
                "account or disable the client instead"
            )
        auth.db.append_audit(
            conn,
            auth.now(),
            actor,
            "acme.eab.revoked",
            f"acme-eab:{key_id}",
            {"key_id": key_id, "client": key.client},
        )
    return key


def check_binding(
    db: Database, now: datetime, value: Any, url: str, account_jwk: dict[str, str]
) -> EabKeyRow:
    """The stored key an ``externalAccountBinding`` validly names (not yet marked used).

    A refusal that names an existing key is audited (``acme.eab.denied``); one naming no key is
    not, so anonymous requests cannot fill the audit chain.
    """
    binding = parse_binding(value, url, account_jwk)
    key = store.get_eab_key(db, binding.key_id)
    try:
        verify_binding(binding, key, now)
    except AcmeError as exc:
        if key is not None:
            audit_denial(db, now, key, exc.detail)
        raise
    assert key is not None
    return key


def audit_denial(db: Database, now: datetime, key: EabKeyRow, reason: str) -> None:
    """Record a refused binding with an existing key."""
    with db.write() as conn:
        db.append_audit(
            conn,
            now,
            f"acme-eab:{key.key_id}",
            "acme.eab.denied",
            f"acme-eab:{key.key_id}",
            {"key_id": key.key_id, "client": key.client, "reason": reason},
        )


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
