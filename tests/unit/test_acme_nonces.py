"""Stateless ACME nonces (ca/acme/nonces.py): made under a key, recognised only under it."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from ca.acme.nonces import NONCE_LENGTH, make_nonce, nonce_issued_at

KEY = b"k" * 32
NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


def test_a_nonce_carries_its_issue_time_and_is_unique():
    nonces = {make_nonce(KEY, NOW) for _ in range(100)}
    assert len(nonces) == 100
    for nonce in nonces:
        assert len(nonce) == NONCE_LENGTH and "=" not in nonce
        assert nonce_issued_at(KEY, nonce) == NOW


def test_another_key_or_any_changed_character_is_not_ours():
    nonce = make_nonce(KEY, NOW)
    assert nonce_issued_at(b"x" * 32, nonce) is None
    for i in range(NONCE_LENGTH):
        flipped = nonce[:i] + ("A" if nonce[i] != "A" else "B") + nonce[i + 1 :]
        assert nonce_issued_at(KEY, flipped) is None, i


def test_malformed_text_is_not_ours():
    for bad in ("", "A" * 43, "A" * NONCE_LENGTH, "é" * NONCE_LENGTH, "!" * NONCE_LENGTH):
        assert nonce_issued_at(KEY, bad) is None
    # Right length, but the time field is forged: the MAC fails.
    raw = bytearray(base64.urlsafe_b64decode(make_nonce(KEY, NOW) + "=="))
    raw[0:8] = b"\xff" * 8
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert nonce_issued_at(KEY, forged) is None
