"""Bearer-token authentication of API clients.

Tokens are looked up by their SHA-256 (see :mod:`ca.clients`). A short per-process cache of
successful lookups keeps the database off the hot path; disabling a client takes effect in every
worker within :data:`CACHE_SECONDS`.
"""

from __future__ import annotations

import threading
import time

from flask import request

from ca.authority import Authority
from ca.clients import authenticate, requester_of
from ca.policy import Requester

CACHE_SECONDS = 5.0
_MAX_CACHED = 1024


class Unauthorized(Exception):
    """No or a bad bearer token (401). The message never contains the token."""


class TokenCache:
    """token hash → (requester, expiry); only successful lookups are cached."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[Requester, float]] = {}

    def get(self, key: str) -> Requester | None:
        with self._lock:
            hit = self._entries.get(key)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, key: str, requester: Requester) -> None:
        with self._lock:
            if len(self._entries) >= _MAX_CACHED:
                self._entries.clear()
            self._entries[key] = (requester, time.monotonic() + CACHE_SECONDS)


def bearer_token() -> str:
    """The bearer token of the current request, or :class:`Unauthorized`."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send 'Authorization: Bearer <token>' (see hsmca client add)")
    return token.strip()


def current_requester(auth: Authority, cache: TokenCache) -> Requester:
    """The authenticated client of this request; :class:`Unauthorized` otherwise."""
    import hashlib

    token = bearer_token()
    key = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
    cached = cache.get(key)
    if cached is not None:
        return cached
    row = authenticate(auth, token)
    if row is None:
        raise Unauthorized("the bearer token is not valid (unknown, malformed or disabled client)")
    requester = requester_of(row)
    cache.put(key, requester)
    return requester
