"""The signer interface: HSM keys are cryptography private keys whose ``sign()`` runs in the token.

Builders (certificates, CRLs, OCSP responses) accept an :data:`IssuerKey` and cannot tell an HSM key
from a software one. A :class:`KeyStore` loads such a key by reference and generates key pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeAlias

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.errors import ConfigError

IssuerKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
#: The hashes a CA signs with (what cryptography's builders accept).
SigningHash: TypeAlias = hashes.SHA256 | hashes.SHA384 | hashes.SHA512

_CURVES: dict[str, type[ec.EllipticCurve]] = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1}
_RSA_SIZES = (2048, 3072, 4096)


@dataclass(frozen=True)
class KeySpec:
    """A key type the CA can generate: ``ec:P-256``, ``ec:P-384``, ``rsa:2048``, ``rsa:3072``, ``rsa:4096``."""

    algorithm: str  # "ec" | "rsa"
    curve: str = ""  # "P-256" | "P-384" for EC
    bits: int = 0  # RSA modulus size

    @classmethod
    def parse(cls, text: str) -> KeySpec:
        """Parse ``ec:P-256`` style text; raise :class:`ConfigError` on anything else."""
        algorithm, _, param = text.strip().partition(":")
        algorithm = algorithm.lower()
        if algorithm == "ec" and param.upper() in _CURVES:
            return cls("ec", curve=param.upper())
        if algorithm == "rsa" and param.isdigit() and int(param) in _RSA_SIZES:
            return cls("rsa", bits=int(param))
        raise ConfigError(
            f"unsupported key type {text!r}: use one of ec:P-256, ec:P-384, rsa:2048, rsa:3072, rsa:4096"
        )

    def __str__(self) -> str:
        return f"ec:{self.curve}" if self.algorithm == "ec" else f"rsa:{self.bits}"

    def ec_curve(self) -> ec.EllipticCurve:
        """The cryptography curve object of an EC spec."""
        return _CURVES[self.curve]()

    def signature_hash(self) -> SigningHash:
        """The hash a CA with this key signs with (SHA-384 for P-384, SHA-256 otherwise)."""
        return hashes.SHA384() if self.curve == "P-384" else hashes.SHA256()


def spec_of(key: PublicKey | IssuerKey) -> KeySpec:
    """The :class:`KeySpec` that describes an existing key."""
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        name = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
        return KeySpec("ec", curve=name)
    return KeySpec("rsa", bits=key.key_size)


def signature_hash_for(key: PublicKey | IssuerKey) -> SigningHash:
    """The hash to sign with, given the issuer key (matches the CA/B Forum's allowed pairs)."""
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return hashes.SHA384() if key.curve.name == "secp384r1" else hashes.SHA256()
    return hashes.SHA256()


@dataclass(frozen=True)
class KeyRef:
    """Where a key lives: the token that holds it and its CKA_LABEL / CKA_ID (hex). Never a secret."""

    token_label: str
    label: str
    key_id: str  # hex of CKA_ID


class KeyStore(Protocol):
    """Loads and generates CA keys. :class:`ca.keys.pkcs11.Pkcs11KeyStore` is the real one."""

    def load(self, ref: KeyRef) -> IssuerKey:
        """Return a signing key for ``ref``; raises ``HsmKeyNotFound`` or ``HsmUnavailable``."""
        ...

    def generate(self, ref: KeyRef, spec: KeySpec) -> IssuerKey:
        """Generate a new non-extractable key pair at ``ref`` and return its signing key."""
        ...
