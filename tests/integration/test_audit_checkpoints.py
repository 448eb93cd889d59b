"""Audit checkpoints: the audit key, signing when due, witnesses, and live verification that
detects and locates every kind of tampering (on SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from helpers import CaEnv, openssl, run_hsmca
from sqlalchemy import text

from ca.audit import GENESIS_HASH, chain_hash, event_dict
from ca.audit_key import DOCUMENT_SIGNING, PROFILE, create_audit_key, key_ref_of
from ca.audit_verify import VerifyReport, verify_live
from ca.authority import Authority
from ca.checkpoint import Checkpoint, checkpoint_message, signature_valid
from ca.checkpoints import (
    ACTION,
    catch_up_file,
    due,
    run_once,
    sign_checkpoint,
    stored_checkpoints,
)
from ca.config import AuditConfig
from ca.store.db import CertificateFilter, Database
from ca.witness import read_witness_file
from hsmca.scheduler import jobs, run_all_once

pytestmark = [pytest.mark.hsm, pytest.mark.db]

HSMCA = str(Path(sys.executable).parent / "hsmca")
WITNESS = "witness/checkpoints.jsonl"


def with_audit(env: CaEnv, **settings: object) -> Authority:
    """The env's authority with ``[audit]`` settings (same database and token)."""
    config = env.config.model_copy(update={"audit": AuditConfig(**settings)})  # type: ignore[arg-type]
    return Authority(config=config, db=env.auth.db, keys=env.auth.keys)


def add_events(auth: Authority, n: int, action: str = "test.event") -> None:
    for i in range(n):
        auth.audit("test", action, f"e{i}", {"i": i})


def sql(auth: Authority, statement: str, **params: object) -> None:
    with auth.db.engine.begin() as conn:
        conn.execute(text(statement), params)


def head(auth: Authority) -> int:
    return max(e.seq for e in auth.db.audit_entries())


# --- the audit key ----------------------------------------------------------------------------


