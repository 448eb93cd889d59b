"""Parsing and checking certificate signing requests (pure: bytes in, facts or violations out)."""

from __future__ import annotations

import hashlib
import ipaddress
import string
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID, NameOID

from ca.errors import BadCSR, BadPublicKey

#: Larger inputs are refused before parsing (a CSR is a few KiB at most).
MAX_CSR_BYTES = 64 * 1024
_EC_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}

#: Subject attributes known by short name; any other appears as its dotted OID.
SUBJECT_ATTRIBUTES: dict[str, x509.ObjectIdentifier] = {
    "CN": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "L": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "C": NameOID.COUNTRY_NAME,
    "serialNumber": NameOID.SERIAL_NUMBER,
}
_ATTRIBUTE_NAMES = {oid: name for name, oid in SUBJECT_ATTRIBUTES.items()}
# RFC 5280 appendix A upper bounds, counted in UTF-8 octets (cryptography refuses a longer CN).
_UPPER_BOUNDS = {"CN": 64, "O": 64, "OU": 64, "L": 128, "ST": 128, "serialNumber": 64}
# cryptography encodes these as PrintableString / IA5String and does not check the characters.
_PRINTABLE_STRING = {
    NameOID.COUNTRY_NAME,
    NameOID.JURISDICTION_COUNTRY_NAME,
    NameOID.SERIAL_NUMBER,
    NameOID.DN_QUALIFIER,
}
_IA5_STRING = {NameOID.EMAIL_ADDRESS, NameOID.DOMAIN_COMPONENT}
_PRINTABLE_CHARS = frozenset(string.ascii_letters + string.digits + " '()+,-./:=?")


@dataclass(frozen=True)
class CsrFacts:
    """What the CA takes from a checked CSR. Nothing else from the CSR reaches a certificate.

    Names are exactly as the CSR has them (syntax is judged by the policy, so that every problem
    is reported at once); exact duplicates are collapsed. The CN is *not* added to the SANs.
    """

    csr: x509.CertificateSigningRequest
    der_sha256: str
    key_type: str  # "ec:P-256", "rsa:2048", ...
    common_name: str | None
    dns_names: tuple[str, ...]
    ip_addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    ignored_extensions: tuple[str, ...]
    uris: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    #: (short name or dotted OID, value) pairs in CSR order, e.g. ``("CN", "www.example.com")``.
    subject_attributes: tuple[tuple[str, str], ...] = ()
    #: Requested extensions the policy refuses rather than silently dropping.
    requests_ca: bool = False
    requested_name_constraints: bool = False
    requested_policies: tuple[str, ...] = ()

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
        key = self.csr.public_key()
        assert isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey))
        return key

    def san_strings(self) -> list[str]:
        """SANs as ``dns:`` / ``ip:`` / ``uri:`` / ``email:`` strings, for storage and audit."""
        return san_strings(self.dns_names, self.ip_addresses, self.uris, self.emails)


def san_strings(
    dns_names: Iterable[str],
    ip_addresses: Iterable[object],
    uris: Iterable[str] = (),
    emails: Iterable[str] = (),
) -> list[str]:
    return (
        [f"dns:{d}" for d in dns_names]
        + [f"ip:{ip}" for ip in ip_addresses]
        + [f"uri:{u}" for u in uris]
        + [f"email:{e}" for e in emails]
    )


def attribute_oid(name: str) -> x509.ObjectIdentifier:
    """The OID of a subject attribute given as a short name (``CN``) or a dotted OID."""
    oid = SUBJECT_ATTRIBUTES.get(name)
    return oid if oid is not None else x509.ObjectIdentifier(name)


def attribute_name(oid: x509.ObjectIdentifier) -> str:
    """``CN``, ``O``, ... for the attributes we name, the dotted OID for any other."""
    return _ATTRIBUTE_NAMES.get(oid, oid.dotted_string)


def subject_name(attributes: Iterable[tuple[str, str]]) -> x509.Name:
    """An ``x509.Name`` of single-valued RDNs from (name, value) pairs (see :attr:`subject_attributes`)."""
    return x509.Name([x509.NameAttribute(attribute_oid(n), v) for n, v in attributes])


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Parse a CSR from PEM or DER; :class:`BadCSR` with a one-line reason otherwise."""
    if len(data) > MAX_CSR_BYTES:
        raise BadCSR(f"CSR is {len(data)} bytes; the limit is {MAX_CSR_BYTES}")
    if not data.strip():
        raise BadCSR("CSR is empty")
    stripped = data.lstrip()
    try:
        if stripped.startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(stripped)
        return x509.load_der_x509_csr(data)
    except ValueError as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else "unparseable"
        raise BadCSR(f"CSR could not be parsed ({reason})") from None


def key_type_of(key: object) -> str:
    """``ec:P-256`` / ``rsa:2048`` for a public key; :class:`BadPublicKey` for any other kind."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = _EC_CURVES.get(key.curve.name)
        if curve is None:
            raise BadPublicKey(
                f"EC curve {key.curve.name} is not accepted (use P-256, P-384 or P-521)"
            )
        return f"ec:{curve}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa:{key.key_size}"
    raise BadPublicKey(
        f"{type(key).__name__.removeprefix('_')} keys are not accepted (use EC or RSA)"
    )


def check_public_key(key: object) -> list[str]:
    """Every reason the key is too weak or odd to certify (empty when acceptable)."""
    if isinstance(key, rsa.RSAPublicKey):
        problems = []
        numbers = key.public_numbers()
        if key.key_size < 2048:
            problems.append(f"RSA key of {key.key_size} bits is too small (minimum 2048)")
        if key.key_size % 8:
            problems.append(f"RSA modulus size {key.key_size} is not a multiple of 8")
        if key.key_size > 8192:
            problems.append(f"RSA key of {key.key_size} bits is too large (maximum 8192)")
        e = numbers.e
        if e % 2 == 0 or e < 65537 or e.bit_length() > 256:
            problems.append("RSA public exponent must be odd and between 65537 and 2^256-1")
        return problems
    try:
        key_type_of(key)
    except BadPublicKey as exc:
        return [str(exc)]
    return []


