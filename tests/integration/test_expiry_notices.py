"""Expiry notices end to end: real certificates from the real Authority (SoftHSM token, SQLite and
PostgreSQL), a local HTTP receiver and a local SMTP server (aiosmtpd, STARTTLS with a test
certificate), the job run directly and through ``hsmca scheduler run-once``."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import CaEnv, make_csr

from ca.audit import verify_chain
from ca.authority import Authority
from ca.config import NoticesConfig
from ca.issuance import IssuanceRequest, issue
from ca.notices_job import run_once
from ca.revocation import revoke
from ca.store import acme as acme_store
from ca.store import notices as notice_store

pytestmark = [pytest.mark.hsm, pytest.mark.db]

HSMCA = str(Path(sys.executable).parent / "hsmca")
SECRET = b"receiver-shares-this-secret"


# --- the local receivers -------------------------------------------------------------------------


class Receiver:
    """An HTTP server on 127.0.0.1 recording each POST; answers ``statuses`` in turn, then 200."""

    def __init__(self, statuses: Sequence[int] = ()) -> None:
        self.statuses = list(statuses)
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.posts.append((dict(self.headers.items()), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/expiry?token=t0k3n"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def payloads(self) -> list[dict[str, Any]]:
        """Each POST's JSON, after checking its signature the way docs/expiry-notices.md says."""
        out = []
        for headers, body in self.posts:
            timestamp = headers["X-Hsmca-Timestamp"]
            expected = hmac.new(SECRET, timestamp.encode() + b"." + body, hashlib.sha256)
            signature = headers["X-Hsmca-Signature"]
            assert hmac.compare_digest(signature, "sha256=" + expected.hexdigest()), signature
            assert abs(time.time() - int(timestamp)) < 300
            assert headers["Content-Type"] == "application/json"
            payload = json.loads(body)
            assert headers["X-Hsmca-Notice-Id"] == payload["notice_id"]
            out.append(payload)
        return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1 signed by it (cert, key, CA file)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "notices test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = (directory / "smtp.crt", directory / "smtp.key", directory / "smtp-ca.pem")
    paths[0].write_bytes(cert.public_bytes(pem))
    paths[1].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths[2].write_bytes(ca_cert.public_bytes(pem))
    return paths


class Mailbox:
    """What the local SMTP server accepted."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.envelopes.append(envelope)
        return "250 OK"


def _start_smtp(
    mailbox: Mailbox, tls_dir: Path | None, login: tuple[bytes, bytes] | None
) -> Controller:
    import ssl

    kwargs: dict[str, Any] = {}
    if tls_dir is not None:
        crt, key, _ = _tls_files(tls_dir)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(crt, key)
        kwargs.update(tls_context=context, require_starttls=True)
    if login is not None:

        def authenticator(
            server: Any, session: Any, envelope: Any, mechanism: str, data: Any
        ) -> AuthResult:
            ok = isinstance(data, LoginPassword) and (data.login, data.password) == login
            return AuthResult(success=ok)

        kwargs.update(authenticator=authenticator, auth_required=True)
    controller = Controller(mailbox, hostname="127.0.0.1", port=_free_port(), **kwargs)
    controller.start()
    return controller


# --- the CA side ----------------------------------------------------------------------------------


def _secret_file(env: CaEnv) -> Path:
    path = env.data_dir / "notices.secret"
    path.write_bytes(SECRET + b"\n")
    path.chmod(0o600)
    return path


def notices_auth(env: CaEnv, **values: Any) -> Authority:
    """The env's authority with ``[notices]`` set to ``values`` (enabled, no waits)."""
    settings = {"enabled": True, "webhook_backoff_seconds": 0.0, **values}
    if "webhook_url" in settings:
        settings.setdefault("webhook_secret_file", str(_secret_file(env)))
    config = env.config.model_copy(update={"notices": NoticesConfig.model_validate(settings)})
    return Authority(config=config, db=env.auth.db, keys=env.auth.keys)


def _issue(
    auth: Authority, name: str, days: int, requester: str = "cli:test", owner: str | None = None
) -> str:
    meta = {"owner": owner} if owner else None
    req = IssuanceRequest(make_csr([name]), "server", requester, validity_days=days, metadata=meta)
    return issue(auth, req).serial


