"""Shared fixtures of the unit suite: software keys (generated once) and a CSR factory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

MakeCsr = Callable[..., bytes]


@pytest.fixture(scope="session")
def ec_p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def ec_p384_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="session")
def ec_p521_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP521R1())


@pytest.fixture(scope="session")
def ec_secp256k1_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256K1())


@pytest.fixture(scope="session")
def rsa_2048_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def rsa_1024_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


@pytest.fixture(scope="session")
def rsa_e3_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=3, key_size=2048)


@pytest.fixture(scope="session")
def ed25519_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def make_csr(ec_p256_key: ec.EllipticCurvePrivateKey) -> MakeCsr:
    """Build a signed CSR (DER by default).

    ``cn``: common name (None: empty subject); ``cns``: several common names; ``dns``/``ips``:
    subjectAltName entries; ``extensions``: extra ``(extension, critical)`` pairs.
    """

    def build(
        key: Any = None,
        *,
        cn: str | None = "www.example.com",
        cns: Sequence[str] = (),
        dns: Sequence[str] = (),
        ips: Sequence[Any] = (),
        other_names: Sequence[x509.GeneralName] = (),
        extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
        encoding: Encoding = Encoding.DER,
    ) -> bytes:
        key = ec_p256_key if key is None else key
        names = list(cns) if cns else ([cn] if cn is not None else [])
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, n, _validate=False) for n in names]
        )
        builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ip) for ip in ips]
        sans += list(other_names)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        for ext, critical in extensions:
            builder = builder.add_extension(ext, critical=critical)
        algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        return builder.sign(key, algorithm).public_bytes(encoding)

    return build
