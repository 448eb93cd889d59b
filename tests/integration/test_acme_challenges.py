"""dns-01, tls-alpn-01 and wildcard orders against a real gunicorn server, driven by certbot's
``acme`` library.

The server asks this module's DNS server (tests/dnsserver.py) for everything
(``[acme] validation_dns_server``): dns-01 TXT records, and the A records http-01 and
tls-alpn-01 connect to. tls-alpn-01 connects to this module's responder (tests/tlsalpn.py);
http-01 to a socket that accepts connections and never answers (to hold a challenge in
``processing``). Profile ``wild`` allows wildcards below ``wild.test``.
"""

from __future__ import annotations

import datetime
import socket
import time
from collections.abc import Iterator

import josepy as jose
import pytest
from acme import challenges, messages
from acme import client as acme_client
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from dnsserver import DnsServer
from helpers import make_csr
from tlsalpn import TlsAlpnResponder, challenge_cert, sni_for

from ca.store import acme as store

pytestmark = [pytest.mark.hsm, pytest.mark.db]

ERR = "urn:ietf:params:acme:error:"
TIMEOUT_SECONDS = 3


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.fixture(scope="module")
def responder() -> Iterator[TlsAlpnResponder]:
    server = TlsAlpnResponder().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A port whose connections are accepted by the kernel and never answered."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture(scope="module")
def live_config_extra(dns_server: DnsServer, responder: TlsAlpnResponder, silent_port: int) -> str:
    return (
        "\n[acme]\n"
        f'validation_dns_server = "{dns_server.address}"\n'
        f"validation_tlsalpn01_port = {responder.port}\n"
        f"validation_http01_port = {silent_port}\n"
        f"validation_timeout_seconds = {TIMEOUT_SECONDS}\n"
        "\n[profiles.wild]\n"
        'dns_names = ["wild.test", ".wild.test"]\n'
        "allow_wildcards = true\n"
    )


def new_client(live_api):
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    net = acme_client.ClientNetwork(
        key, alg=jose.ES256, verify_ssl=False, user_agent="hsmca-tests", timeout=15
    )
    directory = acme_client.ClientV2.get_directory(live_api.url("/acme/directory"), net)
    acme = acme_client.ClientV2(directory, net)
    acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
    return acme, key


def key_authorization(challb: messages.ChallengeBody, key: jose.JWK) -> str:
    """RFC 8555 §8.1, for challenge types the library no longer knows (tls-alpn-01)."""
    token = challb.chall.jobj["token"]
    return f"{token}.{jose.b64encode(key.thumbprint()).decode()}"


def typ(challb: messages.ChallengeBody) -> str:
    """The type, also of challenges the library does not know (tls-alpn-01)."""
    return str(challb.chall.to_partial_json()["type"])


def challenge(authzr: messages.AuthorizationResource, kind: str) -> messages.ChallengeBody:
    return next(c for c in authzr.body.challenges if typ(c) == kind)


def answer(acme, challb: messages.ChallengeBody) -> None:
    """POST {} to the challenge: the same for every type."""
    acme.answer_challenge(challb, challenges.DNS01Response())


def wait_for(acme, url: str, done: set[str]) -> dict:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        body = acme._post_as_get(url).json()
        if body["status"] in done:
            return body
        time.sleep(0.2)
    raise AssertionError(f"{url} never reached {done}")


def deadline(seconds: int = 30) -> datetime.datetime:
    return datetime.datetime.now() + datetime.timedelta(seconds=seconds)


def finalize_sans(acme, orderr) -> set[str]:
    done = acme.poll_and_finalize(orderr, deadline())
    assert done.body.status == messages.STATUS_VALID
    leaf = x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n.value) for n in san}


def challenge_id(challb: messages.ChallengeBody) -> int:
    return int(challb.uri.rstrip("/").rsplit("/", 1)[-1])


# dns-01 --------------------------------------------------------------------------------------


