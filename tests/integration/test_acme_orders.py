"""ACME orders against a real gunicorn server with certbot's ``acme`` library: new-order,
http-01 (validated against a tiny HTTP server this test runs), finalize and download.

The server is told (``[acme] validation_resolve_to``) to connect to 127.0.0.1 for every name,
and ``validation_http01_port`` to the port of this module's challenge server.
"""

from __future__ import annotations

import datetime
import subprocess
import threading
import time
from collections.abc import Iterator

import josepy as jose
import pytest
from acme import challenges, messages
from acme import client as acme_client
from acme import errors as acme_errors
from acmetools import http01_config, http01_server
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from helpers import make_csr

pytestmark = [pytest.mark.hsm, pytest.mark.db]

#: token → what the challenge server answers for it.
SERVED: dict[str, str] = {}


@pytest.fixture(scope="module")
def challenge_server() -> Iterator[int]:
    with http01_server(SERVED) as port:
        yield port


@pytest.fixture(scope="module")
def live_config_extra(challenge_server: int) -> str:
    return http01_config(challenge_server)


def new_client(live_api):
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    net = acme_client.ClientNetwork(
        key, alg=jose.ES256, verify_ssl=False, user_agent="hsmca-tests", timeout=15
    )
    directory = acme_client.ClientV2.get_directory(live_api.url("/acme/directory"), net)
    acme = acme_client.ClientV2(directory, net)
    regr = acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
    return acme, key, regr


def answer_all(acme, key, orderr, wrong: bool = False) -> None:
    for authzr in orderr.authorizations:
        chall = next(c for c in authzr.body.challenges if isinstance(c.chall, challenges.HTTP01))
        response, validation = chall.response_and_validation(key)
        SERVED[chall.chall.encode("token")] = "not-the-key-authorization" if wrong else validation
        acme.answer_challenge(chall, response)


def deadline(seconds: int = 30) -> datetime.datetime:
    return datetime.datetime.now() + datetime.timedelta(seconds=seconds)


def wait_for(acme, url: str, done: set[str]) -> dict:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        body = acme._post_as_get(url).json()
        if body["status"] in done:
            return body
        time.sleep(0.2)
    raise AssertionError(f"{url} never reached {done}")


