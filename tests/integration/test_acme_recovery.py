"""ACME crash recovery (``ca/acme/recovery.py``, the scheduler's ``acme-recover`` job).

A ``kill -9`` leaves only database rows behind, so each test builds exactly the rows a worker
killed between two steps leaves, runs the recovery, and checks the outcome: nothing issued
twice, no stored certificate lost, the client able to carry on, every change audited.
"""

from __future__ import annotations

import http.server
import threading
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from helpers import make_csr
from sqlalchemy import update

from ca.acme import accounts, orders, recovery
from ca.acme.jws import jwk_of, thumbprint
from ca.audit import verify_chain
from ca.authority import Authority
from ca.config import AcmeConfig
from ca.issuance import IssuanceRequest, issue, recover_intents
from ca.store import acme as store
from ca.store import tables as t

pytestmark = [pytest.mark.hsm, pytest.mark.db]

LATER = recovery.FINALIZE_PATIENCE + timedelta(seconds=1)


def ready_order(auth, name: str):
    """An account and a ready order for ``name`` (its authorization marked valid)."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = jwk_of(key.public_key())
    acct = accounts.find_or_create(auth.db, auth.now(), jwk, thumbprint(jwk), [], True).account
    order = orders.create_order(auth, acct, [{"type": "dns", "value": name}], "server")
    with auth.db.write() as conn:
        conn.execute(
            update(t.AcmeAuthorization)
            .where(t.AcmeAuthorization.order_id == order.id)
            .values(status="valid")
        )
    order = orders.refresh_order(auth.db, order, auth.now())
    assert order.status == "ready"
    return acct, order


def crash_after_processing(auth, order) -> None:
    """The rows a finalize leaves when killed right after winning ready → processing."""
    with auth.db.write() as conn:
        assert store.move_order(conn, order.id, "ready", "processing", processing_since=auth.now())


def test_an_order_cut_short_before_issuance_goes_back_to_ready_and_finalizes_once(ca_env):
    auth = ca_env.auth
    acct, order = ready_order(auth, "crash1.acme.test")
    crash_after_processing(auth, order)

    # Within the patience a finalize may still be running: nothing moves.
    assert not recovery.run_once(auth, auth.now()).orders_ready
    assert store.get_order(auth.db, order.id).status == "processing"

    report = recovery.run_once(auth, auth.now() + LATER)
    assert report.orders_ready == (order.id,) and not report.orders_valid
    assert store.get_order(auth.db, order.id).status == "ready"
    (event,) = auth.db.audit_events("acme.order.recovered")
    assert event.subject == f"acme-order:{order.id}" and event.details["status"] == "ready"

    done = orders.finalize(auth, acct, order, make_csr(["crash1.acme.test"], der=True))
    assert done.status == "valid" and done.certificate_serial
    with auth.db.read() as conn:
        since = auth.now() - timedelta(hours=1)
        assert store.certificates_of_order(conn, order.id, since) == [done.certificate_serial]
    entries = auth.db.audit_events()
    assert verify_chain(entries) == len(entries)


def test_an_order_whose_certificate_was_stored_becomes_valid_with_it(ca_env):
    auth = ca_env.auth
    acct, order = ready_order(auth, "crash2.acme.test")
    crash_after_processing(auth, order)
    # The worker stored the certificate, then died before moving the order to valid.
    issued = issue(
        auth,
        IssuanceRequest(
            csr=make_csr(["crash2.acme.test"], der=True),
            profile="server",
            requester=f"acme:{acct.id}",
            metadata={"acme_order": str(order.id)},
        ),
    )
    report = recovery.run_once(auth, auth.now() + LATER)
    assert report.orders_valid == (order.id,)
    current = store.get_order(auth.db, order.id)
    assert (current.status, current.certificate_serial) == ("valid", issued.serial)
    (event,) = auth.db.audit_events("acme.order.recovered")
    assert event.details == {"status": "valid", "serial": issued.serial}
    # A second pass changes nothing more.
    assert not recovery.run_once(auth, auth.now() + LATER).orders_valid


def test_an_order_waits_while_its_issuance_intent_is_pending(ca_env):
    auth = ca_env.auth
    acct, order = ready_order(auth, "crash3.acme.test")
    crash_after_processing(auth, order)
    # Killed between recording the intent and storing the certificate.
    with auth.db.write() as conn:
        conn.execute(
            t.IssuanceIntent.__table__.insert().values(
                serial="7f" * 16,
                issuer_name="issuing",
                profile="server",
                requester=f"acme:{acct.id}",
                request_sha256="0" * 64,
                details="{}",
                state="pending",
                created_at=auth.now(),
            )
        )
    assert not recovery.run_once(auth, auth.now() + LATER)
    assert store.get_order(auth.db, order.id).status == "processing"
    assert recover_intents(auth) == ["7f" * 16]
    assert recovery.run_once(auth, auth.now() + LATER).orders_ready == (order.id,)


def test_expired_orders_and_authorizations_are_marked(ca_env):
    auth = ca_env.auth
    _, order = ready_order(auth, "old.acme.test")
    later = order.expires + timedelta(seconds=1)
    report = recovery.run_once(auth, later)
    assert (report.orders_expired, report.authorizations_expired) == (1, 1)
    current = store.get_order(auth.db, order.id)
    assert current.status == "invalid" and "expired" in current.error["detail"]
    assert store.get_authz(auth.db, current.authz_ids[0]).status == "expired"


def test_a_challenge_left_processing_by_a_dead_worker_is_validated_again(ca_env):
    # The client is still serving its key authorization; the worker that was checking it died.
    answers: dict[str, str] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = answers.get(self.path.rsplit("/", 1)[-1], "").encode()
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        acme = AcmeConfig(
            validation_resolve_to="127.0.0.1", validation_http01_port=server.server_address[1]
        )
        auth = Authority(
            config=ca_env.config.model_copy(update={"acme": acme}),
            db=ca_env.auth.db,
            keys=ca_env.auth.keys,
        )
        key = ec.generate_private_key(ec.SECP256R1())
        jwk = jwk_of(key.public_key())
        acct = accounts.find_or_create(auth.db, auth.now(), jwk, thumbprint(jwk), [], True).account
        order = orders.create_order(
            auth, acct, [{"type": "dns", "value": "stuck.acme.test"}], "server"
        )
        authz = store.get_authz(auth.db, order.authz_ids[0])
        (ch,) = [c for c in authz.challenges if c.type == "http-01"]
        answers[ch.token] = orders.key_authorization(ch.token, acct.key_thumbprint)
        started = orders.start_challenge(auth, authz, ch)  # … and then the worker was killed
        assert started.challenge.status == "processing"

        assert not recovery.run_once(auth, auth.now()).challenges_rerun  # may still be running
        later = auth.now() + recovery.validation_patience(acme.validation_timeout_seconds)
        report = recovery.run_once(auth, later + timedelta(seconds=1))
        assert report.challenges_rerun == (ch.id,)
        assert store.get_challenge(auth.db, ch.id).status == "valid"
        assert orders.refresh_order(auth.db, order, auth.now()).status == "ready"
        assert [e.subject for e in auth.db.audit_events("acme.authorization.valid")] == [
            f"acme-authz:{authz.id}"
        ]
    finally:
        server.shutdown()
        server.server_close()
