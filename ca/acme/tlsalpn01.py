"""tls-alpn-01 validation (RFC 8737, and RFC 8738 §6 for IP addresses).

Connect to the identifier (port 443, or ``[acme] validation_tlsalpn01_port``), offer ALPN
``acme-tls/1`` alone with SNI set to the DNS name (for an IP address: its reverse-mapping name
under ``in-addr.arpa`` / ``ip6.arpa``), and require that the server negotiated ``acme-tls/1``
(TLS 1.2 or later). The chain is not verified; the certificate presented must carry

- a subjectAltName with exactly one name, the identifier (dNSName or iPAddress), and
- a critical id-pe-acmeIdentifier extension (1.3.6.1.5.5.7.1.31) whose value is the DER
  ``OCTET STRING`` of the SHA-256 of the key authorization.

Failures raise :class:`~ca.acme.errors.AcmeError`: ``dns`` / ``connection`` (from
:func:`ca.acme.dns01.connect`), ``tls`` (the handshake failed), ``incorrectResponse`` (the wrong
protocol or certificate).
"""

from __future__ import annotations

import hashlib
import ipaddress
import ssl

from cryptography import x509

from ca.acme import dns01
from ca.acme.errors import AcmeError

#: The ALPN protocol name of the challenge (RFC 8737 §6.2).
ALPN_PROTOCOL = "acme-tls/1"
#: id-pe-acmeIdentifier (RFC 8737 §6.1).
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
STATUS = dns01.STATUS


# Pure parts ------------------------------------------------------------------------------------


def sni_name(identifier_type: str, value: str) -> str:
    """The SNI to send: the DNS name, or an IP address's reverse-mapping name (RFC 8738 §6)."""
    if identifier_type == "ip":
        return ipaddress.ip_address(value).reverse_pointer
    return value


def expected_extension_value(key_authorization: str) -> bytes:
    """The DER the acmeIdentifier extension must hold: ``OCTET STRING (SIZE (32))`` of
    SHA-256(key authorization)."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return b"\x04\x20" + digest


def check_certificate(der: bytes, identifier_type: str, value: str, key_authorization: str) -> None:
    """``incorrectResponse`` unless the DER certificate is a valid tls-alpn-01 response for the
    identifier (see the module docstring); the certificate's chain and dates do not matter."""
    try:
        cert = x509.load_der_x509_certificate(der)
        extensions = cert.extensions
    except ValueError as exc:
        raise _incorrect(f"the certificate cannot be parsed: {str(exc)[:200]}") from None
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise _incorrect("the certificate has no subjectAltName") from None
    names = list(san)
    if len(names) != 1:
        raise _incorrect(f"the subjectAltName must hold exactly one name, it holds {len(names)}")
    if not _san_matches(names[0], identifier_type, value):
        raise _incorrect(
            f"the subjectAltName names {_describe(names[0])}, not {identifier_type}:{value}"
        )
    try:
        ext = extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    except x509.ExtensionNotFound:
        raise _incorrect("the certificate has no acmeIdentifier extension") from None
    if not ext.critical:
        raise _incorrect("the acmeIdentifier extension must be critical")
    raw = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else b""
    if len(raw) != 34 or raw[:2] != b"\x04\x20":
        raise _incorrect("the acmeIdentifier extension is not a DER OCTET STRING of 32 octets")
    if raw != expected_extension_value(key_authorization):
        raise _incorrect("the acmeIdentifier extension is not the SHA-256 of the key authorization")


def _san_matches(name: x509.GeneralName, identifier_type: str, value: str) -> bool:
    if identifier_type == "ip":
        return isinstance(name, x509.IPAddress) and name.value == ipaddress.ip_address(value)
    return isinstance(name, x509.DNSName) and name.value.lower() == value


def _describe(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"dns:{name.value[:255]}"
    if isinstance(name, x509.IPAddress):
        return f"ip:{name.value}"
    return type(name).__name__


def _incorrect(detail: str) -> AcmeError:
    return AcmeError("incorrectResponse", detail, STATUS)


def client_context() -> ssl.SSLContext:
    """TLS 1.2+ offering only ``acme-tls/1``; no chain or host name check (RFC 8737 §3)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ALPN_PROTOCOL])
    return context


# The check -------------------------------------------------------------------------------------


def validate(
    identifier_type: str,
    value: str,
    key_authorization: str,
    *,
    port: int = 443,
    resolve_to: str = "",
    dns_server: str = "",
    timeout: float = 10.0,
) -> None:
    """tls-alpn-01 for one identifier: returns if the response is right, raises
    :class:`AcmeError` otherwise."""
    sock = dns01.connect(value, port, resolve_to=resolve_to, dns_server=dns_server, timeout=timeout)
    sni = sni_name(identifier_type, value)
    try:
        with client_context().wrap_socket(sock, server_hostname=sni) as tls:
            protocol = tls.selected_alpn_protocol()
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLError as exc:
        raise AcmeError(
            "tls", f"TLS handshake with {value} (SNI {sni}) failed: {exc.reason or exc}", STATUS
        ) from None
    except OSError as exc:
        raise AcmeError(
            "connection",
            f"TLS connection to {value} port {port} failed: {type(exc).__name__}: {str(exc)[:200]}",
            STATUS,
        ) from None
    finally:
        sock.close()
    if protocol != ALPN_PROTOCOL:
        raise _incorrect(f"the server did not negotiate ALPN {ALPN_PROTOCOL} (got {protocol!r})")
    if not der:
        raise _incorrect("the server presented no certificate")
    check_certificate(der, identifier_type, value, key_authorization)