def test_full_flow_http01_finalize_download_and_verify(live_api, tmp_path):
    seq = live_api.audit_seq()
    acme, key, _ = new_client(live_api)
    csr = make_csr(["www.acme.test", "api.acme.test", "127.0.0.1"])
    orderr = acme.new_order(csr)
    assert orderr.uri.startswith(live_api.url("/acme/order/"))
    assert orderr.body.status == messages.STATUS_PENDING
    assert {(i.typ.name, i.value) for i in orderr.body.identifiers} == {
        ("dns", "www.acme.test"),
        ("dns", "api.acme.test"),
        ("ip", "127.0.0.1"),
    }
    assert len(orderr.authorizations) == 3
    answer_all(acme, key, orderr)
    done = acme.poll_and_finalize(orderr, deadline())
    assert done.body.status == messages.STATUS_VALID
    pem = done.fullchain_pem.encode()
    certs = x509.load_pem_x509_certificates(pem)
    assert len(certs) == 2  # leaf + issuing CA
    sans = certs[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"www.acme.test", "api.acme.test"}
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]

    leaf, chain = tmp_path / "leaf.pem", tmp_path / "chain.pem"
    leaf.write_bytes(certs[0].public_bytes(serialization.Encoding.PEM))
    chain.write_bytes(certs[1].public_bytes(serialization.Encoding.PEM))
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(live_api.env.root_pem), "-untrusted", str(chain)]
        + [str(leaf)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    serial = format(certs[0].serial_number, "x")
    row = live_api.env.auth.db.get_certificate(serial)
    assert row.requester.startswith("acme:") and row.profile == "server"
    order_id = done.uri.rstrip("/").rsplit("/", 1)[-1]
    assert row.meta == {"acme_order": order_id}  # the certificate names its order
    actions = [e.action for e in live_api.audit_since(seq)]
    assert actions.count("acme.authorization.valid") == 3
    assert "certificate.issued" in actions or any(a.startswith("certificate.") for a in actions)
    assert actions[-1] == "acme.order.finalized"
    live_api.verify_audit_chain()


def test_wrong_key_authorization_makes_authz_and_order_invalid(live_api):
    acme, key, _ = new_client(live_api)
    orderr = acme.new_order(make_csr(["wrong.acme.test"]))
    answer_all(acme, key, orderr, wrong=True)
    authz = wait_for(acme, orderr.authorizations[0].uri, {"valid", "invalid"})
    assert authz["status"] == "invalid"
    chall = authz["challenges"][0]
    assert chall["status"] == "invalid"
    assert chall["error"]["type"] == "urn:ietf:params:acme:error:incorrectResponse"
    order = acme._post_as_get(orderr.uri).json()
    assert order["status"] == "invalid"
    with pytest.raises(messages.Error) as err:
        acme.begin_finalization(orderr)
    assert err.value.typ == "urn:ietf:params:acme:error:orderNotReady"
    # Invalid for good: answering again changes nothing.
    with pytest.raises(acme_errors.ValidationError):
        acme.poll_authorizations(orderr, deadline(5))


def test_finalize_rejects_bad_csrs_then_issues_once_under_concurrency(live_api):
    acme, key, regr = new_client(live_api)
    names = ["one.acme.test", "two.acme.test"]
    orderr = acme.new_order(make_csr(names))
    with pytest.raises(messages.Error) as err:
        acme.begin_finalization(orderr)  # not ready yet
    assert err.value.typ == "urn:ietf:params:acme:error:orderNotReady"
    answer_all(acme, key, orderr)
    orderr = acme.poll_authorizations(orderr, deadline())
    assert acme._post_as_get(orderr.uri).json()["status"] == "ready"

    with pytest.raises(messages.Error) as err:
        acme.begin_finalization(orderr.update(csr_pem=make_csr([*names, "extra.acme.test"])))
    assert err.value.typ == "urn:ietf:params:acme:error:badCSR"
    assert "extra.acme.test" in err.value.detail
    with pytest.raises(messages.Error) as err:
        acme.begin_finalization(orderr.update(csr_pem=make_csr(names[:1])))
    assert err.value.typ == "urn:ietf:params:acme:error:badCSR"
    with pytest.raises(messages.Error) as err:
        acme.begin_finalization(orderr.update(csr_pem=make_csr(names, key=key.key._wrapped)))
    assert err.value.typ == "urn:ietf:params:acme:error:badCSR"
    assert "account key" in err.value.detail
    assert acme._post_as_get(orderr.uri).json()["status"] == "ready"

    # Ten concurrent finalizes of the ready order: exactly one certificate.
    before = live_api.counts()["certificates"]
    clients = []
    for _ in range(10):
        net = acme_client.ClientNetwork(key, alg=jose.ES256, account=regr, timeout=60)
        clients.append(acme_client.ClientV2(acme.directory, net))
    barrier = threading.Barrier(len(clients))
    outcomes: list[str] = []
    lock = threading.Lock()

    def finalize(client) -> None:
        barrier.wait()
        try:
            client.begin_finalization(orderr)
            outcome = "ok"
        except messages.Error as exc:
            outcome = exc.typ
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=finalize, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 1, outcomes
    assert outcomes.count("urn:ietf:params:acme:error:orderNotReady") == 9, outcomes
    assert live_api.counts()["certificates"] == before + 1
    order = acme._post_as_get(orderr.uri).json()
    assert order["status"] == "valid" and order["certificate"]


def test_another_account_cannot_see_the_order_authz_or_certificate(live_api):
    acme, key, _ = new_client(live_api)
    orderr = acme.new_order(make_csr(["mine.acme.test"]))
    answer_all(acme, key, orderr)
    done = acme.poll_and_finalize(orderr, deadline())
    other, _, _ = new_client(live_api)
    for url in (orderr.uri, orderr.authorizations[0].uri, done.body.certificate):
        with pytest.raises(messages.Error) as err:
            other._post_as_get(url)
        assert err.value.typ == "urn:ietf:params:acme:error:malformed"
        assert err.value.code == 404 or "no such" in (err.value.detail or "")


def test_new_order_rejects_identifiers_the_profile_never_allows(live_api):
    acme, _, _ = new_client(live_api)
    for payload, kind in (
        ({"identifiers": [{"type": "dns", "value": "*.acme.test"}]}, "rejectedIdentifier"),
        ({"identifiers": [{"type": "dns", "value": "bad_name.test"}]}, "rejectedIdentifier"),
        ({"identifiers": [{"type": "email", "value": "a@b.test"}]}, "unsupportedIdentifier"),
        ({"identifiers": [{"type": "ip", "value": "300.1.1.1"}]}, "malformed"),
        ({"identifiers": []}, "malformed"),
        (
            {"identifiers": [{"type": "dns", "value": "x.acme.test"}], "profile": "nope"},
            "invalidProfile",
        ),
        (
            {"identifiers": [{"type": "ip", "value": "10.0.0.1"}], "profile": "client"},
            "rejectedIdentifier",
        ),
    ):
        with pytest.raises(messages.Error) as err:
            acme._post(acme.directory["newOrder"], _Raw(payload))
        assert err.value.typ == f"urn:ietf:params:acme:error:{kind}", payload


def test_authorization_deactivation_invalidates_the_order(live_api):
    acme, _, _ = new_client(live_api)
    orderr = acme.new_order(make_csr(["gone.acme.test"]))
    authzr = acme.deactivate_authorization(orderr.authorizations[0])
    assert authzr.body.status == messages.STATUS_DEACTIVATED
    assert acme._post_as_get(orderr.uri).json()["status"] == "invalid"


class _Raw(jose.JSONDeSerializable):
    """A payload sent as it is (to send what the library would not)."""

    def __init__(self, body: dict) -> None:
        self.body = body

    def to_partial_json(self) -> dict:
        return self.body

    @classmethod
    def from_json(cls, jobj: object) -> _Raw:
        raise NotImplementedError
