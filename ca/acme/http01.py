"""http-01 validation (RFC 8555 §8.3): fetch the key authorization from the identifier.

``GET http://{identifier}:{port}/.well-known/acme-challenge/{token}`` with a 10 s timeout per
connection, at most 10 redirects (to http or https only, on port 80, 443 or the configured
port; https certificates are not checked, as RFC 8555 §8.3 allows), and a body limit of 8 KiB.
The body, with surrounding whitespace trimmed, must equal the key authorization.

``resolve_to`` (a test setting) connects to that address instead of resolving the name; the
Host header (and SNI) still carry the identifier.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from urllib.parse import urljoin, urlsplit

TIMEOUT_SECONDS = 10.0
MAX_REDIRECTS = 10
MAX_BODY_BYTES = 8192


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
) -> str | None:
    """None if the identifier serves ``expected``; otherwise why not (a ``connection`` problem,
    or text starting with ``incorrect`` when the answer was wrong)."""
    url = challenge_url(identifier_type, value, port, token)
    allowed_ports = {80, 443, port}
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        scheme = parts.scheme
        if scheme not in ("http", "https"):
            return f"redirect to a non-http(s) URL: {url[:200]}"
        try:
            target_port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            return f"redirect to a URL with a bad port: {url[:200]}"
        if target_port not in allowed_ports:
            return f"redirect to port {target_port}, not one of {sorted(allowed_ports)}"
        host = parts.hostname or ""
        if not host:
            return f"redirect to a URL without a host: {url[:200]}"
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        try:
            status, location, body = _get(scheme, host, target_port, path, resolve_to)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return f"could not fetch {url[:200]}: {type(exc).__name__}: {str(exc)[:200]}"
        if status in (301, 302, 303, 307, 308):
            if not location:
                return f"{url[:200]} answered {status} without a Location"
            url = urljoin(url, location)
            continue
        if status != 200:
            return f"incorrect response: {url[:200]} answered HTTP {status}"
        if body is None:
            return f"incorrect response: the body is larger than {MAX_BODY_BYTES} bytes"
        text = body.decode("utf-8", "replace").strip()
        if text != expected:
            return "incorrect response: the body is not the key authorization"
        return None
    return f"more than {MAX_REDIRECTS} redirects"


def _get(
    scheme: str, host: str, port: int, path: str, resolve_to: str
) -> tuple[int, str | None, bytes | None]:
    """One GET; (status, Location, body or None if over the limit)."""
    address = resolve_to or host
    host_header = _host_header(host, port, scheme)
    conn: http.client.HTTPConnection
    if scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = _SniHTTPSConnection(address, port, timeout=TIMEOUT_SECONDS, context=context)
        conn.sni = None if _is_ip(host) else host
    else:
        conn = http.client.HTTPConnection(address, port, timeout=TIMEOUT_SECONDS)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host_header)
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


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host_header(host: str, port: int, scheme: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    default = 443 if scheme == "https" else 80
    return shown if port == default else f"{shown}:{port}"


class _SniHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to ``address`` with the identifier as SNI (not the address connected to)."""

    sni: str | None = None

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        context: ssl.SSLContext = self._context  # type: ignore[attr-defined]
        self.sock = context.wrap_socket(sock, server_hostname=self.sni)
