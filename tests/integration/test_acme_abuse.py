"""Protocol abuse against the ACME server (RFC 8555) served by a real gunicorn: replayed nonces,
forged and broken JWS, wrong URLs, algorithms and keys, oversized, chunked and deeply nested
bodies, unknown paths and methods, bad finalize requests and deactivated accounts.

Every case must get its RFC 8555 answer as an ACME problem document carrying a fresh
``Replay-Nonce`` (never a 500, never a hang), and the server must keep answering: the last test
of the module checks that the server logged no traceback, that a normal certbot-library flow
still works and that the audit chain verifies. A wrong key authorization at the challenge
server is covered by ``test_acme_orders.py::test_wrong_key_authorization_makes_authz_and_order_invalid``.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import josepy as jose
import pytest
import requests
from acme import challenges, messages
from acme import client as acme_client
from acmejws import PrivateKey, b64, encode, flattened, sign
from acmetools import http01_config, http01_server
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from ca.acme.jws import jwk_of, thumbprint
from ca.acme.nonces import NONCE_LENGTH, make_nonce
from ca.store import acme as acme_store
from ca.store import tables as t

pytestmark = [pytest.mark.hsm, pytest.mark.db]

ERR = "urn:ietf:params:acme:error:"
JOSE = "application/jose+json"
TIMEOUT = 30
#: [acme] max_jws_bytes of the test server (the default).
MAX_JWS = 65536

#: token → what the challenge server answers for it.
SERVED: dict[str, str] = {}


@pytest.fixture(scope="module")
def challenge_server() -> Iterator[int]:
    with http01_server(SERVED) as port:
        yield port


@pytest.fixture(scope="module")
def live_config_extra(challenge_server: int) -> str:
    # Many accounts come from 127.0.0.1 here: no per-IP account limit.
    return http01_config(challenge_server, "new_accounts_per_ip_per_hour = 0")


# A raw client ------------------------------------------------------------------------------------


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


class Client:
    """A raw ACME client over HTTP: it signs what it is told to and sends bodies as they are."""

    def __init__(self, live_api: Any) -> None:
        self.api = live_api
        self.http = requests.Session()

    def url(self, path: str) -> str:
        return path if path.startswith("http") else self.api.url(path)

    def nonce(self) -> str:
        resp = self.http.head(self.url("/acme/new-nonce"), timeout=TIMEOUT)
        assert resp.status_code == 200
        return str(resp.headers["Replay-Nonce"])

    def send(
        self,
        path: str,
        body: bytes | dict[str, Any] | Iterator[bytes],
        content_type: str | None = JOSE,
        method: str = "POST",
    ) -> requests.Response:
        data = encode(body) if isinstance(body, dict) else body
        headers = {"Content-Type": content_type} if content_type else {}
        return self.http.request(
            method, self.url(path), data=data, headers=headers, timeout=TIMEOUT
        )

    def jws(
        self,
        path: str,
        key: PrivateKey,
        payload: Any,
        kid: str | None = None,
        url: str | None = None,
        **kw: Any,
    ) -> dict[str, str]:
        """A JWS for ``path`` signed by ``key`` with a fresh nonce (``kw``: sign()'s options)."""
        nonce = kw.pop("nonce", None) or self.nonce()
        return sign(key, payload, url or self.url(path), nonce=nonce, kid=kid, **kw)

    def post(self, path: str, key: PrivateKey, payload: Any, **kw: Any) -> requests.Response:
        return self.send(path, self.jws(path, key, payload, **kw))

    def register(self, key: PrivateKey) -> str:
        resp = self.post("/acme/new-account", key, {"termsOfServiceAgreed": True})
        assert resp.status_code == 201, resp.text
        return str(resp.headers["Location"])

    def new_order(self, key: PrivateKey, kid: str, *names: str) -> requests.Response:
        idents = [{"type": "dns", "value": n} for n in names]
        resp = self.post("/acme/new-order", key, {"identifiers": idents}, kid=kid)
        assert resp.status_code == 201, resp.text
        return resp


@pytest.fixture
def acme(live_api: Any) -> Iterator[Client]:
    client = Client(live_api)
    try:
        yield client
    finally:
        client.http.close()


def assert_problem(resp: requests.Response, kind: str, status: int | None = None) -> dict[str, Any]:
    """``resp`` is the ACME problem ``kind`` with ``status`` (default: 403 for unauthorized and
    orderNotReady, else 400), a fresh nonce and the index link."""
    if status is None:
        status = 403 if kind in ("unauthorized", "orderNotReady") else 400
    assert resp.status_code == status, (resp.status_code, resp.text[:300])
    assert resp.headers["Content-Type"].startswith("application/problem+json"), resp.headers
    body = resp.json()
    assert body["type"] == ERR + kind, body
    assert body["status"] == status
    assert len(resp.headers.get("Replay-Nonce", "")) == NONCE_LENGTH, resp.headers
    assert 'rel="index"' in resp.headers.get("Link", ""), resp.headers
    return dict(body)


def account_id(kid: str) -> int:
    return int(kid.rsplit("/", 1)[1])


def at_once(url: str, bodies: list[bytes]) -> list[requests.Response]:
    """Each body POSTed to ``url`` by its own thread, all released together, each thread on
    its own connection."""
    barrier = threading.Barrier(len(bodies))

    def one(body: bytes) -> requests.Response:
        with requests.Session() as session:
            barrier.wait(timeout=TIMEOUT)
            return session.post(url, data=body, headers={"Content-Type": JOSE}, timeout=TIMEOUT)

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(one, bodies))


# Replays --------------------------------------------------------------------------------------


