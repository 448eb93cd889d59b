"""Parsing and checking certificate signing requests (pure: bytes in, facts or violations out)."""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID, NameOID

from ca.errors import BadCSR, BadPublicKey

#: Larger inputs are refused before parsing (a CSR is a few KiB at most).
MAX_CSR_BYTES = 64 * 1024
_EC_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
# Extensions a CSR may carry that we read (SAN) or harmlessly ignore; others are noted as ignored.
_KNOWN_REQUESTED = {ExtensionOID.SUBJECT_ALTERNATIVE_NAME}


@dataclass(frozen=True)
class CsrFacts:
    """What the CA takes from a checked CSR. Nothing else from the CSR reaches a certificate."""

    csr: x509.CertificateSigningRequest
    der_sha256: str
    key_type: str  # "ec:P-256", "rsa:2048", ...
    common_name: str | None
    dns_names: tuple[str, ...]
    ip_addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    ignored_extensions: tuple[str, ...]

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
        key = self.csr.public_key()
        assert isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey))
        return key

    def san_strings(self) -> list[str]:
        """SANs as ``dns:name`` / ``ip:addr`` strings, for storage and audit."""
        return [f"dns:{d}" for d in self.dns_names] + [f"ip:{ip}" for ip in self.ip_addresses]


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
    """Parse ``data``, verify its self-signature and key, and extract the names it asks for."""
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
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        extensions = list(csr.extensions)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise BadCSR(f"CSR content could not be parsed ({exc})") from None
    if len(cns) > 1:
        raise BadCSR("CSR subject has more than one common name")
    cn = cns[0].value if cns else None
    if isinstance(cn, bytes):
        raise BadCSR("CSR common name is not a string")
    if cn is not None and not 1 <= len(cn) <= 64:
        raise BadCSR("CSR common name must be 1 to 64 characters (RFC 5280 ub-common-name)")

    dns: list[str] = []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    ignored: list[str] = []
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
                else:
                    raise BadCSR(
                        f"CSR asks for an unsupported subjectAltName type ({type(gn).__name__})"
                    )
        else:
            # Never copied into a certificate (CA:true, name constraints, anything unknown).
            name = getattr(ext.oid, "_name", "Unknown OID")
            if name == "Unknown OID":
                name = ext.oid.dotted_string
            ignored.append(name)

    if cn is not None:
        cn_ip = _as_ip(cn)
        if cn_ip is not None:
            if cn_ip not in ips:
                ips.insert(0, cn_ip)
        elif cn not in dns:
            dns.insert(0, cn)
    for name in dns:
        problem = _dns_problem(name)
        if problem:
            raise BadCSR(f"CSR name {name!r}: {problem}")
    if len(set(dns)) != len(dns) or len(set(ips)) != len(ips):
        dns = list(dict.fromkeys(dns))
        ips = list(dict.fromkeys(ips))

    return CsrFacts(
        csr=csr,
        der_sha256=hashlib.sha256(csr.public_bytes(Encoding.DER)).hexdigest(),
        key_type=key_type,
        common_name=cn,
        dns_names=tuple(dns),
        ip_addresses=tuple(ips),
        ignored_extensions=tuple(ignored),
    )


def _as_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _dns_problem(name: str) -> str | None:
    """A basic syntax check of a DNS name (the policy engine applies the full rules)."""
    if not name or len(name) > 253:
        return "length must be 1..253"
    if name != name.lower():
        return "must be lowercase"
    if name.endswith("."):
        return "must not end with a dot"
    labels = name.split(".")
    for i, label in enumerate(labels):
        if label == "*" and i == 0 and len(labels) > 2:
            continue
        if not label or len(label) > 63:
            return "has an empty or over-long label"
        if label.startswith("-") or label.endswith("-"):
            return "has a label starting or ending with '-'"
        if not all(c.isascii() and (c.isalnum() or c == "-") for c in label):
            return "may contain only a-z, 0-9 and '-' (use A-labels for IDNs)"
    return None
