"""Who answers for what: a CA as OCSP requests name it, and a responder key that signs for it."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from asn1crypto import keys as asn1_keys
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from ca.keys import IssuerKey, PublicKey, signature_hash_for
from ca.store.ocsp import CertStatus, ResponderRow
from ocsp import der

#: The CertID hash algorithms a request may use (RFC 6960 clients send SHA-1; some SHA-256).
CERTID_HASH_NAMES = tuple(der.CERTID_HASHES)


def public_key_bits(key: PublicKey | x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING's value (no tag, length or unused-bits octet)."""
    public = key.public_key() if isinstance(key, x509.Certificate) else key
    spki = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    contents: bytes = asn1_keys.PublicKeyInfo.load(spki)["public_key"].contents
    return contents[1:]


@dataclass(frozen=True)
class IssuerIds:
    """A CA as OCSP requests name it: its name and key hashes for each CertID hash algorithm."""

    ca_id: int
    ca_name: str
    certificate: x509.Certificate
    name_hashes: dict[str, bytes]
    key_hashes: dict[str, bytes]

    @classmethod
    def of(cls, ca_id: int, ca_name: str, certificate: x509.Certificate) -> IssuerIds:
        name_der = certificate.subject.public_bytes()
        key_bits = public_key_bits(certificate)
        return cls(
            ca_id=ca_id,
            ca_name=ca_name,
            certificate=certificate,
            name_hashes={h: hashlib.new(h, name_der).digest() for h in CERTID_HASH_NAMES},
            key_hashes={h: hashlib.new(h, key_bits).digest() for h in CERTID_HASH_NAMES},
        )

    def cert_id(self, serial: int, hash_name: str = "sha1") -> der.CertId:
        return der.CertId(
            hash_name, self.name_hashes[hash_name], self.key_hashes[hash_name], serial
        )


def single_for(
    ids: IssuerIds,
    status: CertStatus | None,
    serial: int,
    this_update: datetime,
    next_update: datetime,
    hash_name: str = "sha1",
) -> der.Single:
    """The SingleResponse for a certificate (``status`` None: a serial this CA never issued)."""
    cert_id = ids.cert_id(serial, hash_name)
    if status is None:
        return der.Single(cert_id, "unknown", this_update, next_update)
    if status.status == "revoked":
        reason = status.revocation_reason
        return der.Single(
            cert_id,
            "revoked",
            this_update,
            next_update,
            revoked_at=status.revoked_at or this_update,
            # CA/B Forum BR 7.3: an unspecified (0) reason is left out, not encoded.
            reason=reason if reason else None,
        )
    return der.Single(cert_id, "good", this_update, next_update)


@dataclass
class ResponderSigner:
    """A delegated responder ready to sign: its certificate and its HSM key (thread-safe)."""

    row: ResponderRow
    issuer: IssuerIds
    certificate: x509.Certificate
    key: IssuerKey
    key_hash: bytes = b""
    signature_algorithm: bytes = b""

    def __post_init__(self) -> None:
        self.key_hash = hashlib.sha1(public_key_bits(self.certificate)).digest()
        self._hash = signature_hash_for(self.key)
        kind = "ec" if isinstance(self.key, ec.EllipticCurvePrivateKey) else "rsa"
        self.signature_algorithm = der.SIGNATURE_ALGORITHMS[(kind, self._hash.name)]
        self._certs = der.certs_field([self.row.certificate_der])

    @property
    def not_after(self) -> datetime:
        return self.row.not_after

    def validity(self, now: datetime, hours: int) -> tuple[datetime, datetime]:
        """thisUpdate and nextUpdate of a response signed ``now`` (never past this certificate)."""
        this_update = now.replace(microsecond=0)
        next_update = this_update + timedelta(hours=hours) - timedelta(seconds=1)
        return this_update, min(next_update, self.row.not_after)

    def sign(
        self, singles: Sequence[der.Single], produced_at: datetime, nonce: bytes | None = None
    ) -> bytes:
        """A complete, signed OCSPResponse (DER) for ``singles``."""
        tbs = der.response_data(self.key_hash, produced_at.replace(microsecond=0), singles, nonce)
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            signature = self.key.sign(tbs, ec.ECDSA(self._hash))
        else:
            signature = self.key.sign(tbs, padding.PKCS1v15(), self._hash)
        return der.basic_response(tbs, self.signature_algorithm, signature, self._certs)