def test_new_account_replayed_100_times_at_once_succeeds_once_and_every_loser_gets_a_fresh_nonce(
    acme, live_api
):
    key = new_key()
    url = acme.url("/acme/new-account")
    nonce = acme.nonce()
    seq = live_api.audit_seq()
    results = at_once(url, [encode(sign(key, {"termsOfServiceAgreed": True}, url, nonce))] * 100)

    assert Counter(r.status_code for r in results) == {201: 1, 400: 99}
    for resp in results:
        if resp.status_code == 400:
            assert_problem(resp, "badNonce")
    fresh = [r.headers["Replay-Nonce"] for r in results]
    assert len(set(fresh)) == 100 and nonce not in fresh
    actions = [e.action for e in live_api.audit_since(seq)]
    assert [a for a in actions if a.startswith("acme.account.")] == ["acme.account.created"]

    # Each loser's nonce is real: it is accepted (once) for the next request.
    def use(n: str) -> int:
        with requests.Session() as s:
            body = encode(sign(key, {"onlyReturnExisting": True}, url, n))
            return s.post(
                url, data=body, headers={"Content-Type": JOSE}, timeout=TIMEOUT
            ).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(use, fresh)) == {200}


def test_new_order_replayed_100_times_at_once_creates_exactly_one_order(acme, live_api):
    key = new_key()
    kid = acme.register(key)
    url = acme.url("/acme/new-order")
    payload = {"identifiers": [{"type": "dns", "value": "replay.acme.test"}]}
    body = encode(sign(key, payload, url, acme.nonce(), kid=kid))
    seq = live_api.audit_seq()
    results = at_once(url, [body] * 100)

    assert Counter(r.status_code for r in results) == {201: 1, 400: 99}
    for resp in results:
        if resp.status_code == 400:
            assert_problem(resp, "badNonce")
    assert len({r.headers["Replay-Nonce"] for r in results}) == 100
    with live_api.env.auth.db.read() as conn:
        orders = conn.execute(
            select(func.count())
            .select_from(t.AcmeOrder)
            .where(t.AcmeOrder.account_id == account_id(kid))
        ).scalar_one()
    assert orders == 1
    created = [e for e in live_api.audit_since(seq) if e.action == "acme.order.created"]
    assert len(created) == 1 and created[0].actor == f"acme:{account_id(kid)}"


# Nonces ---------------------------------------------------------------------------------------


def _aged(acme: Client, live_api: Any) -> str:
    """A genuine nonce (the installation's key) made two hours ago: past nonce_lifetime_seconds."""
    acme.nonce()  # the server has made its key
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2)
    return make_nonce(acme_store.nonce_key(live_api.env.auth.db), old)


NONCES: dict[str, Callable[[Client, Any], Any]] = {
    "never_issued": lambda acme, api: secrets.token_urlsafe(32),
    "expired": _aged,
    "missing": lambda acme, api: None,
    "empty": lambda acme, api: "",
    "not_a_string": lambda acme, api: 12345,
    "overlong": lambda acme, api: "A" * 200,
    "sql_like": lambda acme, api: "' OR '1'='1",
}


@pytest.mark.parametrize("case", NONCES)
def test_bad_nonces_get_bad_nonce(acme, live_api, case):
    nonce = NONCES[case](acme, live_api)
    url = acme.url("/acme/new-account")
    payload = {"termsOfServiceAgreed": True}
    jws = sign(new_key(), payload, url, nonce="x", extra_header={"nonce": nonce})
    assert_problem(acme.send(url, jws), "badNonce")


def test_a_nonce_used_once_is_refused_the_second_time(acme):
    key = new_key()
    url = acme.url("/acme/new-account")
    nonce = acme.nonce()
    first = acme.send(url, sign(key, {"termsOfServiceAgreed": True}, url, nonce))
    assert first.status_code == 201
    again = acme.send(url, sign(key, {"termsOfServiceAgreed": True}, url, nonce))
    assert_problem(again, "badNonce")
    assert again.headers["Replay-Nonce"] not in (nonce, first.headers["Replay-Nonce"])


def test_a_nonce_is_used_up_by_a_request_that_fails_after_the_nonce_check(acme):
    key = new_key()
    url = acme.url("/acme/new-account")
    nonce = acme.nonce()
    jws = sign(key, {"termsOfServiceAgreed": True}, url, nonce)
    forged = {**jws, "payload": b64(b'{"termsOfServiceAgreed": false}')}
    assert_problem(acme.send(url, forged), "malformed")
    assert_problem(acme.send(url, jws), "badNonce")


# The url header (RFC 8555 §6.4) -------------------------------------------------------------


def _other_port(url: str) -> str:
    host, _, rest = url.removeprefix("http://").partition("/")
    name, _, port = host.partition(":")
    return f"http://{name}:{int(port) + 1}/{rest}"


URLS: dict[str, tuple[Callable[[str], Any], str]] = {
    "other_resource": (lambda u: u.replace("new-account", "new-order"), "unauthorized"),
    "https_scheme": (lambda u: u.replace("http://", "https://"), "unauthorized"),
    "other_host": (lambda u: u.replace("127.0.0.1", "localhost"), "unauthorized"),
    "other_port": (_other_port, "unauthorized"),
    "trailing_slash": (lambda u: u + "/", "unauthorized"),
    "query_string": (lambda u: u + "?x=1", "unauthorized"),
    "fragment": (lambda u: u + "#x", "unauthorized"),
    "upper_case_scheme": (lambda u: u.replace("http://", "HTTP://"), "unauthorized"),
    "percent_encoded_path": (lambda u: u.replace("new-account", "new-%61ccount"), "unauthorized"),
    "path_only": (lambda u: "/acme/new-account", "unauthorized"),
    "missing": (lambda u: None, "malformed"),
    "not_a_string": (lambda u: [u], "malformed"),
}


@pytest.mark.parametrize("case", URLS)
def test_url_header_must_be_exactly_the_request_url(acme, case):
    change, kind = URLS[case]
    url = acme.url("/acme/new-account")
    jws = acme.jws(
        url, new_key(), {"termsOfServiceAgreed": True}, extra_header={"url": change(url)}
    )
    assert_problem(acme.send(url, jws), kind)


# Algorithms (RFC 8555 §6.2) -------------------------------------------------------------------


ALGS: dict[str, tuple[Any, str]] = {
    "none": ("none", "badSignatureAlgorithm"),
    "HS256": ("HS256", "badSignatureAlgorithm"),
    "RS1": ("RS1", "badSignatureAlgorithm"),
    "EdDSA": ("EdDSA", "badSignatureAlgorithm"),
    "lower_case_es256": ("es256", "badSignatureAlgorithm"),
    "RS256_with_an_ec_key": ("RS256", "badSignatureAlgorithm"),
    "ES384_with_a_p256_key": ("ES384", "badSignatureAlgorithm"),
    "missing": (None, "malformed"),
    "empty": ("", "malformed"),
    "not_a_string": (256, "malformed"),
}


