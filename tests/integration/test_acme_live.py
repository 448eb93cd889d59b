"""ACME accounts against a real gunicorn server: certbot's ``acme`` client library, and one
signed request replayed by 20 threads at once (nonces are single use across workers)."""

from __future__ import annotations

import threading

import josepy as jose
import pytest
import requests
from acme import client as acme_client
from acme import errors as acme_errors
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
