"""Pure parts of the compliance view: password hashing, password rules, form parsing, the
redirect and CSRF checks, and how ages are shown."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from ca.users import (
    hash_password,
    password_fingerprint,
    password_problems,
    verify_password,
)
from web.ui.forms import audit_form, certificate_form, parse_time
from web.ui.security import csrf_ok, safe_next
from web.ui.status import duration_text

FAST = {"n": 2**10, "r": 8, "p": 1}  # cheap parameters: the format is what is tested


def test_hash_records_scrypt_parameters_and_a_fresh_salt():
    stored = hash_password("correct horse battery", **FAST)
    scheme, params, salt, digest = stored.split("$")
    assert (scheme, params) == ("scrypt", "n=1024,r=8,p=1")
    assert len(base64.urlsafe_b64decode(salt + "==")) == 16
    assert len(base64.urlsafe_b64decode(digest + "=")) == 32
    assert hash_password("correct horse battery", **FAST) != stored  # salted


def test_default_hash_uses_n_2_15():
    assert hash_password("correct horse battery").startswith("scrypt$n=32768,r=8,p=1$")


def test_verify_accepts_the_password_and_nothing_else():
    stored = hash_password("correct horse battery", **FAST)
    assert verify_password("correct horse battery", stored)
    assert not verify_password("correct horse batterY", stored)
    assert not verify_password("", stored)


def test_verify_uses_the_stored_parameters():
    salt = bytes(range(16))
    stored = hash_password("pw-with-other-cost", n=2**11, r=4, p=2, salt=salt)
    assert stored.startswith("scrypt$n=2048,r=4,p=2$")
    assert verify_password("pw-with-other-cost", stored)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain-text-password",
        "scrypt$n=1024,r=8,p=1$!!!$AAAA",
        "scrypt$n=1000,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAA",  # n not a power of two
        "scrypt$n=1073741824,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAA",  # absurd cost
        "argon2$whatever",
    ],
)
def test_a_malformed_or_absurd_stored_hash_never_verifies(stored):
    assert not verify_password("anything", stored)


def test_parameters_out_of_bounds_are_refused_when_hashing():
    with pytest.raises(ValueError):
        hash_password("x" * 12, n=2**21)


def test_password_rules():
    assert password_problems("alice", "a-good-long-passphrase") == []
    assert any("at least 12" in p for p in password_problems("alice", "short"))
    assert any("user name" in p for p in password_problems("alicealice12", "AliceAlice12"))
    assert any("whitespace" in p for p in password_problems("alice", " leading-space-pw"))
    assert any("at most" in p for p in password_problems("alice", "x" * 1025))


def test_password_fingerprint_changes_with_the_hash():
    a, b = hash_password("one-password-here", **FAST), hash_password("one-password-here", **FAST)
    assert password_fingerprint(a) != password_fingerprint(b)
    assert len(password_fingerprint(a)) == 16


def test_times_parse_as_utc_and_a_bare_end_date_covers_its_day():
    assert parse_time("2026-01-31") == datetime(2026, 1, 31, tzinfo=UTC)
    assert parse_time("2026-01-31", end=True) == datetime(2026, 2, 1, tzinfo=UTC)
    assert parse_time("2026-01-31T12:30") == datetime(2026, 1, 31, 12, 30, tzinfo=UTC)
    assert parse_time("2026-01-31T12:30:00+02:00") == datetime(2026, 1, 31, 10, 30, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_time("yesterday")


def test_audit_form_builds_a_query_and_names_every_bad_field():
    form = audit_form(
        {"from": "2026-01-01", "to": "2026-01-02", "actor": " cli:root ", "action": "ui.*"}
    )
    assert form.errors == []
    assert form.query.since == "2026-01-01T00:00:00.000000Z"
    assert form.query.until == "2026-01-03T00:00:00.000000Z"
    assert (form.query.actor, form.query.action, form.query.subject) == ("cli:root", "ui.*", None)
    bad = audit_form({"from": "soon", "to": "2020-01-01", "before": "-3", "subject": "x" * 300})
    assert len(bad.errors) == 3 and any("'from'" in e for e in bad.errors)
    reversed_range = audit_form({"from": "2026-02-01", "to": "2026-01-01"})
    assert reversed_range.errors == ["'from' must be before 'to'"]


def test_certificate_form_accepts_known_choices_only():
    form = certificate_form(
        {"q": "db.internal", "status": "revoked", "expiring": "30", "after": "7"}
    )
    assert (form.name, form.status, form.expiring_days, form.after) == (
        "db.internal",
        "revoked",
        30,
        7,
    )
    bad = certificate_form({"status": "deleted", "expiring": "3", "after": "x"})
    assert len(bad.errors) == 3 and bad.status is None and bad.expiring_days is None


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/ui/audit?actor=x", "/ui/audit?actor=x"),
        ("/ui", "/ui"),
        ("", None),
        (None, None),
        ("https://evil.test/ui", None),
        ("//evil.test/ui", None),
        ("/ui//evil.test", None),
        ("/ui\\x", None),
        ("/api/v1/certificates", None),
        ("/uix", None),
        ("/ui/\r\nSet-Cookie: x", None),
    ],
)
def test_sign_in_redirects_only_within_the_ui(target, expected):
    assert safe_next(target) == expected


def test_csrf_tokens_must_match_exactly():
    assert csrf_ok("abc", "abc")
    assert not csrf_ok("abd", "abc")
    assert not csrf_ok("", "abc")
    assert not csrf_ok(None, "abc")
    assert not csrf_ok("abc", None)
    assert not csrf_ok("abc", "")


def test_ages_read_naturally():
    assert duration_text(None) == "unknown"
    assert duration_text(12) == "12 s"
    assert duration_text(7 * 60 + 5) == "7 min"
    assert duration_text(5 * 3600 + 12 * 60) == "5 h 12 min"
    assert duration_text(3 * 86400 + 4 * 3600) == "3 d 4 h"