@pytest.mark.parametrize("case", ALGS)
def test_unaccepted_algorithms_get_bad_signature_algorithm_with_the_list(acme, case):
    alg, kind = ALGS[case]
    url = acme.url("/acme/new-account")
    jws = acme.jws(url, new_key(), {"termsOfServiceAgreed": True}, extra_header={"alg": alg})
    body = assert_problem(acme.send(url, jws), kind)
    if kind == "badSignatureAlgorithm":
        assert "ES256" in body["algorithms"] and "RS256" in body["algorithms"], body
        assert not {"none", "HS256", "RS1"} & set(body["algorithms"])


@pytest.mark.parametrize("signature", ["", "AAAA"])
def test_alg_none_is_bad_signature_algorithm_with_or_without_a_signature(acme, signature):
    url = acme.url("/acme/new-account")
    jws = acme.jws(url, new_key(), {"termsOfServiceAgreed": True}, extra_header={"alg": "none"})
    body = assert_problem(acme.send(url, {**jws, "signature": signature}), "badSignatureAlgorithm")
    assert body["algorithms"][0] == "ES256"


# Signatures -----------------------------------------------------------------------------------


def test_a_tampered_payload_or_signature_is_malformed(acme):
    key = new_key()
    kid = acme.register(key)
    url = acme.url(kid)
    jws = acme.jws(url, key, {"contact": ["mailto:a@corp.test"]}, kid=kid)
    tampered = {**jws, "payload": b64(json.dumps({"contact": ["mailto:evil@corp.test"]}).encode())}
    assert_problem(acme.send(url, tampered), "malformed")
    sig = bytearray(base64.urlsafe_b64decode(jws["signature"] + "=="))
    sig[5] ^= 1
    jws = acme.jws(url, key, "", kid=kid)
    assert_problem(acme.send(url, {**jws, "signature": b64(bytes(sig))}), "malformed")
    jws = acme.jws(url, key, "", kid=kid)
    assert_problem(acme.send(url, {**jws, "signature": jws["signature"][:40]}), "malformed")
    jws = acme.jws(url, key, "", kid=kid)
    signing_input = f"{jws['protected']}.{jws['payload']}".encode()
    der = key.sign(signing_input, ec.ECDSA(hashes.SHA256()))  # DER, not r‖s (RFC 7518 §3.4)
    assert_problem(acme.send(url, {**jws, "signature": b64(der)}), "malformed")
    # The account was not changed by any of it.
    current = acme.post(url, key, "", kid=kid)
    assert current.status_code == 200 and current.json()["contact"] == []


def test_jwk_of_one_key_signed_by_another_is_malformed(acme):
    url = acme.url("/acme/new-account")
    other = jwk_of(new_key().public_key())
    jws = acme.jws(url, new_key(), {"termsOfServiceAgreed": True}, extra_header={"jwk": other})
    assert_problem(acme.send(url, jws), "malformed")


# jwk and kid ----------------------------------------------------------------------------------


@pytest.fixture
def accounts(acme: Client) -> dict[str, Any]:
    """Three accounts: mine, a victim's and a deactivated one (with their keys)."""
    out: dict[str, Any] = {}
    for name in ("mine", "victim", "gone"):
        key = new_key()
        out[name] = (key, acme.register(key))
    key, kid = out["gone"]
    done = acme.post(kid, key, {"status": "deactivated"}, kid=kid)
    assert done.status_code == 200 and done.json()["status"] == "deactivated"
    return out


KIDS: dict[str, tuple[str, Callable[[Client, dict[str, Any]], tuple[Any, dict[str, Any]]], str]] = {
    # name: (path, (client, accounts) → (key, sign() options), expected kind)
    "jwk_and_kid": (
        "/acme/new-order",
        lambda c, a: (
            a["mine"][0],
            {"kid": a["mine"][1], "extra_header": {"jwk": jwk_of(a["mine"][0].public_key())}},
        ),
        "malformed",
    ),
    "neither_jwk_nor_kid": (
        "/acme/new-order",
        lambda c, a: (a["mine"][0], {"extra_header": {"jwk": None}}),
        "malformed",
    ),
    "kid_on_new_account": (
        "/acme/new-account",
        lambda c, a: (a["mine"][0], {"kid": a["mine"][1]}),
        "malformed",
    ),
    "jwk_on_new_order": ("/acme/new-order", lambda c, a: (a["mine"][0], {}), "malformed"),
    # RFC 8555 names no type for a signature that does not verify; like every JWS whose
    # signature fails, it is malformed (and tells nothing about the victim's account).
    "kid_of_another_account_signed_with_my_key": (
        "/acme/new-order",
        lambda c, a: (a["mine"][0], {"kid": a["victim"][1]}),
        "malformed",
    ),
    "kid_of_a_deactivated_account": (
        "/acme/new-order",
        lambda c, a: (a["gone"][0], {"kid": a["gone"][1]}),
        "unauthorized",
    ),
    "kid_of_an_account_that_does_not_exist": (
        "/acme/new-order",
        lambda c, a: (a["mine"][0], {"kid": c.url("/acme/acct/99999999")}),
        "accountDoesNotExist",
    ),
    "kid_with_a_huge_account_number": (
        "/acme/new-order",
        lambda c, a: (a["mine"][0], {"kid": c.url("/acme/acct/" + "9" * 40)}),
        "accountDoesNotExist",
    ),
    "kid_with_a_32_bit_overflowing_account_number": (
        "/acme/new-order",
        lambda c, a: (a["mine"][0], {"kid": c.url("/acme/acct/2147483648")}),
        "accountDoesNotExist",
    ),
    "kid_with_a_leading_zero": (
        "/acme/new-order",
        lambda c, a: (a["mine"][0], {"kid": a["mine"][1].replace("/acct/", "/acct/0")}),
        "accountDoesNotExist",
    ),
    "kid_with_a_trailing_slash": (
        "/acme/new-order",
        lambda c, a: (a["mine"][0], {"kid": a["mine"][1] + "/"}),
        "accountDoesNotExist",
    ),
    "kid_of_another_server": (
        "/acme/new-order",
        lambda c, a: (a["mine"][0], {"kid": "https://ca.example/acme/acct/1"}),
        "malformed",
    ),
    "kid_as_a_path": (
        "/acme/new-order",
        lambda c, a: (a["mine"][0], {"kid": "/acme/acct/1"}),
        "malformed",
    ),
    "kid_not_a_string": (
        "/acme/new-order",
        lambda c, a: (a["mine"][0], {"kid": "x", "extra_header": {"kid": 1}}),
        "malformed",
    ),
}


