"""Audit checkpoints (pure): what is signed, and how a signature is checked.

A checkpoint states that the audit chain's event ``seq`` had hash ``hash`` at ``time``. The
signed message is the canonical JSON (``ca.audit.canonical_json``: sorted keys, no whitespace,
UTF-8) of::

    {"hash": "<64 lowercase hex>", "seq": <int>, "time": "<RFC 3339 UTC>",
     "type": "hsmca-audit-checkpoint/1"}

signed by the audit key in the HSM: ECDSA with SHA-256 over the message for EC keys (signature
DER-encoded, as ``openssl dgst -sha256 -verify`` expects), RSASSA-PKCS1-v1_5 with SHA-256 for RSA
keys. ``docs/audit-verification.md`` specifies the same for auditors.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ca.audit import canonical_json

CHECKPOINT_TYPE = "hsmca-audit-checkpoint/1"
ALGORITHMS = ("ecdsa-with-SHA256", "sha256WithRSAEncryption")


@dataclass(frozen=True)
class Checkpoint:
    """A signed chain head as stored, exported and written to the witnesses."""

    seq: int
    hash: str  # hex
    time: str  # RFC 3339 UTC
    key_serial: str  # the audit certificate's serial (hex)
    algorithm: str
    signature: bytes

    def message(self) -> bytes:
        return checkpoint_message(self.seq, self.hash, self.time)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of exports and witnesses (signature in base64)."""
        return {
            "type": CHECKPOINT_TYPE,
            "seq": self.seq,
            "hash": self.hash,
            "time": self.time,
            "key_serial": self.key_serial,
            "algorithm": self.algorithm,
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }

    @classmethod
    def from_json(cls, value: Any) -> Checkpoint:
        """Parse :meth:`to_json` output; ValueError on anything else."""
        if not isinstance(value, dict) or value.get("type") != CHECKPOINT_TYPE:
            raise ValueError("not an hsmca audit checkpoint")
        try:
            seq, hash_, time = value["seq"], value["hash"], value["time"]
            key_serial, algorithm = value["key_serial"], value["algorithm"]
            signature = base64.b64decode(value["signature"], validate=True)
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"malformed checkpoint: {exc}") from None
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise ValueError("checkpoint seq must be a positive integer")
        if not (isinstance(hash_, str) and len(hash_) == 64 and _is_hex(hash_)):
            raise ValueError("checkpoint hash must be 64 lowercase hex digits")
        if not all(isinstance(v, str) for v in (time, key_serial, algorithm)):
            raise ValueError("checkpoint time, key_serial and algorithm must be strings")
        return cls(seq, hash_, time, key_serial, algorithm, signature)


def checkpoint_message(seq: int, hash_hex: str, time: str) -> bytes:
    """The bytes the audit key signs for a checkpoint."""
    return canonical_json({"hash": hash_hex, "seq": seq, "time": time, "type": CHECKPOINT_TYPE})


def algorithm_of(certificate: x509.Certificate) -> str:
    """The checkpoint algorithm name for the audit certificate's key."""
    key = certificate.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ecdsa-with-SHA256"
    if isinstance(key, rsa.RSAPublicKey):
        return "sha256WithRSAEncryption"
    raise ValueError("the audit key must be EC or RSA")


def signature_valid(checkpoint: Checkpoint, certificate: x509.Certificate) -> bool:
    """True if ``checkpoint`` is signed by the key of ``certificate`` (the audit certificate)."""
    key = certificate.public_key()
    message = checkpoint.message()
    try:
        if checkpoint.algorithm == "ecdsa-with-SHA256" and isinstance(
            key, ec.EllipticCurvePublicKey
        ):
            key.verify(checkpoint.signature, message, ec.ECDSA(hashes.SHA256()))
            return True
        if checkpoint.algorithm == "sha256WithRSAEncryption" and isinstance(key, rsa.RSAPublicKey):
            key.verify(checkpoint.signature, message, padding.PKCS1v15(), hashes.SHA256())
            return True
    except InvalidSignature:
        return False
    return False


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