def _acme_account(auth: Authority, client: str | None, contact: list[str]) -> int:
    with auth.db.write() as conn:
        return acme_store.add_account(
            conn,
            thumbprint=secrets.token_hex(16),
            jwk_json="{}",
            contact=contact,
            tos_agreed=True,
            now=auth.now(),
            requester=client,
        )


def _events(auth: Authority, action: str, after: int = 0) -> list[Any]:
    return [e for e in auth.db.audit_events(action) if e.seq > after]


def _head(auth: Authority) -> int:
    return max((e.seq for e in auth.db.audit_entries()), default=0)


def _by_owner(payloads: list[dict[str, Any]]) -> dict[tuple[str, int], list[str]]:
    return {
        (p["owner"], p["window_days"]): [c["serial"] for c in p["certificates"]] for p in payloads
    }


# --- the tests ------------------------------------------------------------------------------------


def test_each_owner_gets_one_signed_post_per_window_listing_its_unrenewed_certificates(
    ca_env: CaEnv, receiver: Receiver
) -> None:
    auth = notices_auth(ca_env, webhook_url=receiver.url)
    now = auth.now()
    a1 = _issue(auth, "a1.corp.test", 10, owner="team-a")
    a2 = _issue(auth, "a2.corp.test", 12, requester="team-a")  # no owner given: the requester
    _issue(auth, "far.corp.test", 90, owner="team-a")  # in no window yet
    old = _issue(auth, "r.corp.test", 10, owner="team-a")
    _issue(auth, "r.corp.test", 60, owner="team-a")  # renews the one above
    gone = _issue(auth, "x.corp.test", 10, owner="team-a")
    revoke(auth, gone, "superseded", "test")
    b1 = _issue(auth, "b1.corp.test", 10, owner="team-b")
    bound = _acme_account(auth, "team-b", [])  # an EAB-bound account counts as its client
    b2 = _issue(auth, "b2.corp.test", 11, requester=f"acme:{bound}")
    loose = _acme_account(auth, None, ["mailto:ops@corp.test"])
    c1 = _issue(auth, "c1.corp.test", 9, requester=f"acme:{loose}")
    start = _head(auth)

    results = run_once(auth, now)

    assert all(r.delivered.ok for r in results)
    payloads = receiver.payloads()
    assert _by_owner(payloads) == {
        ("team-a", 14): [a1, a2],
        ("team-b", 14): [b1, b2],
        (f"acme:{loose}", 14): [c1],
    }
    assert len(payloads) == 3  # one POST per owner and window
    assert old not in str(payloads) and gone not in str(payloads)
    sent = _events(auth, "notice.sent", start)
    assert sorted((e.subject, tuple(e.details["serials"])) for e in sent) == sorted(
        (p["owner"], tuple(c["serial"] for c in p["certificates"])) for p in payloads
    )
    # What is audited of the URL is where it points, not its path or query (tokens live there).
    assert {e.details["destination"] for e in sent} == {receiver.url.split("/hooks")[0]}

    assert run_once(auth, now + timedelta(minutes=15)) == []  # each notice goes once
    assert len(receiver.posts) == 3

    # Four days on, a1, b1, b2 and c1 have reached the 7-day window; a2 is still in the 14-day one.
    run_once(auth, now + timedelta(days=4))
    later = receiver.payloads()[3:]
    assert _by_owner(later) == {
        ("team-a", 7): [a1],
        ("team-b", 7): [b1, b2],
        (f"acme:{loose}", 7): [c1],
    }
    with auth.db.read() as conn:
        rows = notice_store.recorded(conn, a1)
    assert [(r["window_days"], r["channel"], r["status"], r["attempts"]) for r in rows] == [
        (14, "webhook", "sent", 1),
        (7, "webhook", "sent", 1),
    ]
    assert run_once(auth, now + timedelta(days=4, minutes=15)) == []
    assert verify_chain(auth.db.audit_entries()) == _head(auth)


def test_a_receiver_that_fails_twice_gets_the_notice_on_the_third_post(ca_env: CaEnv) -> None:
    receiver = Receiver([500, 503])
    try:
        auth = notices_auth(ca_env, webhook_url=receiver.url, webhook_attempts=3)
        serial = _issue(auth, "retry.corp.test", 5, owner="team-a")
        [result] = run_once(auth, auth.now())
        assert result.delivered.ok and result.delivered.attempts == 3
        assert len(receiver.posts) == 3
        bodies = {body for _, body in receiver.posts}
        assert len(bodies) == 1  # the same notice each time, signed afresh
        assert [p["certificates"][0]["serial"] for p in receiver.payloads()] == [serial] * 3
        [event] = auth.db.audit_events("notice.sent")
        assert event.details["attempts"] == 3 and event.details["window_days"] == 7
        assert not auth.db.audit_events("notice.failed")
    finally:
        receiver.stop()


