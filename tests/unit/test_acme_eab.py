"""External account binding checks (ca.acme.eab): shape, MAC, key state. Software keys only."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import josepy as jose
import pytest
from acme import messages
from acmejws import b64
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.acme.eab import key_state, new_key_material, parse_binding, verify_binding
from ca.acme.errors import AcmeError
from ca.acme.jws import jwk_of
from ca.policy import Requester
from ca.store.acme import EabKeyRow

URL = "https://ca.test/acme/new-account"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
_HASH = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


@pytest.fixture(scope="module")
def account_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def material() -> tuple[str, str]:
    return new_key_material()


def stored(key_id: str, hmac_key: str, **changes: Any) -> EabKeyRow:
    values: dict[str, Any] = {
        "key_id": key_id,
        "hmac_key": hmac_key,
        "client": "payments",
        "created_at": NOW - timedelta(hours=1),
        "expires": NOW + timedelta(days=7),
        "account_id": None,
        "used_at": None,
    }
    values.update(changes)
    return EabKeyRow(**values)


def binding(
    hmac_key: str,
    header: dict[str, Any],
    payload: Any,
    alg: str = "HS256",
) -> dict[str, str]:
    """A hand-made binding JWS (HMAC over ``protected.payload``)."""
    protected = b64(json.dumps(header).encode())
    body = b64(json.dumps(payload).encode() if not isinstance(payload, bytes) else payload)
    raw_key = base64.urlsafe_b64decode(hmac_key + "=" * (-len(hmac_key) % 4))
    mac = hmac.new(raw_key, f"{protected}.{body}".encode(), _HASH.get(alg, hashlib.sha256))
    return {"protected": protected, "payload": body, "signature": b64(mac.digest())}


def good_header(key_id: str, alg: str = "HS256", **extra: Any) -> dict[str, Any]:
    return {"alg": alg, "kid": key_id, "url": URL, **extra}


def check(value: Any, account_jwk: dict[str, str], key: EabKeyRow | None) -> None:
    verify_binding(parse_binding(value, URL, account_jwk), key, NOW)


def assert_refused(kind: str, value: Any, account_jwk: dict[str, str], key: EabKeyRow | None):
    with pytest.raises(AcmeError) as err:
        check(value, account_jwk, key)
    assert err.value.kind == kind, err.value
    return err.value


def test_new_key_material_is_random_base64url_of_32_bytes():
    (kid1, key1), (kid2, key2) = new_key_material(), new_key_material()
    assert kid1 != kid2 and key1 != key2
    assert len(base64.urlsafe_b64decode(key1 + "=")) == 32
    assert "=" not in key1 and "+" not in key1 and "/" not in key1


def test_key_ids_and_keys_never_read_as_command_line_options():
    for _ in range(500):
        kid, key = new_key_material()
        assert kid.startswith("eab_") and not key.startswith("-")


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_binding_made_by_the_acme_library_verifies(account_key, material, alg):
    key_id, hmac_key = material
    value = messages.ExternalAccountBinding.from_data(
        account_public_key=jose.JWKEC(key=account_key.public_key()),
        kid=key_id,
        hmac_key=hmac_key,
        directory={"newAccount": URL},
        hmac_alg=alg,
    )
    check(value, jwk_of(account_key.public_key()), stored(key_id, hmac_key))


def test_rsa_account_key_binds_too(material):
    key_id, hmac_key = material
    rsa_key = rsa.generate_private_key(65537, 2048).public_key()
    value = binding(hmac_key, good_header(key_id), jwk_of(rsa_key))
    check(value, jwk_of(rsa_key), stored(key_id, hmac_key))


def test_wrong_hmac_key_is_unauthorized(account_key, material):
    key_id, hmac_key = material
    _, other_key = new_key_material()
    jwk = jwk_of(account_key.public_key())
    err = assert_refused(
        "unauthorized", binding(other_key, good_header(key_id), jwk), jwk, stored(key_id, hmac_key)
    )
    assert "MAC" in err.detail


def test_unknown_or_other_kid_is_unauthorized(account_key, material):
    key_id, hmac_key = material
    jwk = jwk_of(account_key.public_key())
    value = binding(hmac_key, good_header("someone-elses-key"), jwk)
    assert_refused("unauthorized", value, jwk, None)  # no key with that id
    assert_refused("unauthorized", value, jwk, stored(key_id, hmac_key))  # a different key


def test_url_of_another_resource_is_unauthorized(account_key, material):
    key_id, hmac_key = material
    jwk = jwk_of(account_key.public_key())
    header = good_header(key_id) | {"url": "https://ca.test/acme/new-order"}
    assert_refused("unauthorized", binding(hmac_key, header, jwk), jwk, stored(key_id, hmac_key))


def test_payload_that_is_not_the_account_key_is_unauthorized(account_key, material):
    key_id, hmac_key = material
    other = jwk_of(ec.generate_private_key(ec.SECP256R1()).public_key())
    jwk = jwk_of(account_key.public_key())
    value = binding(hmac_key, good_header(key_id), other)
    assert_refused("unauthorized", value, jwk, stored(key_id, hmac_key))


@pytest.mark.parametrize("alg", ["none", "RS256", "ES256", "HS1", "", None])
def test_non_mac_algorithms_are_refused(account_key, material, alg):
    key_id, hmac_key = material
    jwk = jwk_of(account_key.public_key())
    value = binding(hmac_key, good_header(key_id, alg=alg), jwk)
    if alg == "none":
        value["signature"] = ""
    err = assert_refused("malformed", value, jwk, stored(key_id, hmac_key))
    assert "alg" in err.detail or "signature" in err.detail


@pytest.mark.parametrize(
    ("mangle", "why"),
    [
        (lambda v, h, j, k: "a string", "not a JWS object"),
        (lambda v, h, j, k: {**v, "header": {"alg": "HS256"}}, "unprotected header member"),
        (lambda v, h, j, k: {"protected": v["protected"], "payload": v["payload"]}, "no sig"),
        (lambda v, h, j, k: {**v, "payload": "!!"}, "payload not base64url"),
        (lambda v, h, j, k: binding(k, h | {"nonce": "abc"}, j), "has a nonce"),
        (lambda v, h, j, k: binding(k, h | {"jwk": j}, j), "has a jwk"),
        (lambda v, h, j, k: binding(k, {"alg": "HS256", "url": URL}, j), "no kid"),
        (lambda v, h, j, k: binding(k, h | {"kid": 7}, j), "kid not a string"),
        (lambda v, h, j, k: binding(k, {"alg": "HS256", "kid": h["kid"]}, j), "no url"),
        (lambda v, h, j, k: binding(k, h, b"not json"), "payload not JSON"),
        (lambda v, h, j, k: binding(k, h, {"kty": "oct", "k": "c2VjcmV0"}), "payload no key"),
        (lambda v, h, j, k: binding(k, h, [j]), "payload not an object"),
    ],
)
def test_malformed_bindings_are_malformed(account_key, material, mangle, why):
    key_id, hmac_key = material
    jwk = jwk_of(account_key.public_key())
    header = good_header(key_id)
    value = mangle(binding(hmac_key, header, jwk), header, jwk, hmac_key)
    assert_refused("malformed", value, jwk, stored(key_id, hmac_key))


def test_used_key_is_unauthorized(account_key, material):
    key_id, hmac_key = material
    jwk = jwk_of(account_key.public_key())
    used = stored(key_id, hmac_key, account_id=3, used_at=NOW - timedelta(minutes=5))
    err = assert_refused("unauthorized", binding(hmac_key, good_header(key_id), jwk), jwk, used)
    assert "used" in err.detail


def test_expired_key_is_unauthorized(account_key, material):
    key_id, hmac_key = material
    jwk = jwk_of(account_key.public_key())
    old = stored(key_id, hmac_key, expires=NOW)
    err = assert_refused("unauthorized", binding(hmac_key, good_header(key_id), jwk), jwk, old)
    assert "expired" in err.detail


def test_key_state_is_only_revealed_to_a_holder_of_the_hmac_key(account_key, material):
    # A wrong MAC on a used key says "MAC", not "used": the key's state stays private.
    key_id, hmac_key = material
    _, wrong = new_key_material()
    jwk = jwk_of(account_key.public_key())
    used = stored(key_id, hmac_key, account_id=3, used_at=NOW)
    err = assert_refused("unauthorized", binding(wrong, good_header(key_id), jwk), jwk, used)
    assert "MAC" in err.detail


def test_key_state_for_listings():
    assert key_state(stored("k", "x"), NOW) == "unused"
    assert key_state(stored("k", "x", expires=NOW), NOW) == "expired"
    assert key_state(stored("k", "x", account_id=9, used_at=NOW), NOW) == "used by account 9"


# What a bound account may order (ca.acme.accounts.order_violations) --------------------------


def test_bound_client_rules_refuse_names_profiles_and_missing_roles():
    from ca.acme.accounts import order_violations, refusal

    client = Requester(
        name="payments",
        roles=frozenset({"enroll"}),
        profiles=frozenset({"server"}),
        names=(".payments.internal", "10.1.0.0/16"),
    )
    ok = [{"type": "dns", "value": "api.payments.internal"}, {"type": "ip", "value": "10.1.2.3"}]
    assert order_violations(client, "server", ok) == []

    bad = [{"type": "dns", "value": "www.example.com"}, {"type": "ip", "value": "10.2.0.1"}]
    found = order_violations(client, "server", bad)
    assert [v.rule for v in found] == ["dns.requester_not_allowed", "ip.requester_not_allowed"]
    err = refusal(found)
    assert err.kind == "rejectedIdentifier"
    assert [s["identifier"] for s in err.extra["subproblems"]] == bad

    assert refusal(order_violations(client, "client", ok)).kind == "invalidProfile"
    reader = Requester(name="reader", roles=frozenset({"read"}))
    assert refusal(order_violations(reader, "server", ok)).kind == "unauthorized"
    # No own name rules: the profile alone decides.
    assert order_violations(Requester(name="any", roles=frozenset({"enroll"})), "server", bad) == []