@pytest.mark.parametrize("case", KIDS)
def test_jwk_and_kid_rules(acme, accounts, case):
    path, make, kind = KIDS[case]
    key, options = make(acme, accounts)
    payload = {"termsOfServiceAgreed": True, "identifiers": [{"type": "dns", "value": "k.test"}]}
    resp = acme.post(path, key, payload, **options)
    assert_problem(resp, kind)


def _signed(key: PrivateKey, header: dict[str, Any], payload: Any, alg: str) -> dict[str, str]:
    return flattened(key, json.dumps(header).encode(), json.dumps(payload).encode(), alg)


def _jwk_with(key: PrivateKey, **members: Any) -> dict[str, Any]:
    return {**jwk_of(key.public_key()), **members}


def _k256() -> tuple[PrivateKey, dict[str, Any]]:
    key = ec.generate_private_key(ec.SECP256K1())
    nums = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "secp256k1", "x": b64(nums.x.to_bytes(32, "big"))}
    return key, {**jwk, "y": b64(nums.y.to_bytes(32, "big"))}


def _off_curve() -> tuple[PrivateKey, dict[str, Any]]:
    key = new_key()
    jwk = jwk_of(key.public_key())
    y = bytearray(base64.urlsafe_b64decode(jwk["y"] + "="))
    y[-1] ^= 1
    return key, {**jwk, "y": b64(bytes(y))}


def _rsa(bits: int, **members: Any) -> tuple[PrivateKey, dict[str, Any]]:
    key = rsa.generate_private_key(65537, bits)
    return key, _jwk_with(key, **members)


def _ed25519() -> tuple[PrivateKey, dict[str, Any]]:
    pub = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return new_key(), {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}


JWKS: dict[str, tuple[Callable[[], tuple[PrivateKey, Any]], str, str]] = {
    # name: (→ (signing key, jwk), alg, expected kind)
    "private_member_d": (
        lambda: (k := new_key(), _jwk_with(k, d=b64(b"\x01" * 32))),
        "ES256",
        "badPublicKey",
    ),
    "curve_secp256k1": (_k256, "ES256", "badPublicKey"),
    "point_not_on_the_curve": (_off_curve, "ES256", "badPublicKey"),
    "rsa_1024_bits": (lambda: _rsa(1024), "RS256", "badPublicKey"),
    "rsa_exponent_1": (lambda: _rsa(2048, e="AQ"), "RS256", "badPublicKey"),
    "kty_oct": (lambda: (new_key(), {"kty": "oct", "k": "AAAA"}), "ES256", "badPublicKey"),
    "kty_okp_ed25519": (_ed25519, "ES256", "badPublicKey"),
    "coordinates_not_base64url": (
        lambda: (k := new_key(), _jwk_with(k, x="!!!")),
        "ES256",
        "badPublicKey",
    ),
    "jwk_not_an_object": (lambda: (new_key(), "a-key"), "ES256", "malformed"),
}


@pytest.mark.parametrize("case", JWKS)
def test_unacceptable_account_keys_are_refused(acme, case):
    make, alg, kind = JWKS[case]
    key, jwk = make()
    url = acme.url("/acme/new-account")
    header = {"alg": alg, "nonce": acme.nonce(), "url": url, "jwk": jwk}
    assert_problem(acme.send(url, _signed(key, header, {"termsOfServiceAgreed": True}, alg)), kind)


NEW_ACCOUNT_PAYLOADS: list[tuple[str, dict[str, Any], str]] = [
    ("contact_not_a_list", {"contact": "mailto:a@corp.test"}, "malformed"),
    ("contact_of_numbers", {"contact": [1, 2]}, "malformed"),
    ("contact_too_many", {"contact": [f"mailto:{i}@corp.test" for i in range(11)]}, "malformed"),
    ("contact_tel", {"contact": ["tel:+4912345"]}, "unsupportedContact"),
    (
        "contact_huge_address",
        {"contact": ["mailto:" + "a" * 5000 + "@corp.test"]},
        "invalidContact",
    ),
    ("contact_with_nul", {"contact": ["mailto:a\u0000b@corp.test"]}, "invalidContact"),
    ("contact_with_headers", {"contact": ["mailto:a@corp.test?bcc=b@corp.test"]}, "invalidContact"),
    ("tos_agreed_a_string", {"termsOfServiceAgreed": "yes"}, "malformed"),
    ("only_return_existing_a_number", {"onlyReturnExisting": 1}, "malformed"),
]


@pytest.mark.parametrize(
    "payload,kind",
    [(p, k) for _, p, k in NEW_ACCOUNT_PAYLOADS],
    ids=[i for i, _, _ in NEW_ACCOUNT_PAYLOADS],
)
def test_new_account_payload_abuse(acme, payload, kind):
    resp = acme.post("/acme/new-account", new_key(), {"termsOfServiceAgreed": True, **payload})
    assert_problem(resp, kind)


def _dns(*values: Any) -> dict[str, Any]:
    return {"identifiers": [{"type": "dns", "value": v} for v in values]}