def test_audit_key_is_made_in_the_hsm_protected_and_its_certificate_chains_to_the_root(
    ca_env, tmp_path
):
    made = create_audit_key(ca_env.auth, actor="test")
    assert made.created
    attrs = ca_env.auth.keys.key_attributes(made.key_ref)  # type: ignore[attr-defined]
    assert attrs["sensitive"] and attrs["never_extractable"] and attrs["token"]
    assert not attrs["extractable"]
    assert ca_env.auth.keys.try_export_private_value(made.key_ref) is None  # type: ignore[attr-defined]

    cert = made.certificate
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hsmca audit"
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not (usage.value.key_cert_sign or usage.value.key_encipherment)
    ekus = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert ekus == [DOCUMENT_SIGNING] and ExtendedKeyUsageOID.SERVER_AUTH not in ekus
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(days=5 * 365)

    pem = tmp_path / "audit.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    issuing = tmp_path / "issuing.pem"
    issuing.write_bytes(ca_env.issuing_pem())
    verified = openssl(
        "verify", "-CAfile", str(ca_env.root_pem), "-untrusted", str(issuing), str(pem)
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr

    rows = ca_env.auth.db.find_certificates(CertificateFilter(profile=PROFILE))
    assert [r.serial for r in rows] == [made.serial]
    assert key_ref_of(rows[0]) == made.key_ref
    created = ca_env.auth.db.audit_events("audit.key.created")
    assert [e.details["serial"] for e in created] == [made.serial]
    assert ca_env.auth.db.audit_events("audit.key.requested")

    again = create_audit_key(ca_env.auth, actor="test")
    assert not again.created and again.serial == made.serial
    assert len(ca_env.auth.db.audit_events("audit.key.created")) == 1


def test_no_audit_key_means_no_checkpoint_and_the_job_still_succeeds(ca_env):
    assert sign_checkpoint(ca_env.auth) is None
    assert run_once(ca_env.auth, ca_env.auth.now()) == []
    assert stored_checkpoints(ca_env.auth.db) == []
    report = verify_live(ca_env.auth)
    assert report.ok and any("no checkpoints" in w for w in report.warnings)


# --- signing when due ---------------------------------------------------------------------------


def test_checkpoint_is_signed_when_due_by_events_and_by_time(ca_env):
    auth = with_audit(ca_env, checkpoint_every_events=5, checkpoint_every_seconds=60)
    create_audit_key(auth, actor="test")
    now = auth.now()
    assert due(auth, now)  # events and no checkpoint yet
    [first] = run_once(auth, now)
    assert first.seq == head(auth) - 1  # its own audit.checkpoint event follows it
    assert not due(auth, now) and run_once(auth, now) == []  # that event alone is not new

    add_events(auth, 4)
    assert not due(auth, auth.now())
    add_events(auth, 1)
    [by_events] = run_once(auth, auth.now())
    assert by_events.seq == first.seq + 1 + 5

    add_events(auth, 1)
    later = auth.now()
    assert not due(auth, later)
    [by_time] = run_once(auth, later + timedelta(seconds=61))
    assert by_time.seq == by_events.seq + 2

    stored = stored_checkpoints(auth.db)
    assert [c.seq for c in stored] == [first.seq, by_events.seq, by_time.seq]
    events = {e.seq: e for e in auth.db.audit_events(ACTION)}
    for checkpoint in stored:
        event = events[checkpoint.seq + 1]
        assert event.details["hash"] == checkpoint.hash
        assert event.details["signature"] == base64.b64encode(checkpoint.signature).decode()
        assert event.time == checkpoint.time
        chain_event = next(e for e in auth.db.audit_entries(checkpoint.seq - 1))
        assert chain_event.hash.hex() == checkpoint.hash
    assert verify_live(auth).checkpoints == 3


def test_the_scheduler_job_signs_a_due_checkpoint(ca_env):
    create_audit_key(ca_env.auth, actor="test")
    assert "audit-checkpoint" in [j.name for j in jobs(ca_env.config)]
    assert run_all_once(ca_env.auth, ["audit-checkpoint"]) == {"audit-checkpoint": True}
    assert len(stored_checkpoints(ca_env.auth.db)) == 1


def test_the_job_renews_the_audit_key_before_it_expires_and_old_checkpoints_still_verify(ca_env):
    old = create_audit_key(ca_env.auth, actor="test")
    [first] = run_once(ca_env.auth, ca_env.auth.now())
    assert first.key_serial == old.serial
    add_events(ca_env.auth, 1)
    near_end = old.certificate.not_valid_after_utc - timedelta(days=10)
    [second] = run_once(ca_env.auth, near_end)
    renewed = ca_env.auth.db.audit_events("audit.key.created")[-1].details
    assert renewed["supersedes"] == old.serial and second.key_serial == renewed["serial"]
    report = verify_live(ca_env.auth)
    assert report.ok, report.problem
    assert report.checkpoints == 2


def test_openssl_verifies_a_checkpoint_signature_with_the_audit_certificate(ca_env, tmp_path):
    made = create_audit_key(ca_env.auth, actor="test")
    signed = sign_checkpoint(ca_env.auth)
    assert signed is not None
    cp = signed.checkpoint
    cert = tmp_path / "audit.pem"
    cert.write_bytes(made.certificate.public_bytes(serialization.Encoding.PEM))
    pub = openssl("x509", "-in", str(cert), "-pubkey", "-noout")
    (tmp_path / "audit_pub.pem").write_text(pub.stdout)
    (tmp_path / "sig.der").write_bytes(cp.signature)
    (tmp_path / "message").write_bytes(checkpoint_message(cp.seq, cp.hash, cp.time))
    args = ["dgst", "-sha256", "-verify", str(tmp_path / "audit_pub.pem"), "-signature"]
    ok = openssl(*args, str(tmp_path / "sig.der"), str(tmp_path / "message"))
    assert ok.returncode == 0 and "Verified OK" in ok.stdout
    (tmp_path / "message").write_bytes(checkpoint_message(cp.seq + 1, cp.hash, cp.time))
    bad = openssl(*args, str(tmp_path / "sig.der"), str(tmp_path / "message"))
    assert bad.returncode != 0


# --- witnesses ----------------------------------------------------------------------------------


class _Webhook(BaseHTTPRequestHandler):
    received: list[dict[str, object]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, object]]]]:
    received: list[dict[str, object]] = []
    handler = type("Hook", (_Webhook,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/witness", received
    finally:
        server.shutdown()
        server.server_close()


def test_checkpoints_are_witnessed_to_a_file_and_a_webhook(ca_env, webhook):
    url, received = webhook
    auth = with_audit(ca_env, witness_file=WITNESS, witness_webhook=url)
    create_audit_key(auth, actor="test")
    signed = sign_checkpoint(auth)
    assert signed is not None and not signed.witnesses.errors
    assert signed.witnesses.written == {"file": 1, "webhook": 1}
    witnessed = read_witness_file(ca_env.data_dir / WITNESS)
    assert witnessed.checkpoints == [signed.checkpoint]
    assert received == [signed.checkpoint.to_json()]
    assert Checkpoint.from_json(received[0]) == signed.checkpoint
    report = verify_live(auth)
    assert report.ok and report.witnessed == 1


def test_a_witness_failure_keeps_the_checkpoint_and_the_file_catches_up(ca_env, webhook):
    url, received = webhook
    dead = "http://127.0.0.1:9/witness"  # nothing listens on the discard port
    auth = with_audit(ca_env, witness_file=WITNESS, witness_webhook=dead)
    create_audit_key(auth, actor="test")
    path = ca_env.data_dir / WITNESS
    path.mkdir(parents=True)  # a directory where the file should be: every write fails
    first = sign_checkpoint(auth)
    add_events(auth, 2)
    second = sign_checkpoint(auth)
    assert first is not None and second is not None
    assert set(second.witnesses.errors) == {"file", "webhook"}
    assert [c.seq for c in stored_checkpoints(auth.db)] == [
        first.checkpoint.seq,
        second.checkpoint.seq,
    ]

    path.rmdir()
    assert catch_up_file(auth) == 2  # the next run writes every missed checkpoint, in order
    assert read_witness_file(path).checkpoints == [first.checkpoint, second.checkpoint]
    assert catch_up_file(auth) == 0
    add_events(auth, 1)
    third = sign_checkpoint(with_audit(ca_env, witness_file=WITNESS, witness_webhook=url))
    assert third is not None and third.witnesses.written == {"file": 1, "webhook": 1}
    assert [c["seq"] for c in received] == [third.checkpoint.seq]
    assert verify_live(auth).witnessed == 3


# --- tampering ------------------------------------------------------------------------------------


@pytest.fixture
def chain(ca_env) -> Iterator[tuple[Authority, list[Checkpoint]]]:
    """Events with three checkpoints (and their witness file) and a few events after the last."""
    auth = with_audit(ca_env, witness_file=WITNESS)
    create_audit_key(auth, actor="test")
    checkpoints = []
    for _ in range(3):
        add_events(auth, 4)
        signed = sign_checkpoint(auth)
        assert signed is not None
        checkpoints.append(signed.checkpoint)
    add_events(auth, 3)
    yield auth, checkpoints


def _report(auth: Authority) -> VerifyReport:
    report = verify_live(auth)
    assert not report.ok, report
    return report


def test_the_untouched_chain_verifies_with_every_checkpoint(chain):
    auth, checkpoints = chain
    report = verify_live(auth)
    assert report.ok, report.problem
    assert report.events == head(auth) and report.checkpoints == 3 and report.witnessed == 3
    assert report.last_checkpoint_seq == checkpoints[-1].seq
    assert report.unsigned_events == 3
    assert report.warnings == ()


def test_an_edited_field_is_located(chain):
    auth, checkpoints = chain
    seq = checkpoints[1].seq - 2
    sql(auth, "UPDATE audit_events SET actor = 'mallory' WHERE seq = :s", s=seq)
    report = _report(auth)
    assert report.first_bad_seq == seq and "edited" in report.problem
    assert report.events == seq - 1


def test_a_deleted_event_is_located(chain):
    auth, checkpoints = chain
    seq = checkpoints[0].seq - 1
    sql(auth, "DELETE FROM audit_events WHERE seq = :s", s=seq)
    report = _report(auth)
    assert report.first_bad_seq == seq and "missing" in report.problem


def _renumber_after(auth: Authority, seq: int, by: int) -> None:
    # Two steps, so no intermediate state breaks the primary key on either database.
    sql(auth, "UPDATE audit_events SET seq = -seq - :by WHERE seq > :s", s=seq, by=by)
    sql(auth, "UPDATE audit_events SET seq = -seq WHERE seq < 0")


def test_an_inserted_event_is_located(chain):
    auth, checkpoints = chain
    seq = checkpoints[1].seq - 3
    prev = next(e for e in auth.db.audit_entries(seq - 1))
    _renumber_after(auth, seq, 1)
    # A well-formed event with a correct hash, slipped in after ``seq``.
    event = event_dict(seq + 1, prev.time, "mallory", "test.event", "x", {"i": 99})
    digest = chain_hash(prev.hash, event)
    sql(
        auth,
        "INSERT INTO audit_events (seq, time, actor, action, subject, details, prev_hash, hash)"
        " VALUES (:seq, :time, 'mallory', 'test.event', 'x', :details, :prev, :hash)",
        seq=seq + 1,
        time=prev.time,
        details='{"i":99}',
        prev=prev.hash.hex(),
        hash=digest.hex(),
    )
    report = _report(auth)
    assert report.first_bad_seq == seq + 2 and "prev_hash" in report.problem


def test_reordered_events_are_located(chain):
    auth, checkpoints = chain
    seq = checkpoints[2].seq - 2
    sql(auth, "UPDATE audit_events SET seq = -1 WHERE seq = :s", s=seq)
    sql(auth, "UPDATE audit_events SET seq = :s WHERE seq = :t", s=seq, t=seq + 1)
    sql(auth, "UPDATE audit_events SET seq = :t WHERE seq = -1", t=seq + 1)
    report = _report(auth)
    assert report.first_bad_seq == seq and "prev_hash" in report.problem


def _rewrite_from(auth: Authority, seq: int) -> None:
    """Edit event ``seq`` and recompute every later hash: a chain consistent in itself."""
    entries = list(auth.db.audit_entries())
    prev = entries[seq - 2].hash if seq > 1 else GENESIS_HASH
    for entry in entries[seq - 1 :]:
        actor = "mallory" if entry.seq == seq else entry.actor
        event = event_dict(entry.seq, entry.time, actor, entry.action, entry.subject, entry.details)
        digest = chain_hash(prev, event)
        sql(
            auth,
            "UPDATE audit_events SET actor = :a, prev_hash = :p, hash = :h WHERE seq = :s",
            a=actor,
            p=prev.hex(),
            h=digest.hex(),
            s=entry.seq,
        )
        prev = digest


def test_a_chain_rewritten_with_recomputed_hashes_fails_its_checkpoint(chain):
    auth, checkpoints = chain
    _rewrite_from(auth, checkpoints[1].seq - 2)
    report = _report(auth)
    assert report.first_bad_seq == checkpoints[0].seq + 1
    assert "rewritten" in report.problem and f"seq {checkpoints[1].seq}" in report.problem


def _software_signature(checkpoint: Checkpoint) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return base64.b64encode(key.sign(checkpoint.message(), ec.ECDSA(hashes.SHA256()))).decode()


def test_a_checkpoint_signed_by_another_key_is_refused(chain):
    auth, checkpoints = chain
    target = checkpoints[1]
    sql(
        auth,
        "UPDATE audit_checkpoints SET signature = :sig WHERE seq = :s",
        sig=_software_signature(target),
        s=target.seq,
    )
    report = _report(auth)
    assert report.first_bad_seq == target.seq and "not signed by the audit key" in report.problem


def test_a_rewrite_re_signed_under_a_forged_audit_certificate_is_refused(chain):
    # The attacker rewrites the chain, stores their own "audit certificate" (the issuing CA's
    # name as issuer, their key) and signs every checkpoint again: it does not chain to the CA.
    auth, checkpoints = chain
    _rewrite_from(auth, 2)
    key = ec.generate_private_key(ec.SECP256R1())
    issuing = x509.load_der_x509_certificate(auth.db.get_ca("issuing").certificate_der)
    now = auth.now()
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hsmca audit")]))
        .issuer_name(issuing.subject)
        .public_key(key.public_key())
        .serial_number(0x5EED)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    with auth.db.write() as conn:
        auth.db.add_certificates(
            conn,
            [
                {
                    "serial": "5eed",
                    "issuer_id": auth.db.get_ca("issuing").id,
                    "subject": "CN=hsmca audit",
                    "sans": "[]",
                    "key_type": "ec:P-256",
                    "not_before": forged.not_valid_before_utc,
                    "not_after": forged.not_valid_after_utc,
                    "profile": PROFILE,
                    "requester": "mallory",
                    "status": "issued",
                    "der": forged.public_bytes(serialization.Encoding.DER),
                    "fingerprint_sha256": "f" * 64,
                    "created_at": now,
                    "meta": "{}",
                }
            ],
        )
    entries = {e.seq: e for e in auth.db.audit_entries()}
    for cp in checkpoints:
        fresh = Checkpoint(cp.seq, entries[cp.seq].hash.hex(), cp.time, "5eed", cp.algorithm, b"")
        signature = key.sign(fresh.message(), ec.ECDSA(hashes.SHA256()))
        assert signature_valid(dataclasses.replace(fresh, signature=signature), forged)
        sql(
            auth,
            "UPDATE audit_checkpoints SET hash = :h, key_serial = '5eed', signature = :sig"
            " WHERE seq = :s",
            h=fresh.hash,
            sig=base64.b64encode(signature).decode(),
            s=cp.seq,
        )
    report = _report(auth)
    assert report.first_bad_seq == checkpoints[0].seq
    assert "not a trusted audit certificate" in report.problem
    assert any("5eed is not trusted" in w for w in report.warnings)


def test_a_forged_checkpoint_row_is_refused(chain):
    auth, checkpoints = chain
    seq = checkpoints[0].seq + 3  # an event no checkpoint was made at
    entry = next(e for e in auth.db.audit_entries(seq - 1))
    forged = Checkpoint(seq, entry.hash.hex(), entry.time, checkpoints[0].key_serial, "x", b"")
    sql(
        auth,
        "INSERT INTO audit_checkpoints (seq, hash, time, key_serial, algorithm, signature)"
        " VALUES (:s, :h, :t, :k, 'ecdsa-with-SHA256', :sig)",
        s=seq,
        h=forged.hash,
        t=forged.time,
        k=forged.key_serial,
        sig=_software_signature(forged),
    )
    report = _report(auth)
    assert report.first_bad_seq == seq and "not signed by the audit key" in report.problem


def test_a_deleted_checkpoint_row_is_located_by_its_event(chain):
    auth, checkpoints = chain
    gone = checkpoints[1]
    sql(auth, "DELETE FROM audit_checkpoints WHERE seq = :s", s=gone.seq)
    report = _report(auth)
    assert report.first_bad_seq == gone.seq and "missing" in report.problem


def test_truncation_at_the_last_checkpoint_is_detected_without_a_witness(chain):
    auth, checkpoints = chain
    last = checkpoints[-1].seq
    sql(auth, "DELETE FROM audit_events WHERE seq > :s", s=last)
    report = verify_live(with_audit_off(auth))
    assert not report.ok and report.first_bad_seq == last + 1
    assert "truncation" in report.problem


def with_audit_off(auth: Authority) -> Authority:
    """The same installation with no witness configured."""
    config = auth.config.model_copy(update={"audit": AuditConfig()})
    return Authority(config=config, db=auth.db, keys=auth.keys)


def test_truncation_with_its_checkpoints_removed_shows_against_the_witness(chain):
    # A careful attacker deletes the newest events and the checkpoints covering them: the
    # database is consistent in itself, but the witness file remembers the last checkpoint.
    auth, checkpoints = chain
    keep = checkpoints[1].seq + 1  # the second checkpoint and its own event stay
    sql(auth, "DELETE FROM audit_events WHERE seq > :s", s=keep)
    sql(auth, "DELETE FROM audit_checkpoints WHERE seq > :s", s=keep)
    assert verify_live(with_audit_off(auth)).ok  # undetectable from the database alone
    report = _report(auth)
    assert report.first_bad_seq == keep + 1
    assert "rolled back or truncated" in report.problem
    assert f"seq {checkpoints[2].seq}" in report.problem


def test_progress_is_reported_per_batch(chain):
    auth, _ = chain
    calls: list[tuple[int, int]] = []
    report = verify_live(auth, progress=lambda done, total: calls.append((done, total)))
    assert report.ok and calls[-1] == (report.events, report.events)


# --- the CLI ----------------------------------------------------------------------------------


def run(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_hsmca(data, *args)


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("audit-cli") / "data"
    proc = run(data, "init")
    assert proc.returncode == 0, proc.stderr
    assert "audit: audit key created: hsmca-audit-" in proc.stdout
    assert "audit: checkpoint signed at seq" in proc.stdout
    return data


@pytest.fixture
def installation(initialised: Path, tmp_path: Path) -> Path:
    """A copy of the initialised data directory (same token), free to tamper with."""
    copy = tmp_path / "data"
    shutil.copytree(initialised, copy)
    return copy


def test_init_makes_the_audit_key_whose_certificate_chains_to_the_root(initialised, tmp_path):
    with sqlite3.connect(initialised / "hsmca.db") as conn:
        [(der,)] = conn.execute("SELECT der FROM certificates WHERE profile = ?", (PROFILE,))
        cas = dict(conn.execute("SELECT name, certificate_der FROM certificate_authorities"))
        [(meta,)] = conn.execute("SELECT meta FROM certificates WHERE profile = ?", (PROFILE,))
    cert = x509.load_der_x509_certificate(der)
    paths = {}
    for name, blob in [("audit", der), *cas.items()]:
        paths[name] = tmp_path / f"{name}.pem"
        paths[name].write_bytes(
            x509.load_der_x509_certificate(blob).public_bytes(serialization.Encoding.PEM)
        )
    ok = openssl(
        "verify", "-CAfile", str(paths["root"]), "-untrusted", str(paths["issuing"]),
        str(paths["audit"]),
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(meta)["key"]["label"].startswith("hsmca-audit-")
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    again = run(initialised, "audit", "key", "create")
    assert again.returncode == 0 and "audit key exists" in again.stdout


def test_cli_signs_a_checkpoint_and_verify_reports_it(installation):
    signed = run(installation, "audit", "checkpoint")
    assert signed.returncode == 0, signed.stderr
    assert "checkpoint signed: seq" in signed.stdout
    ok = run(installation, "audit", "verify")
    assert ok.returncode == 0, ok.stderr
    assert "audit chain OK:" in ok.stdout and "2 checkpoint(s) verified" in ok.stdout


def _tamper(data: Path, *statements: str) -> None:
    with sqlite3.connect(data / "hsmca.db") as conn:
        for statement in statements:
            conn.execute(statement)


def test_cli_verify_exits_3_naming_a_rewrite(installation):
    with sqlite3.connect(installation / "hsmca.db") as conn:
        [(last,)] = conn.execute("SELECT max(seq) FROM audit_checkpoints")
    _tamper(installation, f"UPDATE audit_checkpoints SET hash = '{'0' * 64}' WHERE seq = {last}")
    bad = run(installation, "audit", "verify")
    assert bad.returncode == 3
    assert f"audit chain broken at seq {last}:" in bad.stderr
    assert "not signed by the audit key" in bad.stderr


def test_cli_verify_exits_3_on_truncation(installation):
    with sqlite3.connect(installation / "hsmca.db") as conn:
        [(last,)] = conn.execute("SELECT max(seq) FROM audit_checkpoints")
    _tamper(installation, f"DELETE FROM audit_events WHERE seq > {last}")
    bad = run(installation, "audit", "verify")
    assert bad.returncode == 3
    assert f"seq {last + 1}:" in bad.stderr and "truncation" in bad.stderr


def test_cli_verify_shows_progress_on_a_long_chain(installation):
    db = Database(f"sqlite:///{installation / 'hsmca.db'}")
    try:
        for _ in range(3):
            with db.write() as conn:
                db.append_audit_many(
                    conn,
                    datetime.now(UTC),
                    [("test", "test.bulk", "x", {"i": i}) for i in range(20_000)],
                )
    finally:
        db.dispose()
    ok = run(installation, "audit", "verify")
    assert ok.returncode == 0, ok.stderr
    assert "verifying:" in ok.stderr and "(100%)" in ok.stderr
    assert "60000 event(s) after the last checkpoint not yet signed" in ok.stdout


def test_witness_file_survives_a_torn_write_and_is_read_from_its_end(chain, tmp_path):
    from ca.witness import append_to_file, last_witnessed_seq

    _, checkpoints = chain
    path = tmp_path / "w.jsonl"
    many = [Checkpoint(s, c.hash, c.time, c.key_serial, c.algorithm, c.signature)
            for s in range(1, 400) for c in checkpoints[:1]]  # fmt: skip
    append_to_file(path, many)  # ~130 KB: more than one tail chunk
    with path.open("ab") as fh:
        fh.write(b'{"type":"hsmca-audit-checkpoint/1","seq":9')  # a crash mid-line
    assert last_witnessed_seq(path) == 399
    append_to_file(path, [checkpoints[0]])
    read = read_witness_file(path)
    assert read.checkpoints[-1] == checkpoints[0] and len(read.checkpoints) == 400
    assert [line.number for line in read.lines if line.checkpoint is None] == [400]
    assert last_witnessed_seq(path) == checkpoints[0].seq


def test_a_garbage_witness_line_is_a_warning_not_a_failure(chain):
    auth, _ = chain
    with (auth.config.path(WITNESS)).open("ab") as fh:
        fh.write(b"not json\n")
    report = verify_live(auth)
    assert report.ok and report.witnessed == 3
    assert any("line 4 is not a checkpoint" in w for w in report.warnings)
