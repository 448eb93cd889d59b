"""ACME revokeCert (RFC 8555 §7.6) and renewal information (ARI, RFC 9773) against a real
gunicorn server, driven by certbot's ``acme`` library and raw JWS (``tests/acmejws.py``).

Certificates are issued over ACME with http-01 answered by a challenge server this module
runs (the server connects to 127.0.0.1 for every name, ``[acme] validation_resolve_to``).
After each revocation the test checks what a relying party and an auditor see: the live
``/ocsp`` answers ``revoked`` with the reason, the certificate row is revoked, and the audit
event names the ACME actor.
"""

from __future__ import annotations

import base64
import datetime
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import josepy as jose
import pytest
import requests
from acme import challenges, messages
from acme import client as acme_client
from acmejws import b64, encode, sign
from acmetools import http01_config, http01_server
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp as xocsp
from cryptography.x509.oid import NameOID
from helpers import make_csr

import ocsp

pytestmark = [pytest.mark.hsm, pytest.mark.db]

JOSE = {"Content-Type": "application/jose+json"}
DER = serialization.Encoding.DER
ERR = "urn:ietf:params:acme:error:"

#: token → what the challenge server answers for it.
SERVED: dict[str, str] = {}


@pytest.fixture(scope="module")
def challenge_server() -> Iterator[int]:
    with http01_server(SERVED) as port:
        yield port


@pytest.fixture(scope="module")
def live_config_extra(challenge_server: int) -> str:
    return http01_config(challenge_server)


@pytest.fixture(scope="module")
def live(live_api):
    ocsp.set_up(live_api.env.auth, actor="test")  # OCSP responders, so revocations show there
    return live_api


# Helpers ---------------------------------------------------------------------------------------


@dataclass
class Account:
    acme: acme_client.ClientV2
    key: jose.JWKEC
    private: ec.EllipticCurvePrivateKey
    uri: str

    @property
    def id(self) -> int:
        return int(self.uri.rstrip("/").rsplit("/", 1)[-1])


@dataclass
class Issued:
    cert: x509.Certificate
    issuer: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    pem: bytes

    @property
    def serial(self) -> str:
        return format(self.cert.serial_number, "x")


def new_account(live) -> Account:
    private = ec.generate_private_key(ec.SECP256R1())
    key = jose.JWKEC(key=private)
    net = acme_client.ClientNetwork(key, alg=jose.ES256, user_agent="hsmca-tests", timeout=30)
    directory = acme_client.ClientV2.get_directory(live.url("/acme/directory"), net)
    acme = acme_client.ClientV2(directory, net)
    regr = acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
    return Account(acme, key, private, regr.uri)


def deadline() -> datetime.datetime:
    return datetime.datetime.now() + datetime.timedelta(seconds=30)


def validate(account: Account, names: list[str]) -> messages.OrderResource:
    """A new order for ``names`` with every authorization validated over http-01."""
    orderr = account.acme.new_order(make_csr(names))
    for authzr in orderr.authorizations:
        chall = next(c for c in authzr.body.challenges if isinstance(c.chall, challenges.HTTP01))
        response, validation = chall.response_and_validation(account.key)
        SERVED[chall.chall.encode("token")] = validation
        account.acme.answer_challenge(chall, response)
    return account.acme.poll_authorizations(orderr, deadline())


def issue(account: Account, names: list[str]) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    orderr = validate(account, names)
    done = account.acme.finalize_order(orderr.update(csr_pem=make_csr(names, key=key)), deadline())
    leaf, issuer = x509.load_pem_x509_certificates(done.fullchain_pem.encode())
    return Issued(leaf, issuer, key, leaf.public_bytes(serialization.Encoding.PEM))


