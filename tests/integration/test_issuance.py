"""The issuance path end to end: real SoftHSM token, real SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from helpers import make_csr, make_key
from sqlalchemy import select

from ca.audit import verify_chain
from ca.errors import (
    BadCSR,
    BadPublicKey,
    CAError,
    NotFound,
    PolicyDenied,
    StoreError,
    UnknownProfile,
)
from ca.issuance import IssuanceRequest, issue, issue_many, recover_intents
from ca.store import tables as t

pytestmark = [pytest.mark.hsm, pytest.mark.db]


def _counts(auth) -> dict[str, int]:
    return {
        "certificates": auth.db.count(t.Certificate),
        "intents": auth.db.count(t.IssuanceIntent),
    }


def _intent_states(auth) -> dict[str, str]:
    with auth.db.read() as conn:
        return dict(conn.execute(select(t.IssuanceIntent.serial, t.IssuanceIntent.state)).all())


def test_issued_certificate_is_stored_audited_and_chains_to_root(ca_env):
    auth = ca_env.auth
    csr = make_csr(["app.corp.test", "10.0.0.7"])
    issued = issue(auth, IssuanceRequest(csr, "server", "tester"))
    row = auth.db.get_certificate(issued.serial)
    assert row.der == issued.certificate.public_bytes(serialization.Encoding.DER)
    assert row.sans == ["dns:app.corp.test", "ip:10.0.0.7"]
    assert row.requester == "tester" and row.profile == "server" and row.status == "issued"
    assert issued.certificate.serial_number == int(issued.serial, 16)
    assert issued.certificate.serial_number.bit_length() > 64
    # The chain handed out is the issuing CA; it verifies up to the root.
    assert [c.subject for c in issued.chain] == [auth.issuer("issuing").certificate.subject]
    issued.certificate.verify_directly_issued_by(issued.chain[0])
    actions = [e.action for e in auth.db.audit_events()]
    assert actions[-2:] == ["certificate.requested", "certificate.issued"]
    assert verify_chain(auth.db.audit_entries()) == len(actions)
    assert _intent_states(auth)[issued.serial] == "issued"


def test_der_csr_and_rsa_keys_are_accepted(ca_env):
    issued = issue(
        ca_env.auth,
        IssuanceRequest(make_csr(["rsa.corp.test"], "rsa:3072", der=True), "server", "t"),
    )
    ku = issued.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment


def test_batch_issuance_stores_every_certificate_with_distinct_serials(ca_env):
    auth = ca_env.auth
    reqs = [IssuanceRequest(make_csr([f"svc{i}.corp.test"]), "server", "batch") for i in range(20)]
    results = issue_many(auth, reqs)
    serials = [r.serial for r in results if not isinstance(r, CAError)]
    assert len(set(serials)) == 20
    for s in serials:
        auth.db.get_certificate(s)
    verify_chain(auth.db.audit_entries())


def test_batch_with_one_bad_request_denies_only_that_one(ca_env):
    auth = ca_env.auth
    reqs = [
        IssuanceRequest(make_csr(["good1.corp.test"]), "server", "b"),
        IssuanceRequest(b"garbage", "server", "b"),
        IssuanceRequest(make_csr(["good2.corp.test"]), "server", "b"),
    ]
    results = issue_many(auth, reqs)
    assert isinstance(results[1], BadCSR)
    assert not isinstance(results[0], CAError) and not isinstance(results[2], CAError)
    assert auth.db.count(t.Certificate) == 3  # the intermediate + two leaves


def _broken_signature_csr() -> bytes:
    der = bytearray(make_csr(["broken.corp.test"], der=True))
    der[-5] ^= 0x01  # inside the signature BIT STRING
    return bytes(der)


def _ed25519_csr() -> bytes:
    key = ed25519.Ed25519PrivateKey.generate()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ed.corp.test")]))
        .sign(key, None)
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _ca_true_csr() -> bytes:
    key = make_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sneaky.corp.test")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


BAD_INPUTS = [
    pytest.param(b"", "server", BadCSR, id="fail/empty"),
    pytest.param(b"not a csr at all", "server", BadCSR, id="fail/garbage"),
    pytest.param(os.urandom(2048), "server", BadCSR, id="fail/random-bytes"),
    pytest.param(
        make_csr(["t.corp.test"], der=True)[:-40], "server", BadCSR, id="fail/truncated-der"
    ),
    pytest.param(make_csr(["t.corp.test"])[:200], "server", BadCSR, id="fail/truncated-pem"),
    pytest.param(
        b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"A" * 70_000,
        "server",
        BadCSR,
        id="fail/oversized",
    ),
    pytest.param(_broken_signature_csr(), "server", BadCSR, id="fail/broken-signature"),
    pytest.param(
        make_csr(["weak.corp.test"], "rsa:1024"), "server", BadPublicKey, id="fail/rsa-1024"
    ),
    pytest.param(_ed25519_csr(), "server", BadPublicKey, id="fail/ed25519"),
    pytest.param(
        make_csr(["ec.corp.test"]), "rsa-only", PolicyDenied, id="fail/key-type-not-in-profile"
    ),
    pytest.param(
        make_csr(["x.corp.test"]), "no-such-profile", UnknownProfile, id="fail/unknown-profile"
    ),
    pytest.param(make_csr([], cn=None), "server", PolicyDenied, id="fail/no-names"),
    pytest.param(make_csr(["UPPER.corp.test"]), "server", PolicyDenied, id="fail/uppercase-name"),
    pytest.param(_ca_true_csr(), "server", PolicyDenied, id="fail/ca-true-requested"),
]


@pytest.mark.parametrize("csr,profile,error", BAD_INPUTS)
def test_bad_input_changes_nothing_and_the_denial_is_audited(ca_env, csr, profile, error):
    auth = ca_env.auth
    before = _counts(auth)
    events_before = len(auth.db.audit_events())
    with pytest.raises(error) as exc:
        issue(auth, IssuanceRequest(csr, profile, "mallory"))
    assert "\n" not in str(exc.value) and str(exc.value)
    assert _counts(auth) == before
    events = auth.db.audit_events()
    assert len(events) == events_before + 1
    denial = events[-1]
    assert denial.action == "certificate.denied" and denial.actor == "mallory"
    assert denial.details["reason"] == str(exc.value)
    verify_chain(auth.db.audit_entries())


def test_ca_true_request_is_refused_naming_the_rule(ca_env):
    with pytest.raises(PolicyDenied) as exc:
        issue(ca_env.auth, IssuanceRequest(_ca_true_csr(), "server", "t"))
    # Every violation at once: CA:true, and the CN-only CSR names no SAN.
    rules = [v.rule for v in exc.value.violations]
    assert "extension.ca_requested" in rules and "san.missing" in rules
    denied = ca_env.auth.db.audit_events("certificate.denied")[-1]
    assert denied.details["profile_sha256"] == ca_env.auth.profile("server").sha256
    assert [v["rule"] for v in denied.details["violations"]] == rules


def test_validity_beyond_profile_maximum_is_refused(ca_env):
    with pytest.raises(PolicyDenied, match="exceeds"):
        issue(
            ca_env.auth,
            IssuanceRequest(make_csr(["long.corp.test"]), "server", "t", validity_days=4000),
        )


class Crash(Exception):
    pass


@pytest.mark.parametrize("step", ["intent", "signed"])
def test_crash_between_intent_and_store_is_recovered_without_reusing_the_serial(ca_env, step):
    auth = ca_env.auth

    def hook(reached: str) -> None:
        if reached == step:
            raise Crash(step)

    with pytest.raises(Crash):
        issue(auth, IssuanceRequest(make_csr(["crash.corp.test"]), "server", "t"), on_step=hook)
    pending = [s for s, state in _intent_states(auth).items() if state == "pending"]
    assert len(pending) == 1
    lost_serial = pending[0]
    with pytest.raises(NotFound):
        auth.db.get_certificate(lost_serial)  # nothing was handed out or stored

    assert recover_intents(auth) == [lost_serial]
    assert _intent_states(auth)[lost_serial] == "abandoned"
    assert auth.db.audit_events("certificate.intent_abandoned")[-1].subject == lost_serial
    assert recover_intents(auth) == []  # idempotent

    again = issue(auth, IssuanceRequest(make_csr(["crash.corp.test"]), "server", "t"))
    assert again.serial != lost_serial
    verify_chain(auth.db.audit_entries())


def test_a_late_store_after_recovery_is_refused_and_nothing_is_handed_out(ca_env):
    auth = ca_env.auth

    def recover_while_signing(reached: str) -> None:
        if reached == "signed":
            recover_intents(auth)  # another process gave up on this intent meanwhile

    with pytest.raises(StoreError, match="resolved by recovery"):
        issue(
            auth,
            IssuanceRequest(make_csr(["late.corp.test"]), "server", "t"),
            on_step=recover_while_signing,
        )
    assert auth.db.count(t.Certificate) == 1  # only the intermediate
    verify_chain(auth.db.audit_entries())


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from ca.config import load_config
    from ca.authority import Authority
    from ca.issuance import IssuanceRequest, issue

    data_dir, csr_path, step = sys.argv[1], sys.argv[2], sys.argv[3]
    auth = Authority.from_config(load_config(Path(data_dir)))
    csr = Path(csr_path).read_bytes()
    # Some certificates complete before the crash.
    for _ in range(3):
        issue(auth, IssuanceRequest(csr, "server", "subprocess"))
    def hook(reached):
        if reached == step:
            os.kill(os.getpid(), signal.SIGKILL)
    issue(auth, IssuanceRequest(csr, "server", "subprocess"), on_step=hook)
    print("not reached")
    """
)


