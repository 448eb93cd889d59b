"""ACME directory, nonces and accounts through Flask's test client (SQLite and PostgreSQL)."""

from __future__ import annotations

import json

import pytest
from acmejws import encode, sign
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.acme.jws import jwk_of, thumbprint
from ca.audit import verify_chain
from ca.authority import Authority
from ca.config import AcmeConfig
from web import create_app

pytestmark = [pytest.mark.hsm, pytest.mark.db]

BASE = "http://localhost"
JOSE = {"Content-Type": "application/jose+json"}
ERR = "urn:ietf:params:acme:error:"


class Acme:
    """A minimal ACME client over the Flask test client."""

    def __init__(self, client):
        self.client = client

    def nonce(self) -> str:
        return self.client.head("/acme/new-nonce").headers["Replay-Nonce"]

    def post(self, path, key, payload, kid=None, nonce=None, url=None, **kw):
        body = sign(key, payload, url or BASE + path, nonce=nonce or self.nonce(), kid=kid, **kw)
        return self.client.post(path, data=encode(body), headers=JOSE)

    def register(self, key, **payload):
        return self.post("/acme/new-account", key, {"termsOfServiceAgreed": True, **payload})


@pytest.fixture
def acme(ca_env):
    config = ca_env.config.model_copy(
        update={"acme": AcmeConfig(terms_of_service_url="https://ca.test/tos")}
    )
    auth = Authority(config=config, db=ca_env.auth.db, keys=ca_env.auth.keys)
    return Acme(create_app(config, lambda cfg: auth).test_client()), auth


def key():
    return ec.generate_private_key(ec.SECP256R1())


def assert_problem(resp, kind, status=400):
    assert resp.status_code == status, resp.data
    assert resp.mimetype == "application/problem+json"
    assert resp.json["type"] == ERR + kind, resp.json
    assert resp.headers["Replay-Nonce"]
    assert resp.headers["Link"] == f'<{BASE}/acme/directory>;rel="index"'


def test_directory_lists_only_what_exists(acme):
    client, auth = acme
    resp = client.client.get("/acme/directory")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    assert resp.json == {
        "newNonce": f"{BASE}/acme/new-nonce",
        "newAccount": f"{BASE}/acme/new-account",
        "newOrder": f"{BASE}/acme/new-order",
        "keyChange": f"{BASE}/acme/key-change",
        "revokeCert": f"{BASE}/acme/revoke-cert",
        "renewalInfo": f"{BASE}/acme/renewal-info",
        "meta": {
            "termsOfService": "https://ca.test/tos",
            "externalAccountRequired": False,
            # [acme] profiles is empty: every profile, in config order.
            "profiles": {name: p.description or name for name, p in auth.config.profiles.items()},
        },
    }


def test_new_nonce_head_and_get(acme):
    client, _ = acme
    head = client.client.head("/acme/new-nonce")
    get = client.client.get("/acme/new-nonce")
    assert (head.status_code, get.status_code) == (200, 204)
    for resp in (head, get):
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["Link"] == f'<{BASE}/acme/directory>;rel="index"'
        assert len(resp.headers["Replay-Nonce"]) == 54  # base64url of time, random, MAC
    assert head.headers["Replay-Nonce"] != get.headers["Replay-Nonce"]


def test_new_account_then_same_key_again_then_only_return_existing(acme):
    client, auth = acme
    k = key()
    seq = max(e.seq for e in auth.db.audit_entries())
    resp = client.register(k, contact=["mailto:admin@corp.test"])
    assert resp.status_code == 201, resp.json
    location = resp.headers["Location"]
    assert location.startswith(f"{BASE}/acme/acct/")
    assert resp.headers["Replay-Nonce"]
    assert resp.json["status"] == "valid" and resp.json["contact"] == ["mailto:admin@corp.test"]
    assert resp.json["key"] == jwk_of(k.public_key())
    again = client.register(k)
    assert again.status_code == 200 and again.headers["Location"] == location
    existing = client.post("/acme/new-account", k, {"onlyReturnExisting": True})
    assert existing.status_code == 200 and existing.headers["Location"] == location
    unknown = client.post("/acme/new-account", key(), {"onlyReturnExisting": True})
    assert_problem(unknown, "accountDoesNotExist")
    events = [e for e in auth.db.audit_entries(after_seq=seq)]
    assert [e.action for e in events] == ["acme.account.created"]
    assert events[0].details["key_thumbprint"] == thumbprint(jwk_of(k.public_key()))
    assert verify_chain(auth.db.audit_entries()) > 0


def test_new_account_refusals(acme):
    client, _ = acme
    assert_problem(client.post("/acme/new-account", key(), {}), "malformed")  # no ToS agreement
    assert_problem(client.register(key(), contact=["tel:+49123"]), "unsupportedContact")
    assert_problem(client.register(key(), contact=["mailto:a@b.test,c@d.test"]), "invalidContact")
    assert_problem(client.register(key(), contact=["mailto:not-an-address"]), "invalidContact")
    assert_problem(client.post("/acme/new-account", key(), ""), "malformed")  # POST-as-GET
    kid = client.post("/acme/new-account", key(), {}, kid=f"{BASE}/acme/acct/1")
    assert_problem(kid, "malformed")
    rsa_small = rsa.generate_private_key(65537, 1024)
    assert_problem(client.register(rsa_small), "badPublicKey")
    none = client.post("/acme/new-account", key(), {}, extra_header={"alg": "none"})
    assert_problem(none, "badSignatureAlgorithm")
    assert none.json["algorithms"][0] == "ES256"
    wrong_type = client.client.post(
        "/acme/new-account",
        data=encode(sign(key(), {}, BASE + "/acme/new-account", nonce=client.nonce())),
        headers={"Content-Type": "application/json"},
    )
    assert_problem(wrong_type, "malformed", 415)