def test_a_dead_receiver_is_audited_once_per_failed_run_and_a_later_run_delivers(
    ca_env: CaEnv,
) -> None:
    receiver = Receiver([503] * 4)  # two failed runs of two POSTs each
    try:
        auth = notices_auth(ca_env, webhook_url=receiver.url, webhook_attempts=2, retry_minutes=15)
        now = auth.now()
        serial = _issue(auth, "dead.corp.test", 3, owner="team-a")
        start = _head(auth)

        [result] = run_once(auth, now)
        assert not result.delivered.ok and "HTTP 503" in result.delivered.error
        [failed] = _events(auth, "notice.failed", start)
        assert failed.details["serials"] == [serial] and failed.details["failures"] == 1
        assert failed.details["error"] == "HTTP 503"

        # Within the wait nothing is tried (and nothing audited), however often the job runs.
        assert run_once(auth, now + timedelta(minutes=1)) == []
        assert run_once(auth, now + timedelta(minutes=14)) == []
        assert len(receiver.posts) == 2

        [again] = run_once(auth, now + timedelta(minutes=16))  # second failed run
        assert not again.delivered.ok
        second = _events(auth, "notice.failed", start)[-1]
        assert second.details["failures"] == 2
        # The wait doubles: 30 minutes after the second failure.
        assert run_once(auth, now + timedelta(minutes=40)) == []

        [ok] = run_once(auth, now + timedelta(minutes=47))  # the receiver works again
        assert ok.delivered.ok
        assert [p["certificates"][0]["serial"] for p in receiver.payloads()][-1] == serial
        assert len(_events(auth, "notice.failed", start)) == 2
        assert len(_events(auth, "notice.sent", start)) == 1
        with auth.db.read() as conn:
            [row] = notice_store.recorded(conn, serial)
        assert (row["status"], row["attempts"], row["next_attempt_at"]) == ("sent", 3, None)
        assert run_once(auth, now + timedelta(hours=8)) == []
        assert verify_chain(auth.db.audit_entries()) == _head(auth)
    finally:
        receiver.stop()


def test_a_dead_receiver_costs_one_notice_of_timeouts_per_run_not_every_owners(
    ca_env: CaEnv,
) -> None:
    receiver = Receiver([503] * 10)
    try:
        auth = notices_auth(ca_env, webhook_url=receiver.url, webhook_attempts=2)
        for owner in ("team-a", "team-b", "team-c"):
            _issue(auth, f"{owner}.corp.test", 10, owner=owner)
        results = run_once(auth, auth.now())
        assert [r.delivered.attempts for r in results] == [2, 0, 0]
        assert len(receiver.posts) == 2
        assert "not tried: HTTP 503" in results[1].delivered.error
        # None is lost: each is a recorded, audited failure, tried again on the retry schedule.
        assert sorted(e.subject for e in auth.db.audit_events("notice.failed")) == [
            "team-a",
            "team-b",
            "team-c",
        ]
    finally:
        receiver.stop()


