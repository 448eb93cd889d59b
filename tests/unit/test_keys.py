"""KeySpec: the CA key types the HSM may generate."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.errors import ConfigError
from ca.keys import KeySpec, signature_hash_for, spec_of


@pytest.mark.parametrize(
    ("text", "spec", "canonical"),
    [
        ("ec:P-256", KeySpec("ec", curve="P-256"), "ec:P-256"),
        ("ec:P-384", KeySpec("ec", curve="P-384"), "ec:P-384"),
        ("rsa:2048", KeySpec("rsa", bits=2048), "rsa:2048"),
        ("rsa:3072", KeySpec("rsa", bits=3072), "rsa:3072"),
        ("rsa:4096", KeySpec("rsa", bits=4096), "rsa:4096"),
        (" EC:p-256 ", KeySpec("ec", curve="P-256"), "ec:P-256"),
        ("RSA:2048", KeySpec("rsa", bits=2048), "rsa:2048"),
    ],
    ids=[
        "ok/ec-p256",
        "ok/ec-p384",
        "ok/rsa2048",
        "ok/rsa3072",
        "ok/rsa4096",
        "ok/case-and-space-insensitive-ec",
        "ok/case-insensitive-rsa",
    ],
)
def test_keyspec_parses_supported_key_types(text: str, spec: KeySpec, canonical: str) -> None:
    parsed = KeySpec.parse(text)
    assert parsed == spec
    assert str(parsed) == canonical
    assert KeySpec.parse(str(parsed)) == parsed


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ec",
        "ec:",
        "ec:P-521",
        "ec:P-224",
        "ec:secp256k1",
        "ec:prime256v1",
        "rsa",
        "rsa:",
        "rsa:1024",
        "rsa:2047",
        "rsa:8192",
        "rsa:+2048",
        "rsa:2048.0",
        "dsa:2048",
        "ed25519",
        "P-256",
        "ec P-256",
    ],
    ids=lambda t: f"fail/{t or 'empty'}",
)
def test_keyspec_refuses_other_key_types_with_config_error(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        KeySpec.parse(text)
    assert repr(text) in str(info.value)
    assert "ec:P-256" in str(info.value)  # the message lists what is accepted


@pytest.mark.parametrize(
    ("text", "curve", "hash_name"),
    [("ec:P-256", ec.SECP256R1, "sha256"), ("ec:P-384", ec.SECP384R1, "sha384")],
    ids=["ok/p256-sha256", "ok/p384-sha384"],
)
def test_ec_keyspec_gives_curve_and_signature_hash(
    text: str, curve: type[ec.EllipticCurve], hash_name: str
) -> None:
    spec = KeySpec.parse(text)
    assert isinstance(spec.ec_curve(), curve)
    assert spec.signature_hash().name == hash_name


def test_rsa_keyspec_signs_with_sha256() -> None:
    assert isinstance(KeySpec.parse("rsa:4096").signature_hash(), hashes.SHA256)


def test_spec_of_describes_existing_keys(
    ec_p256_key: ec.EllipticCurvePrivateKey,
    ec_p384_key: ec.EllipticCurvePrivateKey,
    rsa_2048_key: rsa.RSAPrivateKey,
) -> None:
    assert str(spec_of(ec_p256_key)) == "ec:P-256"
    assert str(spec_of(ec_p384_key.public_key())) == "ec:P-384"
    assert str(spec_of(rsa_2048_key)) == "rsa:2048"
    assert signature_hash_for(ec_p384_key).name == "sha384"
    assert signature_hash_for(ec_p256_key.public_key()).name == "sha256"
    assert signature_hash_for(rsa_2048_key).name == "sha256"
