"""Expiry notices, the I/O part: a signed JSON POST (webhook) or a mail over SMTP with STARTTLS.

Nothing here raises for a failed delivery: each function returns a :class:`Delivered` saying
whether it worked, after how many attempts and why not, and the caller records it.

Webhook: ``http.client`` (no redirects followed: a signed notice goes where it was configured
to), a connect/read timeout, up to ``webhook_attempts`` POSTs with doubling waits; a 2xx
answer is a delivery, a 4xx other than 408/425/429 is a refusal (tried again on a later run,
not in this one). Each POST carries ``X-Hsmca-Timestamp`` (Unix seconds) and
``X-Hsmca-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + body>``, so a receiver can
refuse forged and replayed deliveries (``docs/expiry-notices.md``).

E-mail: ``smtplib`` with STARTTLS required (certificate and host name checked); a server that
offers none gets nothing unless ``smtp_allow_plain`` is set, and a login never happens without
TLS. The password comes from ``HSMCA_NOTICES_SMTP_PASSWORD`` or ``smtp_password_file``, never
from argv, and is never logged.
"""

from __future__ import annotations

import http.client
import os
import smtplib
import ssl
import stat
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from ca.config import NoticesConfig
from ca.errors import CAError, ConfigError
from ca.notices import NOTICE_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign_payload

SMTP_PASSWORD_ENV = "HSMCA_NOTICES_SMTP_PASSWORD"
_USER_AGENT = "hsmca-notices/1"
_RETRY_STATUSES = {408, 425, 429}


@dataclass(frozen=True)
class Delivered:
    """The outcome of delivering one notice."""

    ok: bool
    attempts: int
    error: str = ""
    detail: str = ""


def read_secret_file(path: Path, what: str) -> bytes:
    """A secret from a file that only its owner may read (mode 0600 or stricter)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{what} file {path} must have mode 0600 (it is {stat.S_IMODE(st.st_mode):04o})"
        )
    value = path.read_bytes().strip()
    if not value:
        raise ConfigError(f"{what} file {path} is empty")
    return value


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Certificate and host name checks on, trusting ``ca_file`` (None: the system's roots)."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def destination_label(url: str) -> str:
    """``scheme://host[:port]`` of a webhook URL: what logs and audit events show of it (a path or
    query may hold a token)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def post_webhook(
    url: str,
    body: bytes,
    secret: bytes,
    notice_id: str,
    *,
    timeout: float,
    attempts: int,
    backoff: float,
    ca_file: Path | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Delivered:
    """POST ``body`` to ``url``, signed, up to ``attempts`` times; never raises for a failure."""
    last = "not tried"
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            sleep(backoff * 2 ** (attempt - 2))
        timestamp = int(clock())  # fresh per POST: a receiver's replay window counts from it
        headers = {
            "Content-Type": "application/json",
            "User-Agent": _USER_AGENT,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign_payload(secret, timestamp, body),
            NOTICE_ID_HEADER: notice_id,
        }
        try:
            status = _post(url, body, headers, timeout, ca_file)
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"[:300]
            continue
        if 200 <= status < 300:
            return Delivered(True, attempt, detail=f"HTTP {status}")
        last = f"HTTP {status}"
        if 400 <= status < 500 and status not in _RETRY_STATUSES:
            return Delivered(False, attempt, f"{last} (refused by the receiver)")
    return Delivered(False, attempts, last)


def _post(
    url: str, body: bytes, headers: Mapping[str, str], timeout: float, ca_file: Path | None
) -> int:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            host, parts.port, timeout=timeout, context=tls_context(ca_file)
        )
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("POST", target, body=body, headers=dict(headers))
        response = conn.getresponse()
        response.read(64 * 1024)  # drain a little; the body means nothing to us
        return int(response.status)
    finally:
        conn.close()


def smtp_password(
    config: NoticesConfig, base: Path, environ: Mapping[str, str] | None = None
) -> str:
    """The SMTP password: ``HSMCA_NOTICES_SMTP_PASSWORD``, else ``smtp_password_file``."""
    environ = os.environ if environ is None else environ
    if environ.get(SMTP_PASSWORD_ENV):
        return environ[SMTP_PASSWORD_ENV]
    if not config.smtp_password_file:
        raise ConfigError(
            f"notices.smtp_username is set but neither {SMTP_PASSWORD_ENV} nor "
            "notices.smtp_password_file gives a password"
        )
    path = Path(config.smtp_password_file)
    return read_secret_file(path if path.is_absolute() else base / path, "SMTP password").decode(
        "utf-8"
    )


def send_email(
    message: EmailMessage,
    config: NoticesConfig,
    password: Callable[[], str],
    ca_file: Path | None = None,
) -> Delivered:
    """Send ``message`` through ``smtp_host``; never raises for a failure."""
    try:
        with smtplib.SMTP(
            config.smtp_host, config.smtp_port, timeout=config.smtp_timeout_seconds
        ) as smtp:
            smtp.ehlo()
            encrypted = False
            if smtp.has_extn("starttls"):
                smtp.starttls(context=tls_context(ca_file))
                smtp.ehlo()
                encrypted = True
            elif not config.smtp_allow_plain:
                return Delivered(
                    False,
                    1,
                    f"SMTP server {config.smtp_host} offers no STARTTLS; nothing sent "
                    "(notices.smtp_allow_plain allows that, for labs)",
                )
            if config.smtp_username:
                if not encrypted:
                    return Delivered(False, 1, "refusing to send the SMTP password without TLS")
                smtp.login(config.smtp_username, password())
            refused = smtp.send_message(message)
    except CAError as exc:
        return Delivered(False, 1, str(exc))
    except (smtplib.SMTPException, OSError) as exc:
        return Delivered(False, 1, f"SMTP: {type(exc).__name__}: {exc}"[:300])
    detail = "TLS" if encrypted else "plain (smtp_allow_plain)"
    if refused:
        detail += f"; refused recipients: {', '.join(sorted(refused))}"
    return Delivered(True, 1, detail=detail)
