"""dns-01 validation (RFC 8555 §8.4) and the resolver every validation looks names up with.

dns-01: a TXT record at ``_acme-challenge.<name>`` (for a wildcard ``*.x.test`` the
authorization's name ``x.test``) must hold ``base64url(SHA-256(key authorization))``. The
query goes to ``[acme] validation_dns_server`` (``IP:port``) when it is set, to the system's
resolvers otherwise; CNAMEs are followed (the resolver's answer carries the chain). Strings
of one TXT record are concatenated, as a TXT value longer than 255 octets must be split.

:func:`connect` opens the TCP connection http-01 and tls-alpn-01 validate over, resolving the
name with the same resolver (or not at all with ``validation_resolve_to``, a test setting).

Failures raise :class:`~ca.acme.errors.AcmeError` of kind ``dns`` (the lookup failed: NXDOMAIN,
SERVFAIL), ``connection`` (no answer in time, nothing to connect to) or ``incorrectResponse``
(the record is missing or holds something else).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import socket
import time
from collections.abc import Sequence

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from ca.acme.errors import AcmeError

#: Challenge errors are reported with this status inside the challenge object.
STATUS = 403
#: At most this many TXT values are quoted in an error (each cut to SHOWN_CHARS).
SHOWN_VALUES = 3
SHOWN_CHARS = 60


# Pure parts ------------------------------------------------------------------------------------


def txt_value(key_authorization: str) -> str:
    """The TXT value a dns-01 challenge expects: base64url (no padding) of SHA-256 of the key
    authorization."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def txt_name(identifier_value: str) -> str:
    """``_acme-challenge.<name>`` for an authorization's name (``*.`` dropped, if present)."""
    base = identifier_value[2:] if identifier_value.startswith("*.") else identifier_value
    return f"_acme-challenge.{base}"


def check_txt_values(name: str, values: Sequence[str], expected: str) -> None:
    """``incorrectResponse`` unless one of ``values`` (the TXT records found at ``name``) is
    ``expected``; the error says how many there were and quotes a few, shortened."""
    if expected in values:
        return
    if not values:
        raise AcmeError("incorrectResponse", f"no TXT record at {name}", STATUS)
    shown = ", ".join(repr(_shorten(v)) for v in values[:SHOWN_VALUES])
    more = f" and {len(values) - SHOWN_VALUES} more" if len(values) > SHOWN_VALUES else ""
    raise AcmeError(
        "incorrectResponse",
        f"{len(values)} TXT record(s) at {name}, none is the expected key authorization digest "
        f"(found {shown}{more})",
        STATUS,
    )


def _shorten(value: str) -> str:
    return value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + "…"


def parse_server(server: str) -> tuple[str, int]:
    """``"IP:port"`` / ``"[IPv6]:port"`` → (IP, port); the config checked the shape."""
    host, _, port = server.rpartition(":")
    return host.strip("[]"), int(port)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# Lookups ---------------------------------------------------------------------------------------


def make_resolver(server: str, timeout: float) -> dns.resolver.Resolver:
    """A resolver asking ``server`` (``IP:port``), or the system's resolvers when it is empty,
    that gives up after ``timeout`` seconds in all."""
    try:
        resolver = dns.resolver.Resolver(configure=not server)
    except dns.exception.DNSException as exc:  # no /etc/resolv.conf, or an unusable one
        raise AcmeError("dns", f"no DNS resolver configured: {exc}", STATUS) from None
    if server:
        host, port = parse_server(server)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.lifetime = timeout
    resolver.timeout = timeout
    return resolver


def lookup(name: str, rdtype: str, server: str, timeout: float) -> list[str]:
    """The records of type ``rdtype`` at ``name`` (CNAMEs followed) as text; TXT records as
    their concatenated strings. An empty list when the name exists without such records."""
    resolver = make_resolver(server, timeout)
    qname = dns.name.from_text(name)
    try:
        answer = resolver.resolve(qname, rdtype, search=False)
    except dns.resolver.NXDOMAIN:
        raise AcmeError("dns", f"{name} does not exist (NXDOMAIN)", STATUS) from None
    except dns.resolver.NoAnswer:
        return []
    except dns.resolver.LifetimeTimeout:
        raise AcmeError(
            "connection",
            f"no answer for {rdtype} {name} within {timeout:g} s from {_where(server)}",
            STATUS,
        ) from None
    except dns.resolver.NoNameservers as exc:
        raise AcmeError(
            "dns", f"looking up {rdtype} {name} failed: {_first_line(exc)}", STATUS
        ) from None
    except dns.exception.DNSException as exc:
        raise AcmeError(
            "dns", f"looking up {rdtype} {name} failed: {type(exc).__name__}", STATUS
        ) from None
    if answer.rdtype == dns.rdatatype.TXT:
        return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]
    return [rdata.to_text() for rdata in answer]


def _where(server: str) -> str:
    return server or "the system resolvers"


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def validate(identifier_value: str, key_authorization: str, *, server: str, timeout: float) -> None:
    """dns-01 for one authorization's name: returns if the TXT record is there, raises
    :class:`AcmeError` otherwise."""
    name = txt_name(identifier_value)
    values = lookup(name, "TXT", server, timeout)
    check_txt_values(name, values, txt_value(key_authorization))


def resolve_addresses(host: str, server: str, timeout: float) -> list[str]:
    """``host``'s IPv6 then IPv4 addresses from ``server`` (CNAMEs followed); ``dns`` error if
    there are none."""
    end = time.monotonic() + timeout
    found: list[str] = []
    for rdtype in ("AAAA", "A"):
        found += lookup(host, rdtype, server, max(end - time.monotonic(), 0.1))
    if not found:
        raise AcmeError("dns", f"{host} has no A or AAAA record", STATUS)
    return found


def connect(
    host: str, port: int, *, resolve_to: str, dns_server: str, timeout: float
) -> socket.socket:
    """A TCP connection to ``host``:``port``: to ``resolve_to`` if set (a test setting), to
    ``host`` itself if it is an address, else to the first address of ``host`` (from
    ``dns_server``, or the system's resolver) that accepts within the time left."""
    end = time.monotonic() + timeout
    if resolve_to:
        addresses = [resolve_to]
    elif is_ip(host):
        addresses = [host]
    elif dns_server:
        addresses = resolve_addresses(host, dns_server, timeout)
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise AcmeError("dns", f"cannot resolve {host}: {exc.strerror}", STATUS) from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    last: OSError | None = None
    for address in addresses:
        left = end - time.monotonic()
        if left <= 0:
            break
        try:
            return socket.create_connection((address, port), timeout=left)
        except OSError as exc:
            last = exc
    reason = f"{type(last).__name__}: {str(last)[:200]}" if last else "timed out"
    raise AcmeError("connection", f"could not connect to {host} port {port} ({reason})", STATUS)
