"""External account binding, the bound account acting as its API client, rate limits and the
account's orders list, against a real gunicorn server with certbot's ``acme`` library.

The server requires EAB (``[acme] require_eab``) and allows two orders per account per hour.
Keys are made with the ``hsmca`` command, as an operator would. The per-IP account limit is
tested through Flask's test client, which can send from several addresses.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import josepy as jose
import pytest
import requests
from acme import challenges, messages
from acme import client as acme_client
from acme import errors as acme_errors
from acmejws import encode, sign
from acmetools import http01_config, http01_server
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from helpers import make_csr

from ca.authority import Authority
from ca.clients import disable_client
from ca.config import AcmeConfig
from ca.store import acme as store
from web import create_app

pytestmark = [pytest.mark.hsm, pytest.mark.db]

HSMCA = str(Path(sys.executable).parent / "hsmca")
ERR = "urn:ietf:params:acme:error:"
JOSE = {"Content-Type": "application/jose+json"}
#: token → what the challenge server answers for it.
SERVED: dict[str, str] = {}


@pytest.fixture(scope="module")
def challenge_server() -> Iterator[int]:
    with http01_server(SERVED) as port:
        yield port


@pytest.fixture(scope="module")
def live_config_extra(challenge_server: int) -> str:
    return http01_config(
        challenge_server,
        "require_eab = true",
        "orders_per_account_per_hour = 2",
        "new_accounts_per_ip_per_hour = 0",
    )


# Helpers ---------------------------------------------------------------------------------------


def cli(live_api, *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HSMCA_", "SOFTHSM2_CONF"))}
    return subprocess.run(
        [HSMCA, "--data-dir", str(live_api.env.data_dir), *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def eab_key(live_api, client: str) -> tuple[str, str]:
    """``hsmca acme eab create --client CLIENT``: (key id, HMAC key)."""
    proc = cli(live_api, "acme", "eab", "create", "--client", client)
    assert proc.returncode == 0, proc.stderr
    kid = re.search(r"^key id:\s+(\S+)$", proc.stdout, re.M)
    hmac_key = re.search(r"^hmac key:\s+(\S+)$", proc.stdout, re.M)
    assert kid and hmac_key, proc.stdout
    return kid.group(1), hmac_key.group(1)


def acme_for(live_api) -> tuple[acme_client.ClientV2, jose.JWKEC]:
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    net = acme_client.ClientNetwork(key, alg=jose.ES256, user_agent="hsmca-tests", timeout=30)
    directory = acme_client.ClientV2.get_directory(live_api.url("/acme/directory"), net)
    return acme_client.ClientV2(directory, net), key


def register(acme, key, kid: str | None, hmac_key: str | None) -> messages.RegistrationResource:
    eab = None
    if kid is not None:
        eab = messages.ExternalAccountBinding.from_data(
            account_public_key=key.public_key(),
            kid=kid,
            hmac_key=hmac_key,
            directory=acme.directory,
        )
    return acme.new_account(
        messages.NewRegistration.from_data(
            terms_of_service_agreed=True, external_account_binding=eab
        )
    )


def bound_account(live_api, client: str):
    acme, key = acme_for(live_api)
    regr = register(acme, key, *eab_key(live_api, client))
    return acme, key, regr


def validated(acme, key, names: list[str]) -> messages.OrderResource:
    """A new order for ``names`` whose http-01 challenges are answered and valid (ready)."""
    orderr = acme.new_order(make_csr(names))
    for authzr in orderr.authorizations:
        chall = next(c for c in authzr.body.challenges if isinstance(c.chall, challenges.HTTP01))
        response, validation = chall.response_and_validation(key)
        SERVED[chall.chall.encode("token")] = validation
        acme.answer_challenge(chall, response)
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=30)
    return acme.poll_authorizations(orderr, deadline)


def new_order_raw(live_api, acme, key, regr, names: list[str]) -> requests.Response:
    """newOrder sent with requests, to see the whole response (status, headers)."""
    url = acme.directory["newOrder"]
    nonce = requests.head(live_api.url("/acme/new-nonce"), timeout=10).headers["Replay-Nonce"]
    payload = {"identifiers": [{"type": "dns", "value": n} for n in names]}
    body = sign(key.key._wrapped, payload, url, nonce=nonce, kid=regr.uri)
    return requests.post(url, data=encode(body), headers=JOSE, timeout=30)


def post_as_get(live_api, key, kid: str, url: str) -> requests.Response:
    nonce = requests.head(live_api.url("/acme/new-nonce"), timeout=10).headers["Replay-Nonce"]
    body = sign(key.key._wrapped, "", url, nonce=nonce, kid=kid)
    return requests.post(url, data=encode(body), headers=JOSE, timeout=30)


def audit_actions(live_api, seq: int) -> list[tuple[str, str, dict]]:
    return [(e.action, e.subject, e.details) for e in live_api.audit_since(seq)]


# EAB -------------------------------------------------------------------------------------------


def test_cli_key_binds_exactly_one_account_to_the_client(live_api):
    live_api.add_client("binder", ["enroll"])
    seq = live_api.audit_seq()
    kid, hmac_key = eab_key(live_api, "binder")
    acme, key = acme_for(live_api)
    assert acme.directory.meta.external_account_required is True

    regr = register(acme, key, kid, hmac_key)
    account_id = int(regr.uri.rsplit("/", 1)[-1])
    account = store.get_account(live_api.env.auth.db, account_id)
    assert account is not None
    assert account.requester == "binder" and account.eab_key_id == kid
    used = store.get_eab_key(live_api.env.auth.db, kid)
    assert used is not None and used.account_id == account_id and used.used_at is not None

    # The same key again, for another account key: refused, and no account is made.
    other, other_key = acme_for(live_api)
    with pytest.raises(messages.Error) as err:
        register(other, other_key, kid, hmac_key)
    assert err.value.typ == ERR + "unauthorized" and "used" in err.value.detail
    # Without any binding: externalAccountRequired.
    with pytest.raises(messages.Error) as err:
        register(other, other_key, None, None)
    assert err.value.typ == ERR + "externalAccountRequired"
    # The registered key itself still finds its account (no new binding needed).
    net = acme_client.ClientNetwork(key, alg=jose.ES256, user_agent="hsmca-tests", timeout=30)
    fresh = acme_client.ClientV2(acme.directory, net)
    with pytest.raises(acme_errors.ConflictError) as found:  # the library's word for 200
        fresh.new_account(messages.NewRegistration.from_data(only_return_existing=True))
    assert found.value.location == regr.uri

    events = audit_actions(live_api, seq)
    created = [d for a, _, d in events if a == "acme.eab.created"]
    assert created == [{"key_id": kid, "client": "binder", "expires": created[0]["expires"]}]
    bound = [d for a, _, d in events if a == "acme.account.created"]
    assert bound == [bound[0]] and bound[0]["client"] == "binder" and bound[0]["eab_key_id"] == kid
    denied = [d for a, _, d in events if a == "acme.eab.denied"]
    assert len(denied) == 1 and "used" in denied[0]["reason"]
    assert hmac_key not in json.dumps([d for _, _, d in events])  # never audited
    live_api.verify_audit_chain()

    listing = cli(live_api, "acme", "eab", "list")
    assert listing.returncode == 0, listing.stderr
    line = next(ln for ln in listing.stdout.splitlines() if ln.startswith(kid))
    assert "binder" in line and f"used by account {account_id}" in line
    assert hmac_key not in listing.stdout
    accounts = cli(live_api, "acme", "accounts")
    assert any(
        ln.split()[:3] == [str(account_id), "valid", "binder"]
        for ln in accounts.stdout.splitlines()
    ), accounts.stdout


def test_concurrent_new_accounts_with_one_key_bind_exactly_one(live_api):
    live_api.add_client("racer", ["enroll"])
    kid, hmac_key = eab_key(live_api, "racer")
    clients = [acme_for(live_api) for _ in range(4)]
    barrier = threading.Barrier(len(clients))
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt(acme, key) -> None:
        barrier.wait()
        try:
            register(acme, key, kid, hmac_key)
            outcome = "created"
        except messages.Error as exc:
            outcome = exc.typ
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=attempt, args=c) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["created"] + [ERR + "unauthorized"] * 3, outcomes
    bound = [a for a in store.list_accounts(live_api.env.auth.db) if a.eab_key_id == kid]
    assert len(bound) == 1


def test_bad_bindings_are_refused(live_api):
    live_api.add_client("careful", ["enroll"])
    kid, hmac_key = eab_key(live_api, "careful")
    _, wrong_hmac = eab_key(live_api, "careful")
    acme, key = acme_for(live_api)
    for args, kind in (
        ((kid, wrong_hmac), "unauthorized"),  # MAC with another key
        (("no-such-key-id", hmac_key), "unauthorized"),
    ):
        with pytest.raises(messages.Error) as err:
            register(acme, key, *args)
        assert err.value.typ == ERR + kind, args
    # A binding over another account key.
    other = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    eab = messages.ExternalAccountBinding.from_data(
        account_public_key=other.public_key(), kid=kid, hmac_key=hmac_key, directory=acme.directory
    )
    with pytest.raises(messages.Error) as err:
        acme.new_account(
            messages.NewRegistration.from_data(
                terms_of_service_agreed=True, external_account_binding=eab
            )
        )
    assert err.value.typ == ERR + "unauthorized"
    # The key is still unused after all that, and revoking it makes it useless.
    assert store.get_eab_key(live_api.env.auth.db, kid).account_id is None
    seq = live_api.audit_seq()
    revoked = cli(live_api, "acme", "eab", "revoke", kid)
    assert revoked.returncode == 0, revoked.stderr
    assert [a for a, _, _ in audit_actions(live_api, seq)] == ["acme.eab.revoked"]
    with pytest.raises(messages.Error) as err:
        register(acme, key, kid, hmac_key)
    assert err.value.typ == ERR + "unauthorized"


def test_cli_refuses_keys_for_unknown_clients_and_revoking_used_keys(live_api):
    proc = cli(live_api, "acme", "eab", "create", "--client", "nobody")
    assert proc.returncode == 1 and "no client named 'nobody'" in proc.stderr
    live_api.add_client("used-once", ["enroll"])
    acme, key = acme_for(live_api)
    kid, hmac_key = eab_key(live_api, "used-once")
    register(acme, key, kid, hmac_key)
    proc = cli(live_api, "acme", "eab", "revoke", kid)
    assert proc.returncode == 1 and "bound account" in proc.stderr


# Acting as the client --------------------------------------------------------------------------


def test_bound_account_orders_only_what_its_client_may(live_api):
    live_api.add_client("payments", ["enroll"], ["server"], [".payments.test"])
    acme, key, regr = bound_account(live_api, "payments")
    seq = live_api.audit_seq()

    resp = new_order_raw(live_api, acme, key, regr, ["www.example.test", "api.payments.test"])
    assert resp.status_code == 400 and resp.json()["type"] == ERR + "rejectedIdentifier"
    assert "www.example.test" in resp.json()["detail"]
    sub = resp.json()["subproblems"]
    assert [s["identifier"] for s in sub] == [{"type": "dns", "value": "www.example.test"}]
    payload = {"identifiers": [{"type": "dns", "value": "a.payments.test"}], "profile": "client"}
    url = acme.directory["newOrder"]
    nonce = requests.head(live_api.url("/acme/new-nonce"), timeout=10).headers["Replay-Nonce"]
    body = sign(key.key._wrapped, payload, url, nonce=nonce, kid=regr.uri)
    resp = requests.post(url, data=encode(body), headers=JOSE, timeout=30)
    assert resp.json()["type"] == ERR + "invalidProfile", resp.json()
    denied = [d for a, _, d in audit_actions(live_api, seq) if a == "acme.order.denied"]
    assert [d["error"] for d in denied] == ["rejectedIdentifier", "invalidProfile"]
    assert denied[0]["client"] == "payments"
    assert denied[0]["violations"][0]["rule"] == "dns.requester_not_allowed"

    # An allowed name is ordered, validated and issued as the client.
    orderr = validated(acme, key, ["api.payments.test"])
    done = acme.finalize_order(orderr, datetime.datetime.now() + datetime.timedelta(seconds=30))
    assert done.body.status == messages.STATUS_VALID
    cert = x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]
    row = live_api.env.auth.db.get_certificate(format(cert.serial_number, "x"))
    assert row.requester == regr.uri.replace(live_api.url("/acme/acct/"), "acme:")


def test_disabled_client_account_can_no_longer_order_or_finalize(live_api):
    live_api.add_client("leaving", ["enroll"], [], [".leaving.test"])
    acme, key, regr = bound_account(live_api, "leaving")
    ready = validated(acme, key, ["www.leaving.test"])
    disable_client(live_api.env.auth, "leaving", actor="test")
    seq = live_api.audit_seq()
    with pytest.raises(messages.Error) as err:
        acme.begin_finalization(ready)
    assert err.value.typ == ERR + "unauthorized" and "disabled" in err.value.detail
    resp = new_order_raw(live_api, acme, key, regr, ["api.leaving.test"])
    assert resp.status_code == 403 and resp.json()["type"] == ERR + "unauthorized"
    assert acme._post_as_get(ready.uri).json()["status"] == "ready"  # nothing was issued
    denied = [
        (s, d["error"]) for a, s, d in audit_actions(live_api, seq) if a == "acme.order.denied"
    ]
    order_id = ready.uri.rsplit("/", 1)[-1]
    assert denied == [
        (f"acme-order:{order_id}", "unauthorized"),
        ("acme-order:new", "unauthorized"),
    ]


# Rate limits and the orders list ---------------------------------------------------------------


def test_third_order_in_an_hour_is_rate_limited_with_retry_after(live_api):
    live_api.add_client("busy", ["enroll"])
    acme, key, regr = bound_account(live_api, "busy")
    for name in ("one.busy.test", "two.busy.test"):
        assert new_order_raw(live_api, acme, key, regr, [name]).status_code == 201
    seq = live_api.audit_seq()
    resp = new_order_raw(live_api, acme, key, regr, ["three.busy.test"])
    assert resp.status_code == 429
    assert resp.json()["type"] == ERR + "rateLimited"
    assert 3500 <= int(resp.headers["Retry-After"]) <= 3600
    assert resp.headers["Replay-Nonce"]
    denied = [d for a, _, d in audit_actions(live_api, seq) if a == "acme.order.denied"]
    assert [d["error"] for d in denied] == ["rateLimited"]
    # Another account is not affected.
    live_api.add_client("idle", ["enroll"])
    acme2, key2, regr2 = bound_account(live_api, "idle")
    assert new_order_raw(live_api, acme2, key2, regr2, ["one.idle.test"]).status_code == 201


def test_orders_list_shows_the_accounts_own_orders_only(live_api):
    live_api.add_client("lister", ["enroll"])
    acme, key, regr = bound_account(live_api, "lister")
    other, other_key, other_regr = bound_account(live_api, "lister")

    account = acme._post_as_get(regr.uri).json()
    orders_url = account["orders"]
    assert orders_url == regr.uri + "/orders"
    assert post_as_get(live_api, key, regr.uri, orders_url).json() == {"orders": []}

    mine = [new_order_raw(live_api, acme, key, regr, [f"{n}.lister.test"]) for n in ("a", "b")]
    theirs = new_order_raw(live_api, other, other_key, other_regr, ["c.lister.test"])
    resp = post_as_get(live_api, key, regr.uri, orders_url)
    assert resp.status_code == 200
    assert resp.json() == {"orders": [r.headers["Location"] for r in mine]}
    assert 'rel="next"' not in resp.headers["Link"]
    theirs_list = other._post_as_get(other_regr.uri + "/orders").json()
    assert theirs_list == {"orders": [theirs.headers["Location"]]}
    # Another account may not read it.
    resp = post_as_get(live_api, other_key, other_regr.uri, orders_url)
    assert resp.status_code == 403 and resp.json()["type"] == ERR + "unauthorized"


def test_orders_list_pages_with_a_next_link_and_leaves_out_invalid_orders(live_api):
    live_api.add_client("many", ["enroll"])
    acme, key, regr = bound_account(live_api, "many")
    account_id = int(regr.uri.rsplit("/", 1)[-1])
    db = live_api.env.auth.db
    now = live_api.env.auth.now()
    expires = now + datetime.timedelta(days=1)
    ids = []
    with db.write() as conn:  # more orders than a page, bypassing the order limit
        for i in range(103):
            ids.append(
                store.add_order(
                    conn,
                    account_id=account_id,
                    identifiers=[{"type": "dns", "value": f"o{i}.many.test"}],
                    profile="server",
                    expires=expires,
                    authz_expires=expires,
                    now=now,
                    wildcards=[False],
                )
            )
        store.move_order(conn, ids[5], "pending", "invalid")
    listed: list[str] = []
    url = regr.uri + "/orders"
    pages = 0
    while url:
        resp = post_as_get(live_api, key, regr.uri, url)
        assert resp.status_code == 200, resp.text
        listed += resp.json()["orders"]
        pages += 1
        links = requests.utils.parse_header_links(resp.headers["Link"])
        url = next((lk["url"] for lk in links if lk.get("rel") == "next"), "")
    assert pages == 2
    expected = [live_api.url(f"/acme/order/{i}") for i in ids if i != ids[5]]
    assert listed == expected


# Accounts per IP address (Flask test client: it can send from several addresses) --------------


def test_new_accounts_per_ip_are_limited_per_address(ca_env):
    config = ca_env.config.model_copy(update={"acme": AcmeConfig(new_accounts_per_ip_per_hour=2)})
    auth = Authority(config=config, db=ca_env.auth.db, keys=ca_env.auth.keys)
    client = create_app(config, lambda cfg: auth).test_client()
    base = "http://localhost/acme/new-account"

    def new_account(key, ip: str):
        nonce = client.head("/acme/new-nonce").headers["Replay-Nonce"]
        body = sign(key, {"termsOfServiceAgreed": True}, base, nonce=nonce)
        return client.post(
            "/acme/new-account",
            data=encode(body),
            headers=JOSE,
            environ_base={"REMOTE_ADDR": ip},
        )

    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(4)]
    assert new_account(keys[0], "192.0.2.1").status_code == 201
    assert new_account(keys[1], "192.0.2.1").status_code == 201
    limited = new_account(keys[2], "192.0.2.1")
    assert limited.status_code == 429 and limited.json["type"] == ERR + "rateLimited"
    assert 3590 <= int(limited.headers["Retry-After"]) <= 3600
    assert limited.headers["Replay-Nonce"]
    # An existing account is found whatever the limit; another address may still register.
    assert new_account(keys[0], "192.0.2.1").status_code == 200
    assert new_account(keys[3], "2001:db8::1").status_code == 201
    ips = sorted(a.created_ip for a in store.list_accounts(auth.db))
    assert ips == ["192.0.2.1", "192.0.2.1", "2001:db8::1"]