def test_a_crash_between_delivery_and_record_sends_the_notice_again_with_the_same_id(
    ca_env: CaEnv, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = notices_auth(ca_env, webhook_url=receiver.url)
    now = auth.now()
    _issue(auth, "crash.corp.test", 6, owner="team-a")

    def crash(*_args: Any, **_kwargs: Any) -> None:
        raise KeyboardInterrupt  # as good as kill -9 here: nothing after the POST commits

    with monkeypatch.context() as patch:
        patch.setattr(notice_store, "record_notices", crash)
        with pytest.raises(KeyboardInterrupt):
            run_once(auth, now)
    assert len(receiver.posts) == 1 and not auth.db.audit_events("notice.sent")

    [result] = run_once(auth, now + timedelta(minutes=15))
    assert result.delivered.ok
    first, second = receiver.payloads()
    assert first["notice_id"] == second["notice_id"]  # the receiver can drop the duplicate
    assert len(auth.db.audit_events("notice.sent")) == 1


def test_mail_goes_over_starttls_with_a_login_once_per_owner_and_window(
    ca_env: CaEnv, tmp_path: Path
) -> None:
    mailbox = Mailbox()
    smtp = _start_smtp(mailbox, tmp_path, login=(b"notices", b"mail-pw"))
    try:
        password = ca_env.data_dir / "smtp.pw"
        password.write_text("mail-pw\n")
        password.chmod(0o600)
        auth = notices_auth(
            ca_env,
            smtp_host="127.0.0.1",
            smtp_port=smtp.port,
            smtp_from="pki@corp.test",
            smtp_username="notices",
            smtp_password_file=str(password),
            tls_ca_file=str(tmp_path / "smtp-ca.pem"),
            default_recipients=["pki-team@corp.test"],
            owners={"team-a": {"email": ["a@corp.test", "lead@corp.test"]}},
        )
        now = auth.now()
        a1 = _issue(auth, "m1.corp.test", 10, owner="team-a")
        a2 = _issue(auth, "m2.corp.test", 8, owner="team-a")
        other = _issue(auth, "m3.corp.test", 10, owner="team-z")
        loose = _acme_account(auth, None, ["mailto:ops@corp.test", "tel:+1555"])
        acme = _issue(auth, "m4.corp.test", 10, requester=f"acme:{loose}")
        start = _head(auth)

        results = run_once(auth, now)
        assert [r.delivered.ok for r in results] == [True, True, True], results
        assert len(mailbox.envelopes) == 3
        by_to = {tuple(e.rcpt_tos): message_from_bytes(e.content) for e in mailbox.envelopes}
        mail = by_to[("a@corp.test", "lead@corp.test")]
        assert mail["Subject"] == "[hsmca] 2 certificates of team-a expire within 14 days"
        assert mail["From"] == "pki@corp.test"
        text = mail.get_payload(decode=True).decode()
        assert text.index(a2) < text.index(a1)  # soonest first
        assert other in by_to[("pki-team@corp.test",)].get_payload(decode=True).decode()
        # An ACME account bound to no client: its own mailto: contacts, not the catch-all.
        assert acme in by_to[("ops@corp.test",)].get_payload(decode=True).decode()
        sent = _events(auth, "notice.sent", start)
        assert {e.details["channel"] for e in sent} == {"email"}
        assert all(e.details["result"] == "TLS" for e in sent)
        assert "mail-pw" not in json.dumps([e.details for e in sent])

        assert run_once(auth, now + timedelta(hours=1)) == []
        assert len(mailbox.envelopes) == 3
    finally:
        smtp.stop()


def test_mail_is_not_sent_to_a_server_without_starttls_unless_plain_is_allowed(
    ca_env: CaEnv,
) -> None:
    mailbox = Mailbox()
    smtp = _start_smtp(mailbox, None, login=None)
    try:
        settings = {
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,
            "smtp_from": "pki@corp.test",
            "default_recipients": ["pki-team@corp.test"],
        }
        auth = notices_auth(ca_env, **settings)
        now = auth.now()
        serial = _issue(auth, "plain.corp.test", 10, owner="team-a")
        [result] = run_once(auth, now)
        assert not result.delivered.ok and "offers no STARTTLS" in result.delivered.error
        assert mailbox.envelopes == []
        [failed] = auth.db.audit_events("notice.failed")
        assert failed.details["serials"] == [serial]

        lab = notices_auth(ca_env, **settings, smtp_allow_plain=True)
        [result] = run_once(lab, now + timedelta(minutes=20))
        assert result.delivered.ok and result.delivered.detail.startswith("plain")
        assert len(mailbox.envelopes) == 1
    finally:
        smtp.stop()


def test_a_refusing_receiver_is_not_retried_within_the_run(ca_env: CaEnv) -> None:
    receiver = Receiver([401])
    try:
        auth = notices_auth(ca_env, webhook_url=receiver.url, webhook_attempts=5)
        _issue(auth, "refused.corp.test", 10, owner="team-a")
        [result] = run_once(auth, auth.now())
        assert not result.delivered.ok and result.delivered.attempts == 1
        assert "HTTP 401 (refused by the receiver)" == result.delivered.error
        assert len(receiver.posts) == 1
    finally:
        receiver.stop()


def test_an_https_receiver_is_trusted_only_through_tls_ca_file(
    ca_env: CaEnv, tmp_path: Path
) -> None:
    import ssl

    receiver = Receiver()
    crt, key, ca_file = _tls_files(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(crt, key)
    receiver.server.socket = context.wrap_socket(receiver.server.socket, server_side=True)
    url = receiver.url.replace("http://", "https://")
    try:
        _issue(ca_env.auth, "tls.corp.test", 10, owner="team-a")
        untrusted = notices_auth(ca_env, webhook_url=url, webhook_attempts=1)
        [result] = run_once(untrusted, untrusted.now())
        assert not result.delivered.ok and "CERTIFICATE_VERIFY_FAILED" in result.delivered.error
        assert receiver.posts == []

        trusted = notices_auth(ca_env, webhook_url=url, tls_ca_file=str(ca_file))
        [result] = run_once(trusted, trusted.now() + timedelta(minutes=20))
        assert result.delivered.ok, result.delivered
        assert len(receiver.payloads()) == 1
    finally:
        receiver.stop()


def test_an_owner_without_destination_is_a_failed_notice_not_a_silent_one(ca_env: CaEnv) -> None:
    auth = notices_auth(ca_env)
    serial = _issue(auth, "nobody.corp.test", 10, owner="team-q")
    [result] = run_once(auth, auth.now())
    assert not result.delivered.ok and "no destination for owner 'team-q'" in result.delivered.error
    [failed] = auth.db.audit_events("notice.failed")
    assert failed.details["channel"] == "none" and failed.details["serials"] == [serial]


def test_a_webhook_secret_others_can_read_is_refused_and_the_notice_fails_audited(
    ca_env: CaEnv, receiver: Receiver
) -> None:
    auth = notices_auth(ca_env, webhook_url=receiver.url)
    (ca_env.data_dir / "notices.secret").chmod(0o644)
    _issue(auth, "secret.corp.test", 10, owner="team-a")
    [result] = run_once(auth, auth.now())
    assert not result.delivered.ok and "must have mode 0600" in result.delivered.error
    assert receiver.posts == []
    [failed] = auth.db.audit_events("notice.failed")
    assert "must have mode 0600" in failed.details["error"]
    assert SECRET.decode() not in json.dumps(failed.details)


def test_the_job_does_nothing_unless_enabled(ca_env: CaEnv, receiver: Receiver) -> None:
    auth = notices_auth(ca_env, webhook_url=receiver.url, enabled=False)
    _issue(auth, "off.corp.test", 10, owner="team-a")
    assert run_once(auth, auth.now()) == []
    assert receiver.posts == []


def _cli_env(data: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HSMCA_", "SOFTHSM2_CONF"))}
    return {**base, "HSMCA_HOME": str(data)}


def test_hsmca_scheduler_run_once_sends_what_hsmca_notices_preview_lists(
    sqlite_ca_env: CaEnv, receiver: Receiver
) -> None:
    env = sqlite_ca_env
    secret = _secret_file(env)
    config = env.data_dir / "hsmca.toml"
    config.write_text(
        config.read_text()
        + f"""
[notices]
enabled = true
webhook_url = "{receiver.url}"
webhook_secret_file = "{secret.name}"
"""
    )
    serial = _issue(env.auth, "cli.corp.test", 10, owner="team-cli")

    preview = subprocess.run(
        [HSMCA, "notices", "preview", "--json"],
        env=_cli_env(env.data_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert preview.returncode == 0, preview.stderr
    [line] = preview.stdout.splitlines()
    listed = json.loads(line)
    assert (listed["owner"], listed["window_days"], listed["serials"]) == ("team-cli", 14, [serial])
    assert receiver.posts == []  # a preview sends nothing

    run = subprocess.run(
        [HSMCA, "scheduler", "run-once", "--job", "expiry-notices"],
        env=_cli_env(env.data_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "expiry-notices: ok" in run.stdout
    [payload] = receiver.payloads()
    assert payload["notice_id"] == listed["notice_id"]
    assert [c["serial"] for c in payload["certificates"]] == [serial]

    after = subprocess.run(
        [HSMCA, "notices", "preview"],
        env=_cli_env(env.data_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert after.returncode == 0 and "no notices due" in after.stdout

    bad = subprocess.run(
        [HSMCA, "notices", "preview", "--at", "next tuesday"],
        env=_cli_env(env.data_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and "is not an ISO 8601 time" in bad.stderr
    assert "Traceback" not in bad.stderr
