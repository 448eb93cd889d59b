"""ACME accounts against a real gunicorn server: certbot's ``acme`` client library, and one
signed request replayed by 20 threads at once (nonces are single use across workers)."""

from __future__ import annotations

import json
import threading

import josepy as jose
import pytest
import requests
from acme import client as acme_client
from acme import errors as acme_errors
from acme import jws as acme_jws
from acme import messages
from acmejws import encode, sign
from cryptography.hazmat.primitives.asymmetric import ec, rsa

pytestmark = [pytest.mark.hsm, pytest.mark.db]

JOSE = {"Content-Type": "application/jose+json"}


def client_for(live_api, key, alg):
    net = acme_client.ClientNetwork(
        key, alg=alg, verify_ssl=False, user_agent="hsmca-tests", timeout=10
    )
    directory = acme_client.ClientV2.get_directory(live_api.url("/acme/directory"), net)
    return acme_client.ClientV2(directory, net), net


def test_acme_library_registers_queries_updates_and_deactivates(live_api):
    seq = live_api.audit_seq()
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    acme, net = client_for(live_api, key, jose.ES256)
    assert acme.directory.meta.external_account_required is False
    regr = acme.new_account(
        messages.NewRegistration.from_data(email="admin@corp.test", terms_of_service_agreed=True)
    )
    assert regr.uri.startswith(live_api.url("/acme/acct/"))
    assert regr.body.status == "valid"
    assert regr.body.contact == ("mailto:admin@corp.test",)

    net.account = None  # newAccount is signed with the jwk (the library would send the kid)
    with pytest.raises(acme_errors.ConflictError) as existing:
        acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
    assert existing.value.location == regr.uri

    queried = acme.query_registration(regr)
    assert queried.uri == regr.uri and queried.body.contact == ("mailto:admin@corp.test",)

    updated = acme.update_registration(
        queried, queried.body.update(contact=("mailto:ops@corp.test",))
    )
    assert updated.body.contact == ("mailto:ops@corp.test",)

    gone = acme.deactivate_registration(updated)
    assert gone.body.status == "deactivated"
    with pytest.raises(messages.Error) as err:
        acme.query_registration(gone)
    assert err.value.typ == "urn:ietf:params:acme:error:unauthorized"

    actions = [e.action for e in live_api.audit_since(seq)]
    assert actions == [
        "acme.account.created",
        "acme.account.updated",
        "acme.account.deactivated",
    ]
    live_api.verify_audit_chain()


def test_acme_library_with_an_rsa_key(live_api):
    key = jose.JWKRSA(key=rsa.generate_private_key(65537, 2048))
    acme, _ = client_for(live_api, key, jose.RS256)
    regr = acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
    assert acme.query_registration(regr).uri == regr.uri


def test_one_nonce_replayed_by_20_threads_succeeds_once(live_api):
    url = live_api.url("/acme/new-account")
    nonce = requests.head(live_api.url("/acme/new-nonce"), timeout=5).headers["Replay-Nonce"]
    body = encode(
        sign(ec.generate_private_key(ec.SECP256R1()), {"termsOfServiceAgreed": True}, url, nonce)
    )
    barrier = threading.Barrier(20)
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def replay() -> None:
        with requests.Session() as session:
            barrier.wait()
            resp = session.post(url, data=body, headers=JOSE, timeout=30)
        kind = resp.json().get("type", "") if resp.status_code >= 400 else ""
        assert resp.headers["Replay-Nonce"]
        with lock:
            results.append((resp.status_code, kind))

    threads = [threading.Thread(target=replay) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20
    assert sorted(results).count((201, "")) == 1, results
    assert sorted(results).count((400, "urn:ietf:params:acme:error:badNonce")) == 19, results


def test_acme_library_rolls_the_account_key_over(live_api):
    """RFC 8555 §7.3.5 with the library's JWS: the inner JWS (new key, jwk, no nonce) inside an
    outer one by the old key; afterwards the new key finds the account, the old one does not."""
    seq = live_api.audit_seq()
    old = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    acme, net = client_for(live_api, old, jose.ES256)
    regr = acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
    new = jose.JWKRSA(key=rsa.generate_private_key(65537, 2048))
    url = acme.directory["keyChange"]
    # The library's ACME JWS with no nonce: alg, jwk and url protected (RFC 8555 §7.3.5).
    inner = acme_jws.JWS.sign(
        json.dumps({"account": regr.uri, "oldKey": old.public_key().to_partial_json()}).encode(),
        key=new,
        alg=jose.RS256,
        nonce=None,
        url=url,
    )
    acme._post(url, _Inner(inner.to_partial_json()))

    renewed, _ = client_for(live_api, new, jose.RS256)
    # The library reports an existing account (200 + Location) as a conflict naming it.
    with pytest.raises(acme_errors.ConflictError) as found:
        renewed.new_account(messages.NewRegistration.from_data(only_return_existing=True))
    assert found.value.location == regr.uri
    stale, _ = client_for(live_api, old, jose.ES256)
    with pytest.raises(messages.Error) as err:
        stale.new_account(messages.NewRegistration.from_data(only_return_existing=True))
    assert err.value.typ == "urn:ietf:params:acme:error:accountDoesNotExist"
    actions = [e.action for e in live_api.audit_since(seq)]
    assert actions == ["acme.account.created", "acme.account.key-changed"]


class _Inner(jose.JSONDeSerializable):
    """A ready-made JSON payload for ``ClientV2._post`` (the inner JWS of a key change)."""

    def __init__(self, body: dict) -> None:
        self.body = body

    def to_partial_json(self) -> dict:
        return self.body

    @classmethod
    def from_json(cls, jobj: object) -> _Inner:
        raise NotImplementedError
