"""ACME JWS parsing and verification (ca.acme.jws): table-driven, software keys only."""

from __future__ import annotations

import json
from typing import Any

import pytest
from acmejws import b64, encode, sign
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.acme.errors import AcmeError
from ca.acme.jws import ALGORITHMS, jwk_of, parse, thumbprint, verify

URL = "https://ca.test/acme/new-account"
KID = "https://ca.test/acme/acct/1"


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "p256": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()),
        "p521": ec.generate_private_key(ec.SECP521R1()),
        "rsa2048": rsa.generate_private_key(65537, 2048),
        "rsa1024": rsa.generate_private_key(65537, 1024),
    }


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        ("p256", "ES256"),
        ("p384", "ES384"),
        ("p521", "ES512"),
        ("rsa2048", "RS256"),
        ("rsa2048", "RS384"),
        ("rsa2048", "RS512"),
        ("rsa2048", "PS256"),
    ],
)
def test_good_signatures_verify(keys, key, alg):
    jws = parse(encode(sign(keys[key], {"contact": []}, URL, alg=alg)), URL)
    verify(jws)
    assert jws.alg == alg and jws.nonce == "nonce" and jws.url == URL
    assert json.loads(jws.payload) == {"contact": []} and jws.json() == {"contact": []}
    assert jws.thumbprint == thumbprint(jwk_of(keys[key].public_key()))
    assert jws.kid is None and not jws.post_as_get


def test_post_as_get_has_an_empty_payload(keys):
    jws = parse(encode(sign(keys["p256"], "", KID, kid=KID)), KID)
    assert jws.post_as_get and jws.payload == b"" and jws.kid == KID and jws.key is None
    verify(jws, keys["p256"].public_key())
    with pytest.raises(AcmeError) as err:
        jws.json()
    assert err.value.kind == "malformed"


def _tamper_header(jws: dict[str, str], **changes: Any) -> dict[str, str]:
    header = json.loads(
        __import__("base64").urlsafe_b64decode(
            jws["protected"] + "=" * (-len(jws["protected"]) % 4)
        )
    )
    header.update(changes)
    header = {k: v for k, v in header.items() if v is not None}
    return {**jws, "protected": b64(json.dumps(header).encode())}


def _case(name: str, keys: dict[str, Any]) -> bytes:
    p256 = keys["p256"]
    good = sign(p256, {"a": 1}, URL)
    cases: dict[str, Any] = {
        "alg none": _tamper_header(good, alg="none"),
        "alg HS256": _tamper_header(good, alg="HS256"),
        "alg EdDSA": _tamper_header(good, alg="EdDSA"),
        "no alg": _tamper_header(good, alg=None),
        "jwk and kid": sign(p256, {}, URL, extra_header={"kid": KID}),
        "neither jwk nor kid": _tamper_header(good, jwk=None),
        "url mismatch": sign(p256, {}, "https://ca.test/acme/other"),
        "no url": _tamper_header(good, url=None),
        "no nonce": sign(p256, {}, URL, nonce=None),
        "bad base64 protected": {**good, "protected": good["protected"] + "!"},
        "padded base64 payload": {**good, "payload": good["payload"] + "="},
        "bad base64 signature": {**good, "signature": "a"},
        "bad signature": {**good, "payload": b64(b'{"a":2}')},
        "truncated signature": {**good, "signature": good["signature"][:-4]},
        "ES256 with a P-384 key": sign(
            keys["p384"], {}, URL, alg="ES384", extra_header={"alg": "ES256"}
        ),
        "RS256 with an EC key": _tamper_header(good, alg="RS256"),
        "RSA 1024": sign(keys["rsa1024"], {}, URL),
        "private jwk": _tamper_header(good, jwk={**jwk_of(p256.public_key()), "d": "AAAA"}),
        "jwk kty oct": _tamper_header(good, jwk={"kty": "oct", "k": "AAAA"}),
        "point off the curve": _tamper_header(
            good, jwk={**jwk_of(p256.public_key()), "y": b64(bytes(32))}
        ),
        "unprotected header": {**good, "header": {}},
        "general serialization": {"payload": good["payload"], "signatures": []},
        "not json": b"not json",
        "json array": b"[]",
        "crit": _tamper_header(good, crit=["exp"]),
        "too large": {**good, "payload": b64(b"x" * 70000)},
        "duplicate member": b'{"protected":"e30","protected":"e30","payload":"","signature":"AA"}',
    }
    value = cases[name]
    return value if isinstance(value, bytes) else encode(value)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("alg none", "badSignatureAlgorithm"),
        ("alg HS256", "badSignatureAlgorithm"),
        ("alg EdDSA", "badSignatureAlgorithm"),
        ("no alg", "malformed"),
        ("jwk and kid", "malformed"),
        ("neither jwk nor kid", "malformed"),
        ("url mismatch", "unauthorized"),
        ("no url", "malformed"),
        ("no nonce", "badNonce"),
        ("bad base64 protected", "malformed"),
        ("padded base64 payload", "malformed"),
        ("bad base64 signature", "malformed"),
        ("bad signature", "malformed"),
        ("truncated signature", "malformed"),
        ("ES256 with a P-384 key", "badSignatureAlgorithm"),
        ("RS256 with an EC key", "badSignatureAlgorithm"),
        ("RSA 1024", "badPublicKey"),
        ("private jwk", "badPublicKey"),
        ("jwk kty oct", "badPublicKey"),
        ("point off the curve", "badPublicKey"),
        ("unprotected header", "malformed"),
        ("general serialization", "malformed"),
        ("not json", "malformed"),
        ("json array", "malformed"),
        ("crit", "malformed"),
        ("too large", "malformed"),
        ("duplicate member", "malformed"),
    ],
)
def test_bad_jws_is_refused_with_the_acme_error(keys, name, kind):
    with pytest.raises(AcmeError) as err:
        verify(parse(_case(name, keys), URL))
    assert err.value.kind == kind, err.value
    assert err.value.type == f"urn:ietf:params:acme:error:{kind}"
    if kind == "badSignatureAlgorithm":
        assert err.value.problem()["algorithms"] == list(ALGORITHMS)


def test_kid_request_with_the_wrong_key_fails_verification(keys):
    jws = parse(encode(sign(keys["p256"], "", KID, kid=KID)), KID)
    with pytest.raises(AcmeError) as err:
        verify(jws, ec.generate_private_key(ec.SECP256R1()).public_key())
    assert err.value.kind == "malformed"


def test_inner_jws_of_a_key_change_has_a_jwk_and_no_nonce(keys):
    inner = encode(sign(keys["p256"], {"account": KID}, URL, nonce=None))
    assert parse(inner, URL, inner=True).nonce == ""
    with pytest.raises(AcmeError, match="must not have a nonce"):
        parse(encode(sign(keys["p256"], {}, URL)), URL, inner=True)


def test_rfc7638_thumbprint_known_answer():
    # RFC 7638 §3.1
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
