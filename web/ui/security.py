"""Sessions, CSRF and roles of the compliance view.

**Sessions** are Flask's signed cookie sessions (itsdangerous, HMAC-SHA1 over the JSON payload)
whose key every worker and node shares: the ``ui-session-key`` row of ``app_secrets``, made at
first use. The cookie is ``__Host-hsmca-ui``: Secure, HttpOnly, SameSite=Strict, path ``/``, no
domain. A session holds the user's name and role, a fingerprint of the stored password hash
(a password change ends every session), the CSRF token and the time of the last request; it
ends after ``[ui] session_minutes`` without a request, and at once when the user is disabled.

**CSRF**: a random per-session token goes into every POST form as ``csrf_token``; every POST
under ``/ui`` without the matching token is refused with 400 before any view runs.
"""

from __future__ import annotations

import functools
import hmac
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from flask import Flask, Request, Response, abort, redirect, request, session, url_for
from flask.sessions import SecureCookieSessionInterface, SessionMixin
from itsdangerous import URLSafeTimedSerializer

from ca.authority import Authority
from ca.errors import CAError
from ca.store.ui import UserRow, app_secret, get_user
from ca.users import ROLES, password_fingerprint

F = TypeVar("F", bound=Callable[..., Any])

PREFIX = "/ui"
COOKIE = "__Host-hsmca-ui"
SESSION_KEY_NAME = "ui-session-key"
CSRF_FIELD = "csrf_token"
#: request.environ key: the session could not be opened (the store is down).
SESSION_ERROR = "hsmca.ui.session_error"


def is_ui_path(path: str) -> bool:
    """Whether ``path`` belongs to the compliance view."""
    return path == PREFIX or path.startswith(PREFIX + "/")


class UiSessionInterface(SecureCookieSessionInterface):
    """Signed cookie sessions for ``/ui`` only, keyed by the installation's shared secret.

    Other paths get Flask's null session (nothing is read or written), so the API and ACME never
    touch the database for a session key.
    """

    def __init__(self, authority: Callable[[], Authority]) -> None:
        self._authority = authority

    def _enabled(self) -> bool:
        return bool(self._authority().config.ui.enabled)

    def _minutes(self) -> int:
        return int(self._authority().config.ui.session_minutes)

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        key = app_secret(self._authority().db, SESSION_KEY_NAME)
        return URLSafeTimedSerializer(
            key,
            salt=self.salt,
            serializer=self.serializer,
            signer_kwargs={
                "key_derivation": self.key_derivation,
                "digest_method": self.digest_method,
            },
        )

    def open_session(self, app: Flask, request: Request) -> Any:
        if not is_ui_path(request.path):
            return None
        try:
            if not self._enabled():
                return None
            return super().open_session(app, request)
        except CAError as exc:  # the store is down: the blueprint answers 503
            request.environ[SESSION_ERROR] = str(exc)
            return None

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if self.is_null_session(session):
            return
        try:
            super().save_session(app, session, response)
        except CAError:
            return  # cannot happen after a successful open (the key is cached); never a 500

    def get_cookie_name(self, app: Flask) -> str:
        return COOKIE

    def get_cookie_domain(self, app: Flask) -> None:
        return None

    def get_cookie_path(self, app: Flask) -> str:
        return "/"  # the __Host- prefix requires it

    def get_cookie_secure(self, app: Flask) -> bool:
        return True

    def get_cookie_httponly(self, app: Flask) -> bool:
        return True

    def get_cookie_samesite(self, app: Flask) -> str:
        return "Strict"

    def get_cookie_partitioned(self, app: Flask) -> bool:
        return False

    def get_expiration_time(self, app: Flask, session: SessionMixin) -> datetime | None:
        return datetime.now(UTC) + timedelta(minutes=self._minutes())

    def should_set_cookie(self, app: Flask, session: SessionMixin) -> bool:
        return bool(session.modified or session)


# CSRF ----------------------------------------------------------------------------------------------


def csrf_token() -> str:
    """This session's CSRF token (made on first use)."""
    token = session.get("csrf")
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def csrf_ok(sent: str | None, expected: Any) -> bool:
    """Whether the token ``sent`` with a form matches the session's (constant time)."""
    if not sent or not isinstance(expected, str) or not expected:
        return False
    return hmac.compare_digest(sent.encode("utf-8", "replace"), expected.encode("utf-8"))


def check_csrf() -> None:
    """Refuse (400) a POST without this session's CSRF token."""
    if request.method == "POST" and not csrf_ok(request.form.get(CSRF_FIELD), session.get("csrf")):
        abort(
            400,
            "the form is stale or was not sent by this site (CSRF token missing or wrong); "
            "reload the page and try again",
        )


# Signing in and out ----------------------------------------------------------------------------------


def start_session(user: UserRow) -> None:
    """A fresh session for ``user`` (new CSRF token: nothing from before the sign-in survives)."""
    session.clear()
    session.update(
        user=user.name,
        role=user.role,
        pw=password_fingerprint(user.password_hash),
        csrf=secrets.token_urlsafe(32),
        t=int(time.time()),
    )


def end_session() -> None:
    session.clear()


def session_user(auth: Authority, now: float | None = None) -> UserRow | None:
    """The signed-in user, or None; ends the session if it has lapsed or no longer matches the
    stored user (disabled, deleted, password or role changed)."""
    name = session.get("user")
    if not isinstance(name, str):
        return None
    now = time.time() if now is None else now
    last = session.get("t")
    idle_limit = auth.config.ui.session_minutes * 60
    user = None
    if isinstance(last, int) and 0 <= now - last <= idle_limit:
        user = get_user(auth.db, name)
    if (
        user is None
        or user.disabled
        or user.role != session.get("role")
        or password_fingerprint(user.password_hash) != session.get("pw")
    ):
        end_session()
        session["expired"] = True  # the sign-in page says why
        return None
    session["t"] = int(now)  # sliding: the idle time restarts with every request
    return user


def signed_in(authority: Callable[[], Authority], *roles: str) -> Callable[[F], F]:
    """Decorator: the view needs a signed-in user with one of ``roles`` (default: any role).

    The user is passed as the keyword argument ``user``; anonymous requests go to the sign-in
    page, other roles get 403.
    """
    allowed = roles or ROLES

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            user = session_user(authority())
            if user is None:
                return redirect(url_for("ui.login", next=_local_next()))
            if user.role not in allowed:
                abort(403, "your role does not allow this page")
            return view(*args, user=user, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _local_next() -> str | None:
    return request.full_path.rstrip("?") if request.method == "GET" else None


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a path of this view (no scheme, host or ``//``): no open redirect."""
    if not target or not is_ui_path(target.split("?", 1)[0]):
        return None
    if "//" in target or "\\" in target or any(ord(c) < 32 for c in target):
        return None
    return target
