"""A tiny ACME JWS signer for tests (independent of ``ca.acme.jws`` apart from the JWK export)."""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ca.acme.jws import jwk_of

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def default_alg(key: PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    return {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}[key.curve.name]


def raw_sign(key: PrivateKey, alg: str, data: bytes) -> bytes:
    h = _HASHES[alg[2:]]()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(h)))
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if alg.startswith("PS"):
        return key.sign(data, padding.PSS(padding.MGF1(h), h.digest_size), h)
    return key.sign(data, padding.PKCS1v15(), h)


def sign(
    key: PrivateKey,
    payload: Any,
    url: str,
    nonce: str | None = "nonce",
    kid: str | None = None,
    alg: str | None = None,
    extra_header: dict[str, Any] | None = None,
) -> dict[str, str]:
    """A flattened JWS. ``payload``: dict (JSON), bytes (raw), or "" for POST-as-GET."""
    alg = alg or default_alg(key)
    header: dict[str, Any] = {"alg": alg, "url": url}
    if nonce is not None:
        header["nonce"] = nonce
    if kid is not None:
        header["kid"] = kid
    else:
        header["jwk"] = jwk_of(key.public_key())
    header.update(extra_header or {})
    header = {k: v for k, v in header.items() if v is not None}
    protected = b64(json.dumps(header).encode())
    if isinstance(payload, bytes):
        body = b64(payload)
    elif payload == "":
        body = ""
    else:
        body = b64(json.dumps(payload).encode())
    signature = raw_sign(key, alg, f"{protected}.{body}".encode())
    return {"protected": protected, "payload": body, "signature": b64(signature)}


def encode(jws: dict[str, str]) -> bytes:
    return json.dumps(jws).encode()


def flattened(key: PrivateKey, protected: bytes, payload: bytes | str, alg: str) -> dict[str, str]:
    """A flattened JWS over a protected header given as raw bytes (duplicate members, bad JSON…).

    ``payload``: raw bytes (base64url-encoded here) or an already encoded string ("" for
    POST-as-GET).
    """
    protected_b64 = b64(protected)
    payload_b64 = payload if isinstance(payload, str) else b64(payload)
    signature = raw_sign(key, alg, f"{protected_b64}.{payload_b64}".encode())
    return {"protected": protected_b64, "payload": payload_b64, "signature": b64(signature)}