def test_nonces_are_single_use_and_must_be_known(acme):
    client, _ = acme
    k = key()
    nonce = client.nonce()
    body = encode(sign(k, {"termsOfServiceAgreed": True}, BASE + "/acme/new-account", nonce=nonce))
    first = client.client.post("/acme/new-account", data=body, headers=JOSE)
    assert first.status_code == 201
    replay = client.client.post("/acme/new-account", data=body, headers=JOSE)
    assert_problem(replay, "badNonce")
    tos = {"termsOfServiceAgreed": True}
    unknown = client.post("/acme/new-account", key(), tos, nonce="bm90LWlzc3VlZA")
    assert_problem(unknown, "badNonce")
    # The nonce of an error response is good for the retry.
    retry = client.post("/acme/new-account", key(), tos, nonce=replay.headers["Replay-Nonce"])
    assert retry.status_code == 201


def test_url_mismatch_is_unauthorized(acme):
    client, _ = acme
    resp = client.post("/acme/new-account", key(), {}, url=BASE + "/acme/key-change")
    assert_problem(resp, "unauthorized", 403)


def test_account_post_as_get_update_and_deactivate(acme):
    client, auth = acme
    k = key()
    kid = client.register(k).headers["Location"]
    path = kid.removeprefix(BASE)
    got = client.post(path, k, "", kid=kid)
    assert got.status_code == 200 and got.json["status"] == "valid"
    assert got.headers["Location"] == kid and got.headers["Replay-Nonce"]
    upd = client.post(path, k, {"contact": ["mailto:ops@corp.test"]}, kid=kid)
    assert upd.status_code == 200 and upd.json["contact"] == ["mailto:ops@corp.test"]
    assert_problem(client.post(path, k, {"status": "revoked"}, kid=kid), "malformed")
    # Another account's URL with my key: the signature does not verify.
    k2 = key()
    kid2 = client.register(k2).headers["Location"]
    assert_problem(client.post(kid2.removeprefix(BASE), k, "", kid=kid2), "malformed")
    # My kid on another account's URL.
    assert_problem(client.post(kid2.removeprefix(BASE), k, "", kid=kid), "unauthorized", 403)
    # Unknown account.
    missing = f"{BASE}/acme/acct/999999"
    assert_problem(client.post("/acme/acct/999999", k, "", kid=missing), "accountDoesNotExist")
    done = client.post(path, k, {"status": "deactivated"}, kid=kid)
    assert done.status_code == 200 and done.json["status"] == "deactivated"
    assert_problem(client.post(path, k, "", kid=kid), "unauthorized", 403)
    assert_problem(client.register(k), "unauthorized", 403)
    actions = [e.action for e in auth.db.audit_entries() if e.action.startswith("acme.")]
    assert actions == [
        "acme.account.created",
        "acme.account.updated",
        "acme.account.created",
        "acme.account.deactivated",
    ]


def key_change_body(old, new, kid, nonce):
    url = BASE + "/acme/key-change"
    inner = sign(new, {"account": kid, "oldKey": jwk_of(old.public_key())}, url, nonce=None)
    return encode(sign(old, json.dumps(inner).encode(), url, nonce=nonce, kid=kid))


def test_key_change(acme):
    client, auth = acme
    old, new = key(), rsa.generate_private_key(65537, 2048)
    kid = client.register(old).headers["Location"]
    path = kid.removeprefix(BASE)
    body = key_change_body(old, new, kid, client.nonce())
    resp = client.client.post("/acme/key-change", data=body, headers=JOSE)
    assert resp.status_code == 200, resp.json
    assert resp.json["key"] == jwk_of(new.public_key())
    # The old key no longer authenticates (ES256 does not even fit the account's RSA key now).
    assert_problem(client.post(path, old, "", kid=kid), "badSignatureAlgorithm")
    assert client.post(path, new, "", kid=kid).status_code == 200
    assert (
        client.post("/acme/new-account", new, {"onlyReturnExisting": True}).headers["Location"]
        == kid
    )
    assert [e.action for e in auth.db.audit_entries()][-1] == "acme.account.key-changed"

    # The new key already belongs to another account: 409 and that account's URL.
    other = key()
    other_kid = client.register(other).headers["Location"]
    clash = client.client.post(
        "/acme/key-change", data=key_change_body(new, other, kid, client.nonce()), headers=JOSE
    )
    assert_problem(clash, "malformed", 409)
    assert clash.headers["Location"] == other_kid

    # The inner JWS must name this account and its current key.
    wrong = client.client.post(
        "/acme/key-change", data=key_change_body(old, key(), kid, client.nonce()), headers=JOSE
    )
    assert_problem(wrong, "badSignatureAlgorithm")  # outer signed by the old (EC) key
    url = BASE + "/acme/key-change"
    inner = sign(key(), {"account": kid, "oldKey": jwk_of(other.public_key())}, url, nonce=None)
    outer = sign(new, json.dumps(inner).encode(), url, nonce=client.nonce(), kid=kid)
    resp = client.client.post("/acme/key-change", data=encode(outer), headers=JOSE)
    assert_problem(resp, "unauthorized", 403)


def test_acme_can_be_disabled(ca_env):
    config = ca_env.config.model_copy(update={"acme": AcmeConfig(enabled=False)})
    auth = Authority(config=config, db=ca_env.auth.db, keys=ca_env.auth.keys)
    client = create_app(config, lambda cfg: auth).test_client()
    assert client.get("/acme/directory").status_code == 404
