"""Users of the compliance view (``/ui``): password hashing, sign-in with rate limiting, and the
audited changes ``hsmca user add|disable|passwd`` make.

Passwords are hashed with scrypt (``hashlib.scrypt``), a random 16-byte salt per user, and the
parameters stored with the hash: ``scrypt$n=32768,r=8,p=1$<salt>$<hash>`` (salt and hash in
unpadded base64url), so the cost can be raised later without breaking stored hashes.

Sign-in is rate-limited per name tried and per client address: ``[ui] max_failed_logins``
failures within :data:`FAILURE_WINDOW` and further attempts are refused before any password is
checked. Each attempt is first recorded as a failure in the same write transaction that counts
them (the writer lock serialises that), and the row is removed only if the password was right;
so parallel guesses cannot slip past the limit.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from ca.authority import Authority
from ca.errors import BadRequest, Conflict, NotFound
from ca.store import ui as store
from ca.store.ui import UserRow

ROLES = ("auditor", "operator")
FAILURE_WINDOW = timedelta(minutes=15)
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
#: The audit actor of a failed sign-in (no user name can contain parentheses).
ANONYMOUS = "ui:(anonymous)"

#: Default scrypt cost: n=2**15, r=8 (32 MiB, about 70 ms here), p=1.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_SALT_BYTES, _HASH_BYTES = 16, 32
_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
_HASH_FORMAT = re.compile(r"^scrypt\$n=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9_-]+)\$([A-Za-z0-9_-]+)$")


# Hashing (pure) -----------------------------------------------------------------------------------


def hash_password(
    password: str,
    n: int = SCRYPT_N,
    r: int = SCRYPT_R,
    p: int = SCRYPT_P,
    salt: bytes | None = None,
) -> str:
    """The stored form of ``password``: ``scrypt$n=…,r=…,p=…$salt$hash``."""
    _check_params(n, r, p)
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = _scrypt(password, salt, n, r, p)
    return f"scrypt$n={n},r={r},p={p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (constant-time compare; False if malformed)."""
    match = _HASH_FORMAT.match(stored)
    if match is None:
        return False
    n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    try:
        _check_params(n, r, p)
        salt, expected = _unb64(match.group(4)), _unb64(match.group(5))
    except ValueError:
        return False
    return hmac.compare_digest(_scrypt(password, salt, n, r, p, len(expected)), expected)


def password_problems(name: str, password: str) -> list[str]:
    """Why ``password`` is not acceptable for user ``name`` (empty: it is)."""
    problems = []
    if len(password) < MIN_PASSWORD:
        problems.append(f"the password must be at least {MIN_PASSWORD} characters long")
    if len(password) > MAX_PASSWORD:
        problems.append(f"the password must be at most {MAX_PASSWORD} characters long")
    if password.strip() != password:
        problems.append("the password must not start or end with whitespace")
    if password.lower() == name.lower():
        problems.append("the password must not be the user name")
    return problems


def password_fingerprint(stored: str) -> str:
    """A short digest of the stored hash: a session made before a password change no longer
    matches it, so changing the password ends every session of that user."""
    return hashlib.sha256(stored.encode("ascii", "replace")).hexdigest()[:16]


def _check_params(n: int, r: int, p: int) -> None:
    # Bounds keep a tampered hash from making one sign-in take minutes or gigabytes.
    if n < 2 or n > 2**20 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise ValueError(f"unsupported scrypt parameters n={n}, r={r}, p={p}")
    if 128 * r * n > 256 * 2**20:
        raise ValueError("scrypt parameters need more than 256 MiB")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, size: int = _HASH_BYTES) -> bytes:
    maxmem = 128 * r * (n + p + 2) + 2**20
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=size
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(str(exc)) from None


@functools.cache
def _dummy_hash() -> str:
    """A hash to check unknown names against, so timing does not tell which names exist."""
    return hash_password(secrets.token_urlsafe(16))


# Users (store + audit) -----------------------------------------------------------------------------


def subject_of(name: str) -> str:
    """The audit subject of a user."""
    return f"ui-user:{name}"


def check_name(name: str) -> None:
    """Raise BadRequest unless ``name`` is a valid user name."""
    if not _NAME.match(name):
        raise BadRequest(
            f"user name {name!r} must be 1-64 characters of a-z, 0-9, '.', '_', '@', '-' "
            "starting with a letter or digit"
        )


