"""ACME ``Replay-Nonce`` values (RFC 8555 §6.5) that cost nothing to hand out.

A nonce is ``base64url(time ‖ random ‖ MAC)``: 8 octets of issue time (Unix seconds), 16 random
octets, and the first 16 octets of HMAC-SHA256 over both under a key every worker and node
shares (kept in the database). Handing one out writes nothing; using one checks the MAC and the
age, then records the nonce as used, and the database's unique key lets exactly one request use
it. A nonce this server never made fails the MAC; an old one fails the age check, so the used
records need keeping only for the nonce lifetime.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from datetime import UTC, datetime

_TIME = struct.Struct(">Q")
_RANDOM = 16
_MAC = 16
#: Length of a nonce's text (40 octets in base64url without padding).
NONCE_LENGTH = 54


def make_nonce(key: bytes, now: datetime) -> str:
    """A fresh nonce issued at ``now``."""
    body = _TIME.pack(int(now.timestamp())) + secrets.token_bytes(_RANDOM)
    mac = hmac.new(key, body, hashlib.sha256).digest()[:_MAC]
    return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode("ascii")


def nonce_issued_at(key: bytes, nonce: str) -> datetime | None:
    """When ``nonce`` was made under ``key``; None if it is not one of ours."""
    if len(nonce) != NONCE_LENGTH or not nonce.isascii():
        return None
    try:
        raw = base64.urlsafe_b64decode(nonce + "==")
    except ValueError:
        return None
    if len(raw) != _TIME.size + _RANDOM + _MAC:
        return None
    # One text per nonce: the used record is keyed by the text, so an alternative spelling of
    # the last character's spare bits must not pass for a fresh nonce.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != nonce:
        return None
    body, mac = raw[:-_MAC], raw[-_MAC:]
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()[:_MAC]):
        return None
    (seconds,) = _TIME.unpack(body[: _TIME.size])
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None