NEW_ORDER_PAYLOADS: list[tuple[str, dict[str, Any], str]] = [
    ("no_identifiers", {}, "malformed"),
    ("identifiers_an_object", {"identifiers": {"type": "dns", "value": "a.test"}}, "malformed"),
    ("too_many_identifiers", _dns(*(f"n{i}.acme.test" for i in range(101))), "malformed"),
    ("value_not_a_string", _dns(42), "malformed"),
    (
        "identifier_with_extra_member",
        {"identifiers": [{"type": "dns", "value": "a.test", "x": 1}]},
        "malformed",
    ),
    ("identifier_without_value", {"identifiers": [{"type": "dns"}]}, "malformed"),
    ("name_too_long", _dns("a" * 300 + ".test"), "rejectedIdentifier"),
    ("label_too_long", _dns("a" * 64 + ".test"), "rejectedIdentifier"),
    ("empty_label", _dns("a..acme.test"), "rejectedIdentifier"),
    ("name_with_nul", _dns("a\u0000b.acme.test"), "rejectedIdentifier"),
    ("u_label", _dns("bücher.acme.test"), "rejectedIdentifier"),
    ("ip_as_dns", _dns("10.1.2.3"), "rejectedIdentifier"),
    ("ip_with_prefix", {"identifiers": [{"type": "ip", "value": "10.0.0.0/8"}]}, "malformed"),
    ("profile_not_a_string", {**_dns("p.acme.test"), "profile": 5}, "malformed"),
    ("not_after", {**_dns("p.acme.test"), "notAfter": "2099-01-01T00:00:00Z"}, "malformed"),
]


@pytest.mark.parametrize(
    "payload,kind",
    [(p, k) for _, p, k in NEW_ORDER_PAYLOADS],
    ids=[i for i, _, _ in NEW_ORDER_PAYLOADS],
)
def test_new_order_payload_abuse(acme, accounts, payload, kind):
    key, kid = accounts["mine"]
    assert_problem(acme.post("/acme/new-order", key, payload, kid=kid), kind)


def _inner(key: PrivateKey, payload: Any, url: str, **kw: Any) -> bytes:
    """The inner JWS of a key change (RFC 8555 §7.3.5): signed by the new key, no nonce."""
    return encode(sign(key, payload, url, nonce=None, **kw))


KEY_CHANGES: dict[str, tuple[Callable[[dict[str, Any], str], bytes], str]] = {
    # name: ((accounts, key-change URL) → the outer payload, expected kind)
    "payload_not_a_jws": (lambda a, u: b'{"account": "x"}', "malformed"),
    "inner_with_kid": (
        lambda a, u: _inner(new_key(), {}, u, kid=a["mine"][1]),
        "malformed",
    ),
    "inner_with_nonce": (
        lambda a, u: encode(sign(new_key(), {"account": a["mine"][1]}, u, nonce="abc")),
        "malformed",
    ),
    "inner_other_url": (
        lambda a, u: _inner(new_key(), {"account": a["mine"][1]}, u + "/x"),
        "unauthorized",
    ),
    "inner_alg_none": (
        lambda a, u: _inner(new_key(), {"account": a["mine"][1]}, u, extra_header={"alg": "none"}),
        "badSignatureAlgorithm",
    ),
    "inner_signed_by_another_key": (
        lambda a, u: _inner(new_key(), {}, u, extra_header={"jwk": jwk_of(new_key().public_key())}),
        "malformed",
    ),
    "inner_weak_new_key": (
        lambda a, u: _inner(rsa.generate_private_key(65537, 1024), {}, u),
        "badPublicKey",
    ),
    "inner_account_of_another": (
        lambda a, u: _inner(
            new_key(),
            {"account": a["victim"][1], "oldKey": jwk_of(a["mine"][0].public_key())},
            u,
        ),
        "unauthorized",
    ),
    "no_old_key": (lambda a, u: _inner(new_key(), {"account": a["mine"][1]}, u), "malformed"),
    "old_key_not_the_accounts": (
        lambda a, u: _inner(
            new_key(),
            {"account": a["mine"][1], "oldKey": jwk_of(new_key().public_key())},
            u,
        ),
        "unauthorized",
    ),
    "old_key_with_private_member": (
        lambda a, u: _inner(
            new_key(),
            {"account": a["mine"][1], "oldKey": {**jwk_of(a["mine"][0].public_key()), "d": "AA"}},
            u,
        ),
        "malformed",
    ),
    "new_key_is_the_old_key": (
        lambda a, u: _inner(
            a["mine"][0],
            {"account": a["mine"][1], "oldKey": jwk_of(a["mine"][0].public_key())},
            u,
        ),
        "malformed",
    ),
}


@pytest.mark.parametrize("case", KEY_CHANGES)
def test_key_change_abuse_leaves_the_account_key_alone(acme, accounts, case):
    make, kind = KEY_CHANGES[case]
    key, kid = accounts["mine"]
    url = acme.url("/acme/key-change")
    assert_problem(acme.post(url, key, make(accounts, url), kid=kid), kind)
    assert acme.post(kid, key, "", kid=kid).status_code == 200  # the old key still works


def test_key_change_to_the_key_of_another_account_is_409_with_its_location(acme, accounts):
    key, kid = accounts["mine"]
    victim_key, victim = accounts["victim"]
    url = acme.url("/acme/key-change")
    inner = _inner(victim_key, {"account": kid, "oldKey": jwk_of(key.public_key())}, url)
    resp = acme.post(url, key, inner, kid=kid)
    assert_problem(resp, "malformed", 409)
    assert resp.headers["Location"] == victim


# Bodies ---------------------------------------------------------------------------------------


def _valid(acme: Client) -> dict[str, str]:
    return acme.jws("/acme/new-account", new_key(), {"termsOfServiceAgreed": True})


def _raw_header(acme: Client, text: str) -> dict[str, str]:
    """A JWS whose protected header is ``text`` with NONCE and URL filled in, signed."""
    key = new_key()
    header = text.replace("NONCE", acme.nonce()).replace("URL", acme.url("/acme/new-account"))
    header = header.replace("JWK", json.dumps(jwk_of(key.public_key())))
    return flattened(
        key, header.encode(), json.dumps({"termsOfServiceAgreed": True}).encode(), "ES256"
    )


def _nested_payload(acme: Client) -> dict[str, str]:
    payload = b'{"termsOfServiceAgreed": ' + b"[" * 15000 + b"]" * 15000 + b"}"
    return acme.jws("/acme/new-account", new_key(), payload)


def _general_serialization(acme: Client) -> bytes:
    one, two = _valid(acme), _valid(acme)
    sigs = [{k: j[k] for k in ("protected", "signature")} for j in (one, two)]
    return json.dumps({"payload": one["payload"], "signatures": sigs}).encode()


