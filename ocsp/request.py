"""Parsing OCSP requests (RFC 6960 4.1) from untrusted bytes.

cryptography parses the usual one-certificate request in a few microseconds; requests that name
several certificates (which cryptography declines) are parsed with asn1crypto. Anything that is not
a well-formed request raises :class:`MalformedRequest`. The nonce is returned as sent; whether it
is acceptable (1..32 octets, RFC 8954 section 2.1) is the responder's decision (``nonce_ok``), since
a responder configured as pure RFC 5019 ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass

from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509 import ocsp as x509_ocsp

from ocsp.der import CERTID_HASHES

NONCE_MIN = 1
NONCE_MAX = 32  # RFC 8954: Nonce ::= OCTET STRING(SIZE(1..32))


class MalformedRequest(ValueError):
    """The bytes are not an OCSP request we accept; ``str()`` says why (safe to log)."""


@dataclass(frozen=True)
class RequestedCert:
    """One CertID of a request. ``hash_name`` is None for a hash algorithm we do not support."""

    hash_name: str | None
    name_hash: bytes
    key_hash: bytes
    serial: int


@dataclass(frozen=True)
class OcspRequest:
    """A parsed request: its CertIDs and its nonce (None when it carries none)."""

    certs: tuple[RequestedCert, ...]
    nonce: bytes | None


def _hash_name(name: str | None) -> str | None:
    return name if name in CERTID_HASHES else None


def parse_request(data: bytes, max_serials: int) -> OcspRequest:
    """Parse a DER OCSPRequest with at most ``max_serials`` CertIDs."""
    if not data:
        raise MalformedRequest("empty request")
    try:
        req = x509_ocsp.load_der_ocsp_request(data)
    except NotImplementedError:
        return _parse_several(data, max_serials)
    except ValueError as exc:
        raise MalformedRequest(f"not a DER OCSP request ({str(exc)[:80]})") from None
    try:
        hash_name: str | None = _hash_name(req.hash_algorithm.name)
    except UnsupportedAlgorithm:
        hash_name = None
    cert = RequestedCert(hash_name, req.issuer_name_hash, req.issuer_key_hash, req.serial_number)
    try:
        extensions = req.extensions
    except ValueError as exc:
        raise MalformedRequest(f"bad request extensions ({str(exc)[:80]})") from None
    nonce: bytes | None = None
    for ext in extensions:
        if isinstance(ext.value, x509.OCSPNonce):
            nonce = bytes(ext.value.nonce)
    return OcspRequest((cert,), nonce)


def _parse_several(data: bytes, max_serials: int) -> OcspRequest:
    try:
        req = asn1_ocsp.OCSPRequest.load(data, strict=True)
        tbs = req["tbs_request"]
        request_list = tbs["request_list"]
        if len(request_list) > max_serials:
            raise MalformedRequest(
                f"the request names {len(request_list)} certificates (at most {max_serials})"
            )
        certs = []
        for one in request_list:
            cert_id = one["req_cert"]
            certs.append(
                RequestedCert(
                    _hash_name(cert_id["hash_algorithm"]["algorithm"].native),
                    bytes(cert_id["issuer_name_hash"].native),
                    bytes(cert_id["issuer_key_hash"].native),
                    int(cert_id["serial_number"].native),
                )
            )
        nonce: bytes | None = None
        extensions = tbs["request_extensions"]
        for ext in extensions or ():
            if ext["extn_id"].native == "nonce":
                nonce = bytes(ext["extn_value"].parsed.native)
        req.native  # noqa: B018 - parses the rest (optional signature), so garbage there is caught
    except MalformedRequest:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise MalformedRequest(f"not a DER OCSP request ({type(exc).__name__})") from None
    if not certs:
        raise MalformedRequest("the request names no certificate")
    return OcspRequest(tuple(certs), nonce)


def nonce_ok(nonce: bytes) -> bool:
    """Whether a request nonce has an acceptable size (RFC 8954: 1 to 32 octets)."""
    return NONCE_MIN <= len(nonce) <= NONCE_MAX