def check_csr(data: bytes) -> CsrFacts:
    """Parse ``data``, verify its self-signature and key, and extract what it asks for.

    Raises :class:`BadCSR` / :class:`BadPublicKey` only for structural problems; whether the names,
    subject and requested extensions are acceptable is the policy's decision.
    """
    csr = load_csr(data)
    try:
        public_key = csr.public_key()
    except (ValueError, TypeError) as exc:
        raise BadPublicKey(f"CSR public key is unusable ({exc})") from None
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, TypeError):
        signature_ok = False
    if not signature_ok:
        raise BadCSR("CSR signature does not verify")
    problems = check_public_key(public_key)
    if problems:
        raise BadPublicKey("; ".join(problems))
    key_type = key_type_of(public_key)

    try:
        rdns = list(csr.subject.rdns)
        extensions = list(csr.extensions)
    except x509.DuplicateExtension as exc:
        raise BadCSR(f"CSR has a duplicate extension ({_oid_name(exc.oid)})") from None
    except (ValueError, x509.UnsupportedGeneralNameType) as exc:
        raise BadCSR(f"CSR content could not be parsed ({exc})") from None
    attributes = _subject_attributes(rdns)
    cns = [value for name, value in attributes if name == "CN"]
    if len(cns) > 1:
        raise BadCSR("CSR subject has more than one common name")
    cn = cns[0] if cns else None

    dns: list[str] = []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    uris: list[str] = []
    emails: list[str] = []
    ignored: list[str] = []
    requests_ca = requested_name_constraints = False
    policies: list[str] = []
    for ext in extensions:
        if ext.oid == ExtensionOID.SUBJECT_ALTERNATIVE_NAME:
            san = ext.value
            assert isinstance(san, x509.SubjectAlternativeName)
            for gn in san:
                if isinstance(gn, x509.DNSName):
                    dns.append(gn.value)
                elif isinstance(gn, x509.IPAddress) and isinstance(
                    gn.value, (ipaddress.IPv4Address, ipaddress.IPv6Address)
                ):
                    ips.append(gn.value)
                elif isinstance(gn, x509.UniformResourceIdentifier):
                    uris.append(gn.value)
                elif isinstance(gn, x509.RFC822Name):
                    emails.append(gn.value)
                else:
                    raise BadCSR(
                        f"CSR asks for an unsupported subjectAltName type ({type(gn).__name__})"
                    )
            continue
        # Never copied into a certificate; the ones that ask for authority are refused by policy.
        value = ext.value
        if isinstance(value, x509.BasicConstraints) and value.ca:
            requests_ca = True
        elif isinstance(value, x509.NameConstraints):
            requested_name_constraints = True
        elif isinstance(value, x509.CertificatePolicies):
            policies += [p.policy_identifier.dotted_string for p in value]
        ignored.append(_oid_name(ext.oid))

    return CsrFacts(
        csr=csr,
        der_sha256=hashlib.sha256(csr.public_bytes(Encoding.DER)).hexdigest(),
        key_type=key_type,
        common_name=cn,
        dns_names=tuple(dict.fromkeys(dns)),
        ip_addresses=tuple(dict.fromkeys(ips)),
        ignored_extensions=tuple(ignored),
        uris=tuple(dict.fromkeys(uris)),
        emails=tuple(dict.fromkeys(emails)),
        subject_attributes=tuple(attributes),
        requests_ca=requests_ca,
        requested_name_constraints=requested_name_constraints,
        requested_policies=tuple(dict.fromkeys(policies)),
    )


def _subject_attributes(rdns: list[x509.RelativeDistinguishedName]) -> list[tuple[str, str]]:
    """(name, value) pairs of a subject we could re-encode faithfully; :class:`BadCSR` otherwise."""
    out = []
    for rdn in rdns:
        if len(rdn) != 1:
            raise BadCSR("CSR subject has a multi-valued RDN (one attribute per RDN, please)")
        [attr] = rdn
        name = attribute_name(attr.oid)
        value = attr.value
        if not isinstance(value, str):
            raise BadCSR(f"CSR subject attribute {name} is not a string")
        what = "common name" if name == "CN" else f"subject attribute {name}"
        octets = len(value.encode("utf-8"))
        limit = _UPPER_BOUNDS.get(name)
        if not value:
            raise BadCSR(f"CSR {what} is empty")
        if limit is not None and octets > limit:
            raise BadCSR(
                f"CSR {what} is {octets} octets long; at most {limit} (RFC 5280 upper bound)"
            )
        if attr.oid in (NameOID.COUNTRY_NAME, NameOID.JURISDICTION_COUNTRY_NAME) and not (
            len(value) == 2 and value.isascii() and value.isalpha() and value.isupper()
        ):
            raise BadCSR(f"CSR subject attribute {name} must be a two-letter country code")
        if attr.oid in _PRINTABLE_STRING and not set(value) <= _PRINTABLE_CHARS:
            raise BadCSR(f"CSR subject attribute {name} has characters PrintableString lacks")
        if attr.oid in _IA5_STRING and not value.isascii():
            raise BadCSR(f"CSR subject attribute {name} must be ASCII (IA5String)")
        out.append((name, value))
    return out


def _oid_name(oid: x509.ObjectIdentifier) -> str:
    name = getattr(oid, "_name", "Unknown OID")
    return oid.dotted_string if name == "Unknown OID" else str(name)
