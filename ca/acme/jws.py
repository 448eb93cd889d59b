"""JSON Web Signatures as ACME uses them (RFC 8555 §6.2, RFC 7515, RFC 7518, RFC 7638).

Pure functions, no I/O. :func:`parse` checks a flattened JWS strictly (shape, base64url, the
protected header, the algorithm, the ``url``) and, when the header carries a ``jwk``, turns it
into a cryptography public key and its RFC 7638 thumbprint. :func:`verify` checks the signature
with a key: the header's ``jwk`` or, for ``kid`` requests, the account's stored key.

Accepted algorithms: ES256/ES384/ES512 (P-256/P-384/P-521, raw r‖s signatures), RS256/RS384/RS512
and PS256 (RSA of 2048 to 8192 bits). ``none``, HMAC and everything else is
``badSignatureAlgorithm``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ca.acme.errors import AcmeError, malformed

#: Public keys an ACME account may have.
AccountKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

#: Every algorithm we verify, in the order the directory and errors list them.
ALGORITHMS: tuple[str, ...] = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256")

#: EC alg → (curve, coordinate length in bytes, hash).
_EC_ALGS: dict[str, tuple[str, int, type[hashes.HashAlgorithm]]] = {
    "ES256": ("P-256", 32, hashes.SHA256),
    "ES384": ("P-384", 48, hashes.SHA384),
    "ES512": ("P-521", 66, hashes.SHA512),
}
_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
_RSA_ALGS: dict[str, type[hashes.HashAlgorithm]] = {
    "RS256": hashes.SHA256,
    "RS384": hashes.SHA384,
    "RS512": hashes.SHA512,
    "PS256": hashes.SHA256,
}
RSA_MIN_BITS = 2048
RSA_MAX_BITS = 8192
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
#: JWK members that only a private key has: a client that sends them has leaked its key.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


@dataclass(frozen=True)
class Jws:
    """A parsed flattened JWS. ``key`` and ``thumbprint`` are set when the header has a ``jwk``.

    ``payload`` is the decoded payload: ``b""`` for POST-as-GET. The signature is checked by
    :func:`verify`, not by :func:`parse`.
    """

    header: dict[str, Any]
    payload: bytes
    signing_input: bytes
    signature: bytes
    alg: str
    nonce: str
    url: str
    kid: str | None
    jwk: dict[str, str] | None
    key: AccountKey | None
    thumbprint: str | None

    @property
    def post_as_get(self) -> bool:
        return self.payload == b""

    def json(self) -> dict[str, Any]:
        """The payload as a JSON object; ``malformed`` otherwise (and for POST-as-GET)."""
        return parse_json_object(self.payload, "payload")


def b64url_decode(value: object, what: str) -> bytes:
    """Strict base64url without padding (RFC 7515 §2); ``malformed`` otherwise."""
    if not isinstance(value, str) or not _B64URL.match(value) or len(value) % 4 == 1:
        raise malformed(f"{what} is not base64url without padding")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise malformed(f"{what} is not base64url without padding") from None


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    """``data`` as a JSON object (UTF-8, no duplicate members as RFC 7515 §4 asks, no NaN or
    Infinity); ``malformed`` otherwise, also for nesting too deep to parse."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise malformed(f"{what} has the member {k[:40]!r} twice")
            out[k] = v
        return out

    def no_constant(name: str) -> Any:
        raise malformed(f"{what} has {name}, which is not JSON (RFC 8259)")

    try:
        value = json.loads(
            data.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise malformed(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise malformed(f"{what} is not a JSON object")
    return value


def parse(body: bytes, url: str, max_bytes: int = 65536, *, inner: bool = False) -> Jws:
    """Parse and check a flattened JWS received at ``url`` (signature not yet verified).

    ``inner``: the inner JWS of a key change (RFC 8555 §7.3.5), which has a ``jwk`` and no nonce
    (its ``nonce`` is then "").

    Errors: ``malformed`` (size, shape, base64url, JSON, header members), ``badSignatureAlgorithm``
    (the ``alg``, or an ``alg`` that does not fit the ``jwk``), ``badPublicKey`` (the ``jwk``),
    ``unauthorized`` (``url`` is not the URL the request was sent to, RFC 8555 §6.4).
    """
    if len(body) > max_bytes:
        raise AcmeError("malformed", f"the JWS is larger than {max_bytes} bytes", 413)
    outer = parse_json_object(body, "the JWS")
    if set(outer) != {"protected", "payload", "signature"}:
        raise malformed(
            "the body must be a flattened JWS with exactly protected, payload and signature"
        )
    protected_b64, payload_b64, signature_b64 = (
        outer["protected"],
        outer["payload"],
        outer["signature"],
    )
    header = parse_json_object(b64url_decode(protected_b64, "protected"), "the protected header")
    payload = b64url_decode(payload_b64, "payload")
    signature = b64url_decode(signature_b64, "signature")

    # The algorithm before the signature: an "alg": "none" JWS has an empty signature, and its
    # answer must be badSignatureAlgorithm with the list (RFC 8555 §6.2), not "malformed".
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise malformed("the protected header has no alg")
    if alg not in ALGORITHMS:
        raise AcmeError(
            "badSignatureAlgorithm",
            f"the algorithm {alg[:20]!r} is not accepted (use one of {', '.join(ALGORITHMS)})",
            algorithms=list(ALGORITHMS),
        )
    if not signature:
        raise malformed("the signature is empty")
    if "crit" in header:
        raise malformed("the protected header has crit extensions, none of which are supported")
    if "b64" in header:
        raise malformed("the b64 header parameter is not supported")
    nonce = header.get("nonce", "")
    if inner:
        if "nonce" in header:
            raise malformed("the inner JWS must not have a nonce")
        if "jwk" not in header or "kid" in header:
            raise malformed("the inner JWS must have a jwk and no kid")
    elif not isinstance(nonce, str) or not nonce:
        raise AcmeError("badNonce", "the protected header has no nonce")
    header_url = header.get("url")
    if not isinstance(header_url, str) or not header_url:
        raise malformed("the protected header has no url")
    has_jwk, has_kid = "jwk" in header, "kid" in header
    if has_jwk == has_kid:
        raise malformed("the protected header must have exactly one of jwk and kid")
    if header_url != url:
        raise AcmeError(
            "unauthorized", f"the url in the protected header is not {url} (the request URL)"
        )

    kid: str | None = None
    jwk: dict[str, str] | None = None
    key: AccountKey | None = None
    thumb: str | None = None
    if has_kid:
        if not isinstance(header["kid"], str) or not header["kid"]:
            raise malformed("kid must be an account URL")
        kid = header["kid"]
    else:
        if not isinstance(header["jwk"], dict):
            raise malformed("jwk must be a JSON object")
        jwk = public_jwk(header["jwk"])
        key = key_from_jwk(jwk)
        check_alg_fits_key(alg, key)
        thumb = thumbprint(jwk)
    return Jws(
        header=header,
        payload=payload,
        signing_input=f"{protected_b64}.{payload_b64}".encode("ascii"),
        signature=signature,
        alg=alg,
        nonce=nonce,
        url=header_url,
        kid=kid,
        jwk=jwk,
        key=key,
        thumbprint=thumb,
    )


def public_jwk(jwk: dict[str, Any]) -> dict[str, str]:
    """The members of a public JWK that define the key (RFC 7638 §3.2), checked; the rest dropped."""
    if _PRIVATE_MEMBERS & set(jwk):
        raise AcmeError("badPublicKey", "the jwk contains private key material")
    kty = jwk.get("kty")
    members: tuple[str, ...]
    if kty == "EC":
        members = ("crv", "kty", "x", "y")
    elif kty == "RSA":
        members = ("e", "kty", "n")
    else:
        raise AcmeError("badPublicKey", "the jwk must have kty EC or RSA")
    out: dict[str, str] = {}
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str) or not value:
            raise AcmeError("badPublicKey", f"the jwk has no valid {name!r}")
        out[name] = value
    return out


def key_from_jwk(jwk: dict[str, str]) -> AccountKey:
    """A cryptography public key from a checked public JWK (:func:`public_jwk`)."""
    try:
        if jwk["kty"] == "EC":
            curve = _CURVES.get(jwk["crv"])
            if curve is None:
                raise AcmeError("badPublicKey", "the EC curve must be P-256, P-384 or P-521")
            size = (curve.key_size + 7) // 8
            x, y = b64url_decode(jwk["x"], "jwk x"), b64url_decode(jwk["y"], "jwk y")
            if len(x) != size or len(y) != size:
                raise AcmeError("badPublicKey", f"EC coordinates must be {size} bytes")
            point = b"\x04" + x + y
            try:
                return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
            except ValueError:
                raise AcmeError("badPublicKey", "the EC point is not on the curve") from None
        n_bytes, e_bytes = b64url_decode(jwk["n"], "jwk n"), b64url_decode(jwk["e"], "jwk e")
        if n_bytes[:1] == b"\x00" or e_bytes[:1] == b"\x00":
            raise AcmeError("badPublicKey", "RSA n and e must have no leading zero bytes")
        n, e = int.from_bytes(n_bytes, "big"), int.from_bytes(e_bytes, "big")
        if not RSA_MIN_BITS <= n.bit_length() <= RSA_MAX_BITS:
            raise AcmeError(
                "badPublicKey",
                f"RSA keys must have {RSA_MIN_BITS} to {RSA_MAX_BITS} bits, not {n.bit_length()}",
            )
        if e < 3 or e % 2 == 0 or e.bit_length() > 32:
            raise AcmeError("badPublicKey", "the RSA public exponent is not acceptable")
        try:
            return rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError:
            raise AcmeError("badPublicKey", "the RSA key is not valid") from None
    except AcmeError as exc:
        if exc.kind == "malformed":
            raise AcmeError("badPublicKey", exc.detail) from None
        raise


def check_alg_fits_key(alg: str, key: AccountKey) -> None:
    """``badSignatureAlgorithm`` unless ``alg`` is made for ``key`` (ES256 needs P-256, …)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        spec = _EC_ALGS.get(alg)
        if spec is None or _CURVES[spec[0]].name != key.curve.name:
            raise AcmeError(
                "badSignatureAlgorithm",
                f"{alg} does not fit an EC key on {key.curve.name}",
                algorithms=list(ALGORITHMS),
            )
    elif alg not in _RSA_ALGS:
        raise AcmeError(
            "badSignatureAlgorithm",
            f"{alg} does not fit an RSA key",
            algorithms=list(ALGORITHMS),
        )


def verify(jws: Jws, key: AccountKey | None = None) -> None:
    """Check ``jws``'s signature with ``key`` (default: its own ``jwk``); ``malformed`` if wrong."""
    key = key if key is not None else jws.key
    if key is None:
        raise malformed("no key to verify the JWS with")
    check_alg_fits_key(jws.alg, key)
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            _, size, hash_cls = _EC_ALGS[jws.alg]
            if len(jws.signature) != 2 * size:
                raise malformed(f"an {jws.alg} signature is {2 * size} bytes (r‖s)")
            r = int.from_bytes(jws.signature[:size], "big")
            s = int.from_bytes(jws.signature[size:], "big")
            key.verify(encode_dss_signature(r, s), jws.signing_input, ec.ECDSA(hash_cls()))
        else:
            hash_alg = _RSA_ALGS[jws.alg]()
            pad: padding.AsymmetricPadding = (
                padding.PSS(padding.MGF1(hash_alg), hash_alg.digest_size)
                if jws.alg.startswith("PS")
                else padding.PKCS1v15()
            )
            key.verify(jws.signature, jws.signing_input, pad, hash_alg)
    except InvalidSignature:
        raise malformed("the JWS signature is not valid") from None


def thumbprint(jwk: dict[str, str]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, base64url."""
    return b64url_encode(hashlib.sha256(canonical_jwk(jwk).encode("utf-8")).digest())


def canonical_jwk(jwk: dict[str, str]) -> str:
    """The required members of a public JWK as RFC 7638 JSON (sorted, no whitespace)."""
    return json.dumps(public_jwk(jwk), sort_keys=True, separators=(",", ":"))


def jwk_of(key: AccountKey) -> dict[str, str]:
    """The public JWK of a key (for tests and for showing an account's key)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = {v.name: k for k, v in _CURVES.items()}[key.curve.name]
        size = (key.curve.key_size + 7) // 8
        nums = key.public_numbers()
        return {
            "crv": crv,
            "kty": "EC",
            "x": b64url_encode(nums.x.to_bytes(size, "big")),
            "y": b64url_encode(nums.y.to_bytes(size, "big")),
        }
    rn = key.public_numbers()
    return {
        "e": b64url_encode(rn.e.to_bytes((rn.e.bit_length() + 7) // 8, "big")),
        "kty": "RSA",
        "n": b64url_encode(rn.n.to_bytes((rn.n.bit_length() + 7) // 8, "big")),
    }