def test_dns01_valid_authorizes_the_name_and_records_the_start(live_api, dns_server):
    seq = live_api.audit_seq()
    acme, key = new_client(live_api)
    orderr = acme.new_order(make_csr(["dns.acme.test"]))
    (authzr,) = orderr.authorizations
    assert [typ(c) for c in authzr.body.challenges] == ["http-01", "dns-01", "tls-alpn-01"]
    challb = challenge(authzr, "dns-01")
    dns_server.set_txt("_acme-challenge.dns.acme.test", [challb.chall.validation(key)])
    answer(acme, challb)
    authz = wait_for(acme, authzr.uri, {"valid", "invalid"})
    assert authz["status"] == "valid"
    assert {c["type"]: c["status"] for c in authz["challenges"]} == {
        "http-01": "pending",
        "dns-01": "valid",
        "tls-alpn-01": "pending",
    }
    row = store.get_challenge(live_api.env.auth.db, challenge_id(challb))
    assert row is not None and row.started_at is not None and row.validated_at is not None
    assert finalize_sans(acme, orderr) == {"dns.acme.test"}
    events = [(e.action, e.details) for e in live_api.audit_since(seq)]
    assert ("acme.challenge.started", {"type": "dns-01", "identifier": "dns:dns.acme.test"}) in (
        events
    )
    valid = [d for a, d in events if a == "acme.authorization.valid"]
    assert len(valid) == 1 and valid[0]["challenge"] == "dns-01"


def test_dns01_wrong_digest_makes_authz_and_order_invalid(live_api, dns_server):
    acme, key = new_client(live_api)
    orderr = acme.new_order(make_csr(["wrongdns.acme.test"]))
    (authzr,) = orderr.authorizations
    dns_server.set_txt("_acme-challenge.wrongdns.acme.test", ["stale-1", "stale-2"])
    answer(acme, challenge(authzr, "dns-01"))
    authz = wait_for(acme, authzr.uri, {"valid", "invalid"})
    assert authz["status"] == "invalid"
    chall = next(c for c in authz["challenges"] if c["type"] == "dns-01")
    assert chall["status"] == "invalid"
    assert chall["error"]["type"] == ERR + "incorrectResponse"
    assert chall["error"]["detail"].startswith(
        "2 TXT record(s) at _acme-challenge.wrongdns.acme.test, none is the expected"
    )
    assert acme._post_as_get(orderr.uri).json()["status"] == "invalid"
    # The other challenges of the failed authorization cannot be tried any more.
    with pytest.raises(messages.Error) as err:
        answer(acme, challenge(authzr, "tls-alpn-01"))
    assert err.value.typ == ERR + "malformed" and "invalid" in err.value.detail


def test_one_challenge_at_a_time_and_its_failure_settles_the_authorization(live_api, dns_server):
    acme, key = new_client(live_api)
    orderr = acme.new_order(make_csr(["busy.acme.test"]))
    (authzr,) = orderr.authorizations
    dns_server.set_address("busy.acme.test", ["127.0.0.1"])  # http-01: a port that never answers
    dns01_challb = challenge(authzr, "dns-01")
    dns_server.set_txt("_acme-challenge.busy.acme.test", [dns01_challb.chall.validation(key)])
    answer(acme, challenge(authzr, "http-01"))
    with pytest.raises(messages.Error) as err:
        answer(acme, dns01_challb)
    assert err.value.typ == ERR + "malformed"
    assert "http-01 challenge of this authorization is processing" in err.value.detail
    authz = wait_for(acme, authzr.uri, {"valid", "invalid"})
    http01 = next(c for c in authz["challenges"] if c["type"] == "http-01")
    assert authz["status"] == "invalid" and http01["error"]["type"] == ERR + "connection"
    assert next(c for c in authz["challenges"] if c["type"] == "dns-01")["status"] == "pending"


# Wildcards -----------------------------------------------------------------------------------


