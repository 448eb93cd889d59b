"""http-01 validation (RFC 8555 §8.3): fetch the key authorization from the identifier.

``GET http://{identifier}:{port}/.well-known/acme-challenge/{token}``, all of it (redirects
included) within ``timeout`` seconds (``[acme] validation_timeout_seconds``), at most 10
redirects (to http or https only, on port 80, 443 or the configured port; https certificates
are not checked, as RFC 8555 §8.3 allows), and a body limit of 8 KiB. The body, with
surrounding whitespace trimmed, must equal the key authorization.

Names are resolved with ``[acme] validation_dns_server`` when it is set (the system's resolver
otherwise); ``resolve_to`` (a test setting) connects to that address instead of resolving at
all. The Host header (and SNI) still carry the identifier.

:func:`check` raises :class:`~ca.acme.errors.AcmeError` (``dns``, ``connection``, ``tls`` or
``incorrectResponse``); :func:`validate` returns the same as text (None when valid).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

from ca.acme import dns01
from ca.acme.errors import AcmeError

TIMEOUT_SECONDS = 10.0
MAX_REDIRECTS = 10
MAX_BODY_BYTES = 8192
STATUS = dns01.STATUS


def challenge_url(identifier_type: str, value: str, port: int, token: str) -> str:
    host = f"[{value}]" if identifier_type == "ip" and ":" in value else value
    netloc = host if port == 80 else f"{host}:{port}"
    return f"http://{netloc}/.well-known/acme-challenge/{token}"


def validate(
    identifier_type: str,
    value: str,
    token: str,
    expected: str,
    *,
    port: int = 80,
    resolve_to: str = "",
    dns_server: str = "",
    timeout: float = TIMEOUT_SECONDS,
) -> str | None:
    """None if the identifier serves ``expected``; otherwise why not (text starting with
    ``incorrect`` when the answer was wrong). :func:`check` gives the problem type too."""
    try:
        check(
            identifier_type,
            value,
            token,
            expected,
            port=port,
            resolve_to=resolve_to,
            dns_server=dns_server,
            timeout=timeout,
        )
    except AcmeError as exc:
        return exc.detail
    return None


def check(
    identifier_type: str,
    value: str,
    token: str,
    expected: str,
    *,
    port: int = 80,
    resolve_to: str = "",
    dns_server: str = "",
    timeout: float = TIMEOUT_SECONDS,
) -> None:
    """Return if the identifier serves ``expected``; raise :class:`AcmeError` otherwise."""
    end = time.monotonic() + timeout
    url = challenge_url(identifier_type, value, port, token)
    allowed_ports = {80, 443, port}
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        scheme = parts.scheme
        if scheme not in ("http", "https"):
            raise _connection(f"redirect to a non-http(s) URL: {url[:200]}")
        try:
            target_port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise _connection(f"redirect to a URL with a bad port: {url[:200]}") from None
        if target_port not in allowed_ports:
            raise _connection(f"redirect to port {target_port}, not one of {sorted(allowed_ports)}")
        host = parts.hostname or ""
        if not host:
            raise _connection(f"redirect to a URL without a host: {url[:200]}")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        left = end - time.monotonic()
        if left <= 0:
            raise _connection(f"gave up after {timeout:g} s at {url[:200]}")
        status, location, body = _fetch(
            url, scheme, host, target_port, path, resolve_to, dns_server, left
        )
        if status in (301, 302, 303, 307, 308):
            if not location:
                raise _connection(f"{url[:200]} answered {status} without a Location")
            url = urljoin(url, location)
            continue
        if status != 200:
            raise _incorrect(f"incorrect response: {url[:200]} answered HTTP {status}")
        if body is None:
            raise _incorrect(f"incorrect response: the body is larger than {MAX_BODY_BYTES} bytes")
        if body.decode("utf-8", "replace").strip() != expected:
            raise _incorrect("incorrect response: the body is not the key authorization")
        return
    raise _connection(f"more than {MAX_REDIRECTS} redirects")


def _connection(detail: str) -> AcmeError:
    return AcmeError("connection", detail, STATUS)


def _incorrect(detail: str) -> AcmeError:
    return AcmeError("incorrectResponse", detail, STATUS)


def _fetch(
    url: str,
    scheme: str,
    host: str,
    port: int,
    path: str,
    resolve_to: str,
    dns_server: str,
    timeout: float,
) -> tuple[int, str | None, bytes | None]:
    """One GET with its failures as problems: (status, Location, body or None if too big)."""
    where = f"could not fetch {url[:200]}"
    try:
        return _get(scheme, host, port, path, resolve_to, dns_server, timeout)
    except AcmeError as exc:  # resolving or connecting (dns01.connect)
        raise AcmeError(exc.kind, f"{where}: {exc.detail}", STATUS) from None
    except ssl.SSLError as exc:
        raise AcmeError("tls", f"{where}: TLS: {exc.reason or exc}", STATUS) from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _connection(f"{where}: {type(exc).__name__}: {str(exc)[:200]}") from None


def _get(
    scheme: str,
    host: str,
    port: int,
    path: str,
    resolve_to: str,
    dns_server: str,
    timeout: float,
) -> tuple[int, str | None, bytes | None]:
    """One GET; (status, Location, body or None if over the limit)."""

    def open_socket() -> socket.socket:
        sock = dns01.connect(
            host, port, resolve_to=resolve_to, dns_server=dns_server, timeout=timeout
        )
        if scheme != "https":
            return sock
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            return context.wrap_socket(sock, server_hostname=None if dns01.is_ip(host) else host)
        except BaseException:
            sock.close()
            raise

    conn = _Connection(host, port, timeout, open_socket)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", _host_header(host, port, scheme))
        conn.putheader("User-Agent", "hsmca-acme-validator")
        conn.putheader("Accept", "*/*")
        conn.putheader("Connection", "close")
        conn.endheaders()
        resp = conn.getresponse()
        location = resp.getheader("Location")
        body = resp.read(MAX_BODY_BYTES + 1)
        return resp.status, location, (body if len(body) <= MAX_BODY_BYTES else None)
    finally:
        conn.close()


def _host_header(host: str, port: int, scheme: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    default = 443 if scheme == "https" else 80
    return shown if port == default else f"{shown}:{port}"


class _Connection(http.client.HTTPConnection):
    """HTTP over a socket from ``opener`` (the validation resolver, TLS with the identifier as
    SNI for https) rather than one http.client would resolve itself."""

    def __init__(
        self, host: str, port: int, timeout: float, opener: Callable[[], socket.socket]
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self._opener = opener

    def connect(self) -> None:
        self.sock = self._opener()