@pytest.mark.parametrize("step", ["intent", "signed"])
def test_kill_9_between_intent_and_store(ca_env, tmp_path, step):
    auth = ca_env.auth
    csr_path = tmp_path / "req.pem"
    csr_path.write_bytes(make_csr(["killed.corp.test"]))
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, str(script), str(ca_env.data_dir), str(csr_path), step],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "not reached" not in proc.stdout

    states = _intent_states(auth)
    pending = [s for s, state in states.items() if state == "pending"]
    assert len(pending) == 1
    resolved = recover_intents(auth)
    assert resolved == pending
    # Every stored certificate is retrievable, and parses with its stored serial.
    issued = [s for s, state in states.items() if state == "issued"]
    assert len(issued) == 2 + 3  # root, intermediate, three leaves
    for serial in issued:
        if serial == auth.db.get_ca("root").serial:
            continue
        row = auth.db.get_certificate(serial)
        assert x509.load_der_x509_certificate(row.der).serial_number == int(serial, 16)
    # No serial reused after restart.
    new = issue(auth, IssuanceRequest(csr_path.read_bytes(), "server", "after-restart"))
    assert new.serial not in states
    assert verify_chain(auth.db.audit_entries()) == len(auth.db.audit_events())


def test_audit_details_record_what_was_issued(ca_env):
    issued = issue(ca_env.auth, IssuanceRequest(make_csr(["audit.corp.test"]), "client", "alice"))
    events = ca_env.auth.db.audit_events()
    requested, done = events[-2], events[-1]
    assert requested.details["serial"] == issued.serial
    assert requested.details["sans"] == ["dns:audit.corp.test"]
    assert requested.details["profile"] == "client"
    assert (
        done.details["fingerprint_sha256"]
        == ca_env.auth.db.get_certificate(issued.serial).fingerprint_sha256
    )
    assert json.loads(json.dumps(done.details)) == done.details


def test_overlong_profile_name_is_denied_and_audited_on_every_database(ca_env):
    auth = ca_env.auth
    with pytest.raises(UnknownProfile):
        issue(auth, IssuanceRequest(make_csr(["long.corp.test"]), "p" * 1000, "t" * 500))
    denial = auth.db.audit_events()[-1]
    assert denial.action == "certificate.denied" and denial.details["profile"] == "p" * 1000
    assert len(denial.subject) == 256 and len(denial.actor) == 128
    verify_chain(auth.db.audit_entries())


def test_hsm_outage_is_raised_not_recorded_as_a_denial(ca_env, monkeypatch):
    from ca.errors import HsmUnavailable

    auth = ca_env.auth
    before = len(auth.db.audit_events())

    def down(name):
        raise HsmUnavailable("token gone")

    monkeypatch.setattr(auth, "issuer", down)
    with pytest.raises(HsmUnavailable):
        issue(auth, IssuanceRequest(make_csr(["outage.corp.test"]), "server", "t"))
    assert len(auth.db.audit_events()) == before