def test_wildcard_order_offers_only_dns01_and_issues_the_wildcard_name(live_api, dns_server):
    acme, key = new_client(live_api)
    orderr = acme.new_order(make_csr(["*.wild.test", "wild.test"]), profile="wild")
    order = acme._post_as_get(orderr.uri).json()
    assert {i["value"] for i in order["identifiers"]} == {"*.wild.test", "wild.test"}
    by_wildcard = {}
    for authzr in orderr.authorizations:
        body = acme._post_as_get(authzr.uri).json()
        assert body["identifier"] == {"type": "dns", "value": "wild.test"}
        by_wildcard[body.get("wildcard", False)] = authzr
    assert [typ(c) for c in by_wildcard[True].body.challenges] == ["dns-01"]
    assert len(by_wildcard[False].body.challenges) == 3
    # Both authorizations of wild.test use one TXT name, with a value each.
    challbs = [challenge(a, "dns-01") for a in by_wildcard.values()]
    dns_server.set_txt("_acme-challenge.wild.test", [c.chall.validation(key) for c in challbs])
    for challb in challbs:
        answer(acme, challb)
    assert finalize_sans(acme, orderr) == {"*.wild.test", "wild.test"}


def test_wildcard_under_a_profile_without_allow_wildcards_is_rejected(live_api):
    seq = live_api.audit_seq()
    acme, _ = new_client(live_api)
    with pytest.raises(messages.Error) as err:
        acme.new_order(make_csr(["*.acme.test"]))  # profile server: no wildcards
    assert err.value.typ == ERR + "rejectedIdentifier"
    assert "does not allow wildcard names" in err.value.detail
    with pytest.raises(messages.Error) as err:
        acme.new_order(make_csr(["*.other.test"]), profile="wild")
    assert err.value.typ == ERR + "rejectedIdentifier"
    denied = [e for e in live_api.audit_since(seq) if e.action == "acme.order.denied"]
    assert [e.details["profile"] for e in denied] == ["server", "wild"]


# tls-alpn-01 ---------------------------------------------------------------------------------


def test_tlsalpn01_valid_for_a_name_and_an_ip_address(live_api, dns_server, responder):
    acme, key = new_client(live_api)
    orderr = acme.new_order(make_csr(["alpn.acme.test", "127.0.0.1"]))
    dns_server.set_address("alpn.acme.test", ["127.0.0.1"])  # resolved by the configured server
    for authzr in orderr.authorizations:
        ident = authzr.body.identifier
        types = [typ(c) for c in authzr.body.challenges]
        if ident.typ.name == "ip":
            assert types == ["http-01", "tls-alpn-01"]  # RFC 8738: no dns-01
        challb = challenge(authzr, "tls-alpn-01")
        responder.answer(ident.typ.name, ident.value, key_authorization(challb, key))
        answer(acme, challb)
    assert finalize_sans(acme, orderr) == {"alpn.acme.test", "127.0.0.1"}


def test_tlsalpn01_certificate_with_a_non_critical_extension_is_refused(
    live_api, dns_server, responder
):
    acme, key = new_client(live_api)
    orderr = acme.new_order(make_csr(["badalpn.acme.test"]))
    (authzr,) = orderr.authorizations
    dns_server.set_address("badalpn.acme.test", ["127.0.0.1"])
    challb = challenge(authzr, "tls-alpn-01")
    cert, cert_key = challenge_cert(
        "dns", "badalpn.acme.test", key_authorization(challb, key), critical=False
    )
    responder.set(sni_for("dns", "badalpn.acme.test"), cert, cert_key)
    answer(acme, challb)
    authz = wait_for(acme, authzr.uri, {"valid", "invalid"})
    assert authz["status"] == "invalid"
    chall = next(c for c in authz["challenges"] if c["type"] == "tls-alpn-01")
    assert chall["error"]["type"] == ERR + "incorrectResponse"
    assert chall["error"]["detail"] == "the acmeIdentifier extension must be critical"
    assert acme._post_as_get(orderr.uri).json()["status"] == "invalid"