def _duplicate_member_in_body(acme: Client) -> bytes:
    jws = _valid(acme)
    members = [("protected", jws["protected"])] + list(jws.items())
    return ("{" + ", ".join(f'"{k}": "{v}"' for k, v in members) + "}").encode()


BODIES: dict[str, Callable[[Client], bytes | dict[str, Any]]] = {
    "empty": lambda c: b"",
    "whitespace": lambda c: b"  \r\n ",
    "not_json": lambda c: b"hello",
    "not_utf8": lambda c: b'\xff\xfe{"a": 1}',
    "json_null": lambda c: b"null",
    "json_number": lambda c: b"1e999",
    "json_array": lambda c: b"[]",
    "json_array_of_the_jws": lambda c: json.dumps([_valid(c)]).encode(),
    "compact_serialization": lambda c: ".".join(_valid(c).values()).encode(),
    "compact_serialization_as_json_string": lambda c: json.dumps(
        ".".join(_valid(c).values())
    ).encode(),
    "general_serialization_two_signatures": _general_serialization,
    "unprotected_header": lambda c: {**_valid(c), "header": {"kid": "x"}},
    "no_signature": lambda c: {k: v for k, v in _valid(c).items() if k != "signature"},
    "no_payload_member": lambda c: {k: v for k, v in _valid(c).items() if k != "payload"},
    "protected_not_base64url": lambda c: {**_valid(c), "protected": "!!!*"},
    "protected_with_padding": lambda c: {**_valid(c), "protected": _valid(c)["protected"] + "="},
    "protected_standard_base64": lambda c: {**_valid(c), "protected": "ab+/"},
    "protected_empty": lambda c: {**_valid(c), "protected": ""},
    "protected_a_number": lambda c: {**_valid(c), "protected": 5},
    "protected_json_array": lambda c: {**_valid(c), "protected": b64(b"[1, 2]")},
    "protected_json_string": lambda c: {**_valid(c), "protected": b64(b'"ES256"')},
    "protected_not_utf8": lambda c: {**_valid(c), "protected": b64(b"\xff\xfe\xfd")},
    "payload_not_base64url": lambda c: {**_valid(c), "payload": "***"},
    "payload_not_a_string": lambda c: {**_valid(c), "payload": {"a": 1}},
    "signature_not_base64url": lambda c: {**_valid(c), "signature": "a b"},
    "payload_not_json": lambda c: c.jws("/acme/new-account", new_key(), b"not json"),
    "payload_json_array": lambda c: c.jws("/acme/new-account", new_key(), b"[]"),
    "payload_nan": lambda c: c.jws(
        "/acme/new-account", new_key(), b'{"termsOfServiceAgreed": NaN}'
    ),
    "payload_huge_integer": lambda c: c.jws(
        "/acme/new-account", new_key(), b'{"termsOfServiceAgreed": ' + b"9" * 5000 + b"}"
    ),
    "payload_deeply_nested": _nested_payload,
    "body_deeply_nested": lambda c: b"[" * 60000 + b"]" * 10,
    "body_deeply_nested_objects": lambda c: b'{"a":' * 10000,
    "protected_deeply_nested": lambda c: {
        **_valid(c),
        "protected": b64(b'{"alg": ' + b"[" * 40000),
    },
    "duplicate_member_in_protected_header": lambda c: _raw_header(
        c, '{"alg": "ES256", "alg": "none", "nonce": "NONCE", "url": "URL", "jwk": JWK}'
    ),
    "duplicate_jwk_in_protected_header": lambda c: _raw_header(
        c, '{"alg": "ES256", "nonce": "NONCE", "url": "URL", "jwk": JWK, "jwk": JWK}'
    ),
    "duplicate_member_in_body": _duplicate_member_in_body,
    "crit_header": lambda c: _raw_header(
        c, '{"alg": "ES256", "nonce": "NONCE", "url": "URL", "jwk": JWK, "crit": ["exp"], "exp": 1}'
    ),
    "b64_false_header": lambda c: _raw_header(
        c, '{"alg": "ES256", "nonce": "NONCE", "url": "URL", "jwk": JWK, "b64": false}'
    ),
}


@pytest.mark.parametrize("case", BODIES)
def test_broken_jws_bodies_are_malformed(acme, case):
    assert_problem(acme.send("/acme/new-account", BODIES[case](acme)), "malformed")


def test_a_body_over_max_jws_bytes_is_413(acme):
    body = encode({**_valid(acme), "payload": "A" * MAX_JWS})
    assert_problem(acme.send("/acme/new-account", body), "malformed", 413)


def test_a_chunked_body_over_max_jws_bytes_is_413(acme):
    def chunks() -> Iterator[bytes]:
        for _ in range(64):  # 4 MiB in all, far over the limit and the API's body limit
            yield b"A" * 65536

    assert_problem(acme.send("/acme/new-account", chunks()), "malformed", 413)
    assert_problem(acme.send("/acme/new-account", iter([b"[" * (MAX_JWS + 1)])), "malformed", 413)


def test_a_chunked_body_within_the_limit_is_served(acme):
    body = encode(_valid(acme))
    resp = acme.send("/acme/new-account", iter([body[:10], body[10:]]))
    assert resp.status_code == 201, resp.text


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json", "text/plain", "application/jose", "multipart/form-data"],
)
def test_a_body_that_is_not_application_jose_json_is_415(acme, content_type):
    resp = acme.send("/acme/new-account", _valid(acme), content_type=content_type)
    assert_problem(resp, "malformed", 415)


def test_content_type_parameters_are_accepted(acme):
    resp = acme.send("/acme/new-account", _valid(acme), content_type=JOSE + "; charset=utf-8")
    assert resp.status_code == 201, resp.text