def add_user(auth: Authority, name: str, role: str, password: str, actor: str) -> UserRow:
    """Create user ``name`` with ``role``; audited as ``ui.user.added``."""
    check_name(name)
    if role not in ROLES:
        raise BadRequest(f"unknown role {role!r} (use {' or '.join(ROLES)})")
    problems = password_problems(name, password)
    if problems:
        raise BadRequest("; ".join(problems))
    if store.get_user(auth.db, name) is not None:
        raise Conflict(f"a user named {name!r} exists already")
    stored = hash_password(password)
    now = auth.now()
    with auth.db.write() as conn:
        store.add_user(conn, name, role, stored, now)
        auth.db.append_audit(
            conn, now, actor, "ui.user.added", subject_of(name), {"name": name, "role": role}
        )
    row = store.get_user(auth.db, name)
    assert row is not None
    return row


def disable_user(auth: Authority, name: str, actor: str) -> None:
    """Disable user ``name``: it can no longer sign in, and its sessions end at their next
    request. Audited as ``ui.user.disabled``."""
    user = store.get_user(auth.db, name)
    if user is None:
        raise NotFound(f"no user named {name!r}")
    now = auth.now()
    with auth.db.write() as conn:
        if not store.update_user(conn, name, only_enabled=True, disabled=True, updated_at=now):
            raise Conflict(f"user {name!r} is disabled already")
        auth.db.append_audit(conn, now, actor, "ui.user.disabled", subject_of(name), {"name": name})


def change_password(auth: Authority, name: str, password: str, actor: str) -> None:
    """Set a new password; the user's sessions end. Audited as ``ui.user.password_changed``."""
    if store.get_user(auth.db, name) is None:
        raise NotFound(f"no user named {name!r}")
    problems = password_problems(name, password)
    if problems:
        raise BadRequest("; ".join(problems))
    stored = hash_password(password)
    now = auth.now()
    with auth.db.write() as conn:
        if not store.update_user(conn, name, password_hash=stored, updated_at=now):
            raise NotFound(f"no user named {name!r}")
        auth.db.append_audit(
            conn, now, actor, "ui.user.password_changed", subject_of(name), {"name": name}
        )


# Sign-in -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignIn:
    """The outcome of a sign-in attempt.

    ``ok``: ``user`` is signed in. ``failed``: wrong name, password or a disabled user (one
    outcome, so the page cannot tell them apart). ``limited``: too many failures; nothing was
    checked, try again in ``retry_after`` seconds.
    """

    outcome: Literal["ok", "failed", "limited"]
    user: UserRow | None = None
    retry_after: int = 0


def sign_in(
    auth: Authority, name: str, password: str, address: str, now: datetime | None = None
) -> SignIn:
    """Check a sign-in attempt from ``address``; audited as ``ui.login.succeeded`` or
    ``ui.login.failed`` (the name tried and the address, never the password).

    Attempts refused by the rate limit are not audited, so nobody can flood the chain.
    """
    now = now or auth.now()
    name, address = name[:64], address[:64]
    limit = auth.config.ui.max_failed_logins
    with auth.db.write() as conn:
        store.purge_failures(conn, now - FAILURE_WINDOW)
        counts = store.count_failures(conn, name, address, now - FAILURE_WINDOW)
        over = [
            oldest
            for count, oldest in (
                (counts.by_name, counts.oldest_name),
                (counts.by_address, counts.oldest_address),
            )
            if count >= limit
        ]
        if over:
            ends = max(o for o in over if o is not None) + FAILURE_WINDOW
            return SignIn("limited", retry_after=max(1, int((ends - now).total_seconds()) + 1))
        # Count this attempt as a failure until the password proves right.
        attempt = store.add_failure(conn, name, address, now)

    user = store.get_user(auth.db, name)
    password_ok = verify_password(password, user.password_hash if user else _dummy_hash())
    if user is None or not password_ok or user.disabled:
        reason = (
            "unknown user"
            if user is None
            else ("wrong password" if not password_ok else "user disabled")
        )
        auth.audit(
            ANONYMOUS,
            "ui.login.failed",
            subject_of(name),
            {"name": name, "address": address, "reason": reason},
        )
        return SignIn("failed")
    with auth.db.write() as conn:
        store.forget_attempt(conn, attempt)
        store.update_user(conn, name, last_login_at=now)
        auth.db.append_audit(
            conn,
            now,
            actor_of(name),
            "ui.login.succeeded",
            subject_of(name),
            {"name": name, "address": address, "role": user.role},
        )
    return SignIn("ok", user=user)


def sign_out(auth: Authority, name: str, address: str) -> None:
    """Record a sign-out (``ui.logout``)."""
    auth.audit(
        actor_of(name), "ui.logout", subject_of(name), {"name": name, "address": address[:64]}
    )


def actor_of(name: str) -> str:
    """The audit actor of a signed-in user."""
    return f"ui:{name}"