def ocsp_status(live, issued: Issued, want: str = "REVOKED") -> xocsp.OCSPResponse:
    """The live server's OCSP answer, polled for a second (each worker caches 0.5 s)."""
    req = (
        xocsp.OCSPRequestBuilder()
        .add_certificate(issued.cert, issued.issuer, hashes.SHA1())
        .build()
        .public_bytes(DER)
    )
    end = time.monotonic() + 2
    while True:
        resp = requests.post(
            live.url("/ocsp"),
            data=req,
            headers={"Content-Type": "application/ocsp-request"},
            timeout=10,
        )
        answer = xocsp.load_der_ocsp_response(resp.content)
        if answer.certificate_status.name == want or time.monotonic() > end:
            return answer
        time.sleep(0.05)


def assert_revoked(live, issued: Issued, reason: x509.ReasonFlags, actor: str, seq: int) -> None:
    """OCSP, the certificate row and the audit all say: revoked for ``reason`` by ``actor``."""
    answer = ocsp_status(live, issued)
    assert answer.certificate_status == xocsp.OCSPCertStatus.REVOKED
    if reason == x509.ReasonFlags.unspecified:
        assert answer.revocation_reason in (None, reason)  # unspecified may be left out
    else:
        assert answer.revocation_reason == reason
    row = live.env.auth.db.get_certificate(issued.serial)
    assert row.status == "revoked" and row.revoked_at is not None
    code = next(c for c, name in REASONS.items() if name == reason)
    assert row.revocation_reason == code
    events = [e for e in live.audit_since(seq) if e.action == "certificate.revoked"]
    assert [(e.actor, e.subject) for e in events] == [(actor, issued.serial)]
    assert events[0].details["reason_code"] == code
    assert "ACME revokeCert" in events[0].details["comment"]
    live.verify_audit_chain()


REASONS = {
    0: x509.ReasonFlags.unspecified,
    1: x509.ReasonFlags.key_compromise,
    4: x509.ReasonFlags.superseded,
    5: x509.ReasonFlags.cessation_of_operation,
}


class _Raw(jose.JSONDeSerializable):
    """A payload sent as it is (to send what the library would not)."""

    def __init__(self, body: dict) -> None:
        self.body = body

    def to_partial_json(self) -> dict:
        return self.body

    @classmethod
    def from_json(cls, jobj: object) -> _Raw:
        raise NotImplementedError


def revoke_payload(issued: Issued, reason: int | None = None) -> dict:
    body: dict = {"certificate": b64(issued.cert.public_bytes(DER))}
    if reason is not None:
        body["reason"] = reason
    return body


def post_raw(live, key, path: str, payload: dict, kid: str | None = None) -> requests.Response:
    """A raw JWS request signed with ``key`` (with ``kid``, else carrying the key as ``jwk``)."""
    url = live.url(path)
    nonce = requests.head(live.url("/acme/new-nonce"), timeout=10).headers["Replay-Nonce"]
    body = encode(sign(key, payload, url, nonce=nonce, kid=kid))
    return requests.post(url, data=body, headers=JOSE, timeout=30)


def post_with_jwk(live, key, payload: dict) -> requests.Response:
    """revokeCert signed with ``key`` as a ``jwk``."""
    return post_raw(live, key, "/acme/revoke-cert", payload)


def post_as(live, account: Account, path: str, payload: dict) -> requests.Response:
    """A request signed with the account's ``kid``."""
    return post_raw(live, account.private, path, payload, kid=account.uri)


def problem(resp: requests.Response) -> tuple[str, int]:
    assert resp.headers["Content-Type"] == "application/problem+json", resp.text
    return resp.json()["type"].removeprefix(ERR), resp.status_code