# Methods and paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/acme/new-account"),
        ("GET", "/acme/new-order"),
        ("GET", "/acme/key-change"),
        ("GET", "/acme/acct/1"),
        ("GET", "/acme/order/1"),
        ("GET", "/acme/order/1/finalize"),
        ("GET", "/acme/authz/1"),
        ("GET", "/acme/chall/1"),
        ("GET", "/acme/cert/01"),
        ("PUT", "/acme/new-account"),
        ("DELETE", "/acme/acct/1"),
        ("POST", "/acme/new-nonce"),
        ("POST", "/acme/directory"),
    ],
)
def test_a_wrong_method_is_405_as_an_acme_problem(acme, method, path):
    resp = acme.send(path, b"", method=method)
    assert_problem(resp, "malformed", 405)
    assert "Allow" in resp.headers


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/acme"),
        ("GET", "/acme/"),
        ("GET", "/acme/nope"),
        ("POST", "/acme/nope"),
        ("GET", "/acme/order/abc"),
        ("POST", "/acme/order/abc"),
        ("POST", "/acme/order/-1"),
        ("POST", "/acme/new-account/"),
        ("POST", "/acme/directory/../new-account/x"),
        ("GET", "/acme/%00"),
    ],
)
def test_an_unknown_acme_path_is_404_as_an_acme_problem(acme, method, path):
    assert_problem(acme.send(path, b"", method=method), "malformed", 404)


@pytest.mark.parametrize(
    "path",
    [
        "/acme/order/99999999999999999999999",
        "/acme/order/9223372036854775808",
        "/acme/order/2147483648",
        "/acme/acct/99999999999999999999999",
        "/acme/order/0",
        "/acme/order/99999999999999999999999/finalize",
        "/acme/authz/99999999999999999999999",
        "/acme/chall/99999999999999999999999",
        "/acme/cert/" + "f" * 200,
        "/acme/cert/not-a-serial",
    ],
)
def test_a_signed_request_for_a_resource_that_cannot_exist_is_404(acme, accounts, path):
    key, kid = accounts["mine"]
    assert_problem(acme.post(path, key, "", kid=kid), "malformed", 404)


def test_a_signed_request_for_another_account_url_is_unauthorized(acme, accounts):
    key, kid = accounts["mine"]
    _, victim = accounts["victim"]
    assert_problem(acme.post(victim, key, "", kid=kid), "unauthorized")


# POST-as-GET (RFC 8555 §6.3) ------------------------------------------------------------------


@pytest.fixture
def order(acme: Client) -> dict[str, Any]:
    """A fresh account with one pending order, and the URLs of its resources."""
    key = new_key()
    kid = acme.register(key)
    resp = acme.new_order(key, kid, "pag.acme.test")
    authz_url = resp.json()["authorizations"][0]
    authz = acme.post(authz_url, key, "", kid=kid).json()
    return {
        "key": key,
        "kid": kid,
        "order": resp.headers["Location"],
        "finalize": resp.json()["finalize"],
        "authz": authz_url,
        "chall": authz["challenges"][0]["url"],
        "token": authz["challenges"][0]["token"],
    }


POST_AS_GET: list[tuple[str, str, Any, int | str]] = [
    # (resource, what, payload, expected: a status code or a problem kind)
    ("order", "empty_payload_reads", "", 200),
    ("order", "empty_object_is_not_post_as_get", {}, "malformed"),
    ("order", "json_null", b"null", "malformed"),
    ("authz", "empty_payload_reads", "", 200),
    ("authz", "empty_object_is_not_post_as_get", {}, "malformed"),
    ("authz", "other_status", {"status": "valid"}, "malformed"),
    ("kid", "empty_payload_reads", "", 200),
    ("kid", "empty_object_is_an_update_of_nothing", {}, 200),
    ("kid", "bad_status", {"status": "revoked"}, "malformed"),
    ("chall", "empty_payload_reads_without_starting", "", 200),
    ("chall", "non_empty_object", {"x": 1}, "malformed"),
    ("finalize", "empty_payload", "", "malformed"),
    ("finalize", "empty_object", {}, "malformed"),
    ("/acme/new-order", "empty_payload", "", "malformed"),
    ("/acme/key-change", "empty_payload", "", "malformed"),
]


@pytest.mark.parametrize(
    "resource,payload,expected",
    [(r, p, e) for r, _, p, e in POST_AS_GET],
    ids=[f"{r.rsplit('/', 1)[-1]}-{w}" for r, w, _, _ in POST_AS_GET],
)
def test_post_as_get_is_an_empty_payload_and_only_where_allowed(
    acme, order, resource, payload, expected
):
    url = order.get(resource, resource)
    resp = acme.post(url, order["key"], payload, kid=order["kid"])
    if isinstance(expected, int):
        assert resp.status_code == expected, resp.text
        assert resp.headers["Replay-Nonce"]
    else:
        assert_problem(resp, expected)
    if resource == "chall":
        chall = acme.post(order["chall"], order["key"], "", kid=order["kid"]).json()
        assert chall["status"] == "pending"


def test_a_challenge_answered_20_times_at_once_is_validated_once(acme, order, live_api):
    key, kid = order["key"], order["kid"]
    SERVED[order["token"]] = f"{order['token']}.{thumbprint(jwk_of(key.public_key()))}"
    seq = live_api.audit_seq()
    bodies = [encode(acme.jws(order["chall"], key, {}, kid=kid)) for _ in range(20)]
    results = at_once(order["chall"], bodies)
    assert {r.status_code for r in results} == {200}, [r.text for r in results]
    assert {r.json()["status"] for r in results} <= {"processing", "valid"}
    assert _wait_status(acme, order, {"ready", "invalid"})["status"] == "ready"
    actions = [e.action for e in live_api.audit_since(seq)]
    assert actions.count("acme.authorization.valid") == 1, actions


def test_new_account_with_an_empty_payload_is_malformed(acme):
    assert_problem(acme.post("/acme/new-account", new_key(), ""), "malformed")


# Finalize -------------------------------------------------------------------------------------


def make_csr(names: list[str], key: Any = None) -> bytes:
    key = key or new_key()
    sans = [x509.DNSName(n) for n in names]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def _wait_status(acme: Client, order: dict[str, Any], done: set[str]) -> dict[str, Any]:
    end = time.monotonic() + TIMEOUT
    while time.monotonic() < end:
        body = acme.post(order["order"], order["key"], "", kid=order["kid"]).json()
        if body["status"] in done:
            return dict(body)
        time.sleep(0.1)
    raise AssertionError(f"the order never reached {done}")