def cert_id(cert: x509.Certificate) -> str:
    """RFC 9773 §4.1, computed here independently of the server's code."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    serial = cert.serial_number.to_bytes(math.ceil((cert.serial_number.bit_length() + 1) / 8))
    enc = base64.urlsafe_b64encode
    return f"{enc(aki.key_identifier).decode().rstrip('=')}.{enc(serial).decode().rstrip('=')}"


def renewal_info(live, cid: str) -> requests.Response:
    return requests.get(live.url(f"/acme/renewal-info/{cid}"), timeout=10)


def parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


# revokeCert ------------------------------------------------------------------------------------


def test_directory_lists_revoke_cert_and_renewal_info(live):
    directory = requests.get(live.url("/acme/directory"), timeout=10).json()
    assert directory["revokeCert"] == live.url("/acme/revoke-cert")
    assert directory["renewalInfo"] == live.url("/acme/renewal-info")


def test_ordering_account_revokes_with_kid_then_again_is_already_revoked(live):
    owner = new_account(live)
    issued = issue(owner, ["kid.revoke.test", "127.0.0.1"])
    assert ocsp_status(live, issued, "GOOD").certificate_status == xocsp.OCSPCertStatus.GOOD
    seq = live.audit_seq()
    owner.acme.revoke(issued.cert, 1)
    assert_revoked(live, issued, x509.ReasonFlags.key_compromise, f"acme:{owner.id}", seq)
    with pytest.raises(messages.Error) as err:
        owner.acme.revoke(issued.cert, 1)
    assert err.value.typ == ERR + "alreadyRevoked"
    resp = post_as(live, owner, "/acme/revoke-cert", revoke_payload(issued, 4))
    assert problem(resp) == ("alreadyRevoked", 400)


def test_certificate_key_revokes_with_jwk(live):
    issued = issue(new_account(live), ["certkey.revoke.test"])
    seq = live.audit_seq()
    resp = post_with_jwk(live, issued.key, revoke_payload(issued, 4))
    assert resp.status_code == 200, resp.text
    assert resp.headers["Replay-Nonce"]
    assert_revoked(live, issued, x509.ReasonFlags.superseded, f"acme-certkey:{issued.serial}", seq)


def test_jwk_that_is_not_the_certificate_key_is_unauthorized_and_audited(live):
    issued = issue(new_account(live), ["otherkey.revoke.test"])
    seq = live.audit_seq()
    resp = post_with_jwk(live, ec.generate_private_key(ec.SECP256R1()), revoke_payload(issued))
    assert resp.status_code == 403
    assert resp.json()["type"] == ERR + "unauthorized"
    assert live.env.auth.db.get_certificate(issued.serial).status == "issued"
    denied = [e for e in live.audit_since(seq) if e.action == "acme.revocation.denied"]
    assert [(e.actor, e.subject) for e in denied] == [("acme-jwk", issued.serial)]


def test_account_with_valid_authorizations_for_every_name_revokes(live):
    owner, other = new_account(live), new_account(live)
    names = ["a.authz-revoke.test", "b.authz-revoke.test"]
    issued = issue(owner, names)
    validate(other, names[:1])  # one of two names: not enough
    seq = live.audit_seq()
    resp = post_as(live, other, "/acme/revoke-cert", revoke_payload(issued, 5))
    assert problem(resp) == ("unauthorized", 403)
    assert "b.authz-revoke.test" in resp.json()["detail"]
    denied = [e for e in live.audit_since(seq) if e.action == "acme.revocation.denied"]
    assert [e.actor for e in denied] == [f"acme:{other.id}"]

    validate(other, names[1:])
    seq = live.audit_seq()
    other.acme.revoke(issued.cert, 5)
    assert_revoked(live, issued, x509.ReasonFlags.cessation_of_operation, f"acme:{other.id}", seq)
    event = next(e for e in live.audit_since(seq) if e.action == "certificate.revoked")
    assert "authorized for every identifier" in event.details["comment"]


def test_unrelated_account_is_unauthorized(live):
    issued = issue(new_account(live), ["unrelated.revoke.test"])
    stranger = new_account(live)
    with pytest.raises(messages.Error) as err:
        stranger.acme.revoke(issued.cert, 0)
    assert err.value.typ == ERR + "unauthorized"
    resp = post_as(live, stranger, "/acme/revoke-cert", revoke_payload(issued, 0))
    assert problem(resp) == ("unauthorized", 403)
    assert live.env.auth.db.get_certificate(issued.serial).status == "issued"
    assert ocsp_status(live, issued, "GOOD").certificate_status == xocsp.OCSPCertStatus.GOOD


def test_refused_reasons_are_bad_revocation_reason(live):
    owner = new_account(live)
    issued = issue(owner, ["reason.revoke.test"])
    for reason in (7, 6, 8, 2, 11, -1):
        resp = post_as(live, owner, "/acme/revoke-cert", revoke_payload(issued, reason))
        assert problem(resp) == ("badRevocationReason", 400), reason
    with pytest.raises(messages.Error) as err:
        owner.acme.revoke(issued.cert, 7)  # the library's way too
    assert err.value.typ == ERR + "badRevocationReason"
    resp = post_as(live, owner, "/acme/revoke-cert", revoke_payload(issued) | {"reason": "1"})
    assert problem(resp) == ("malformed", 400)
    assert live.env.auth.db.get_certificate(issued.serial).status == "issued"
    seq = live.audit_seq()  # no reason: unspecified
    owner.acme._post(owner.acme.directory["revokeCert"], _Raw(revoke_payload(issued)))
    assert_revoked(live, issued, x509.ReasonFlags.unspecified, f"acme:{owner.id}", seq)


def test_unknown_altered_or_garbage_certificates_are_refused(live):
    owner = new_account(live)
    issued = issue(owner, ["unknown.revoke.test"])
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unknown.revoke.test")])
    foreign = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issued.issuer.subject)  # same issuer name and serial, not our bytes
        .public_key(key.public_key())
        .serial_number(issued.cert.serial_number)
        .not_valid_before(issued.cert.not_valid_before_utc)
        .not_valid_after(issued.cert.not_valid_after_utc)
        .sign(key, hashes.SHA256())
    )
    for payload, status in (
        ({"certificate": b64(foreign.public_bytes(DER))}, 404),
        ({"certificate": b64(b"not a certificate")}, 400),
        ({"certificate": "***"}, 400),
        ({}, 400),
    ):
        resp = post_as(live, owner, "/acme/revoke-cert", payload)
        assert problem(resp) == ("malformed", status), payload
    # The certificate's own key signing for a certificate that is not ours: still 404.
    resp = post_with_jwk(live, key, {"certificate": b64(foreign.public_bytes(DER))})
    assert resp.status_code == 404 and resp.json()["type"] == ERR + "malformed"
    assert live.env.auth.db.get_certificate(issued.serial).status == "issued"


# ARI -------------------------------------------------------------------------------------------


def test_renewal_info_window_is_inside_the_validity_then_in_the_past_once_revoked(live):
    owner = new_account(live)
    issued = issue(owner, ["ari.revoke.test"])
    cid = cert_id(issued.cert)
    assert cid == acme_client._renewal_info_path_component(issued.cert)  # the library agrees
    resp = renewal_info(live, cid)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    assert int(resp.headers["Retry-After"]) == 6 * 3600
    window = resp.json()["suggestedWindow"]
    start, end = parse_time(window["start"]), parse_time(window["end"])
    nb, na = issued.cert.not_valid_before_utc, issued.cert.not_valid_after_utc
    assert nb < start < end < na
    now = datetime.datetime.now(datetime.UTC)
    assert start > now  # a fresh certificate is not due yet
    when, _ = owner.acme.renewal_time(issued.pem)  # certbot's own ARI client
    assert when is not None and start <= when.astimezone(datetime.UTC) <= end

    owner.acme.revoke(issued.cert, 1)
    resp = renewal_info(live, cid)
    window = resp.json()["suggestedWindow"]
    start, end = parse_time(window["start"]), parse_time(window["end"])
    now = datetime.datetime.now(datetime.UTC)
    assert start < end < now  # renew at once


def test_renewal_info_malformed_and_unknown_cert_ids(live):
    issued = issue(new_account(live), ["ari-bad.revoke.test"])
    aki = cert_id(issued.cert).split(".")[0]
    for bad in ("nodot", f"{aki}.gA", f"{aki}.AAE", f"{aki}.A*A", f"{aki}="):
        resp = renewal_info(live, bad)
        assert resp.status_code == 400, bad
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert resp.json()["type"] == ERR + "malformed"
    resp = requests.get(live.url("/acme/renewal-info"), timeout=10)
    assert resp.status_code == 400
    other_aki = base64.urlsafe_b64encode(b"\x01" * 20).decode().rstrip("=")
    for unknown in (f"{aki}.ASNFZ4mrze8", f"{other_aki}.{cert_id(issued.cert).split('.')[1]}"):
        resp = renewal_info(live, unknown)
        assert resp.status_code == 404, unknown
        assert resp.json()["type"] == ERR + "malformed"


def test_new_order_replaces_once_then_already_replaced_until_the_replacement_fails(live):
    owner = new_account(live)
    names = ["old.replace.test", "keep.replace.test"]
    issued = issue(owner, names)
    cid = cert_id(issued.cert)
    url = owner.acme.directory["newOrder"]
    payload = {
        "identifiers": [{"type": "dns", "value": "keep.replace.test"}],  # one name in common
        "replaces": cid,
    }
    seq = live.audit_seq()
    first = owner.acme._post(url, _Raw(payload))
    assert first.status_code == 201
    assert first.json()["replaces"] == cid
    again = owner.acme._post_as_get(first.headers["Location"]).json()
    assert again["replaces"] == cid
    created = [e for e in live.audit_since(seq) if e.action == "acme.order.created"]
    assert created[-1].details["replaces"] == issued.serial

    # 409 Conflict (as Boulder answers); the problem document says alreadyReplaced.
    assert problem(post_as(live, owner, "/acme/new-order", payload)) == ("alreadyReplaced", 409)

    # The replacement fails (its authorization is deactivated): the certificate is free again.
    authz_url = first.json()["authorizations"][0]
    owner.acme._post(authz_url, _Raw({"status": "deactivated"}))
    assert owner.acme._post_as_get(first.headers["Location"]).json()["status"] == "invalid"
    second = owner.acme._post(url, _Raw(payload))
    assert second.status_code == 201 and second.json()["replaces"] == cid


def test_new_order_replaces_refuses_foreign_unrelated_and_malformed_cert_ids(live):
    owner, stranger = new_account(live), new_account(live)
    issued = issue(owner, ["foreign.replace.test"])
    cid = cert_id(issued.cert)
    same_names = [{"type": "dns", "value": "foreign.replace.test"}]
    cases = [
        (stranger, {"identifiers": same_names, "replaces": cid}, "malformed"),
        (
            owner,
            {"identifiers": [{"type": "dns", "value": "else.replace.test"}], "replaces": cid},
            "malformed",  # no identifier in common
        ),
        (owner, {"identifiers": same_names, "replaces": "not-a-cert-id"}, "malformed"),
        (owner, {"identifiers": same_names, "replaces": 42}, "malformed"),
    ]
    for account, payload, kind in cases:
        assert problem(post_as(live, account, "/acme/new-order", payload)) == (kind, 400), payload
    # None of those marked the certificate replaced: its owner may still replace it.
    ok = post_as(live, owner, "/acme/new-order", {"identifiers": same_names, "replaces": cid})
    assert ok.status_code == 201 and ok.json()["replaces"] == cid


def test_nothing_above_crashed_the_server(live):
    """Every refusal above was an ACME problem, never an unhandled error (runs last)."""
    assert live.server.alive()
    assert "Traceback" not in live.server.log_text()