def _flipped_signature(der: bytes) -> bytes:
    return der[:-3] + bytes([der[-3] ^ 1]) + der[-2:]


def test_finalize_before_ready_then_bad_csrs_then_one_certificate(acme, order, live_api):
    key, kid, name = order["key"], order["kid"], "pag.acme.test"
    good = make_csr([name])
    early = acme.post(order["finalize"], key, {"csr": b64(good)}, kid=kid)
    assert_problem(early, "orderNotReady", 403)

    jwk = jwk_of(key.public_key())
    SERVED[order["token"]] = f"{order['token']}.{thumbprint(jwk)}"
    assert acme.post(order["chall"], key, {}, kid=kid).status_code == 200
    assert _wait_status(acme, order, {"ready", "invalid"})["status"] == "ready"

    cases: list[tuple[str, Any, str]] = [
        ("no csr", {}, "malformed"),
        ("csr not a string", {"csr": 5}, "malformed"),
        ("csr empty", {"csr": ""}, "malformed"),
        ("csr garbage base64", {"csr": "!!!!"}, "badCSR"),
        ("csr non-ascii", {"csr": "ééé"}, "badCSR"),
        ("csr not DER", {"csr": b64(b"this is not a CSR")}, "badCSR"),
        ("csr truncated", {"csr": b64(good[:-20])}, "badCSR"),
        ("csr signature broken", {"csr": b64(_flipped_signature(good))}, "badCSR"),
        ("csr extra name", {"csr": b64(make_csr([name, "extra.acme.test"]))}, "badCSR"),
        ("csr other name", {"csr": b64(make_csr(["other.acme.test"]))}, "badCSR"),
        ("csr with the account key", {"csr": b64(make_csr([name], key))}, "badCSR"),
        (
            "csr with a 1024-bit key",
            {"csr": b64(make_csr([name], rsa.generate_private_key(65537, 1024)))},
            "badCSR",
        ),
        ("csr huge", {"csr": "A" * 40000}, "badCSR"),
    ]
    for what, payload, kind in cases:
        resp = acme.post(order["finalize"], key, payload, kid=kid)
        assert resp.status_code < 500, (what, resp.text)
        assert_problem(resp, kind)
    assert _wait_status(acme, order, {"ready"})["status"] == "ready"  # still finalizable

    before = live_api.counts()["certificates"]
    done = acme.post(order["finalize"], key, {"csr": b64(good)}, kid=kid)
    assert done.status_code == 200, done.text
    body = _wait_status(acme, order, {"valid"})
    assert live_api.counts()["certificates"] == before + 1
    again = acme.post(order["finalize"], key, {"csr": b64(good)}, kid=kid)
    assert_problem(again, "orderNotReady", 403)

    cert = acme.post(body["certificate"], key, "", kid=kid)
    assert cert.status_code == 200 and cert.headers["Content-Type"].startswith(
        "application/pem-certificate-chain"
    )
    assert len(x509.load_pem_x509_certificates(cert.content)) == 2
    assert_problem(acme.post(body["certificate"], key, {}, kid=kid), "malformed")
    other_key = new_key()
    other = acme.register(other_key)
    assert_problem(acme.post(body["certificate"], other_key, "", kid=other), "malformed", 404)


# Deactivated accounts -------------------------------------------------------------------------


def test_a_deactivated_account_can_do_nothing_more(acme, order, live_api):
    key, kid = order["key"], order["kid"]
    gone = acme.post(kid, key, {"status": "deactivated"}, kid=kid)
    assert gone.status_code == 200 and gone.json()["status"] == "deactivated"
    seq = live_api.audit_seq()
    new_jwk_key = new_key()
    inner = sign(
        new_jwk_key,
        {"account": kid, "oldKey": jwk_of(key.public_key())},
        acme.url("/acme/key-change"),
        nonce=None,
    )
    requests_of_the_account: list[tuple[str, Any]] = [
        (kid, ""),
        (kid, {"contact": ["mailto:x@corp.test"]}),
        (kid, {"status": "deactivated"}),
        ("/acme/new-order", {"identifiers": [{"type": "dns", "value": "x.acme.test"}]}),
        (order["order"], ""),
        (order["authz"], ""),
        (order["authz"], {"status": "deactivated"}),
        (order["chall"], {}),
        (order["finalize"], {"csr": b64(make_csr(["pag.acme.test"]))}),
        ("/acme/key-change", json.dumps(inner).encode()),
    ]
    for url, payload in requests_of_the_account:
        assert_problem(acme.post(url, key, payload, kid=kid), "unauthorized", 403)
    for payload in ({"termsOfServiceAgreed": True}, {"onlyReturnExisting": True}):
        assert_problem(acme.post("/acme/new-account", key, payload), "unauthorized", 403)
    # Nothing changed: no event but (if any) the denials themselves.
    changes = [e.action for e in live_api.audit_since(seq) if "denied" not in e.action]
    assert changes == []


# Afterwards -----------------------------------------------------------------------------------


def test_after_all_the_abuse_the_server_works_logged_no_error_and_the_audit_chain_verifies(
    live_api,
):
    key = jose.JWKEC(key=new_key())
    net = acme_client.ClientNetwork(key, alg=jose.ES256, user_agent="hsmca-tests", timeout=15)
    directory = acme_client.ClientV2.get_directory(live_api.url("/acme/directory"), net)
    client = acme_client.ClientV2(directory, net)
    client.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
    csr = x509.load_der_x509_csr(make_csr(["after.acme.test"]))
    orderr = client.new_order(csr.public_bytes(serialization.Encoding.PEM))
    for authzr in orderr.authorizations:
        chall = next(c for c in authzr.body.challenges if isinstance(c.chall, challenges.HTTP01))
        response, validation = chall.response_and_validation(key)
        SERVED[chall.chall.encode("token")] = validation
        client.answer_challenge(chall, response)
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=TIMEOUT)
    done = client.poll_and_finalize(orderr, deadline)
    assert done.body.status == messages.STATUS_VALID and done.fullchain_pem

    log = live_api.server.log_text(live_api.server._log_mark)
    assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]
    assert live_api.server.alive()
    assert live_api.verify_audit_chain() > 0
