"""Revocation and CRLs on a real CA (SoftHSM token; SQLite and PostgreSQL).

Revocation through the core, the REST API and the CLI; CRLs checked by openssl (signature,
revoked serials and reasons, ``verify -crl_check``) and pkilint; partitioned CRLs; the HTTP
endpoint with its caching headers; the publisher's schedule; revoking an intermediate.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from helpers import make_csr, openssl, run_hsmca, tool

from ca.audit import verify_chain
from ca.authority import Authority
from ca.clients import create_client
from ca.config import CrlConfig, ProfileConfig
from ca.errors import BadRequest, Conflict, Forbidden, HsmUnavailable, NotFound
from ca.hierarchy import create_intermediate
from ca.issuance import IssuanceRequest, issue
from ca.policy import Requester
from ca.revocation import revoke, revoke_ca
from ca.store import crls
from crl.publisher import due, publish, run_once
from web import create_app

pytestmark = [pytest.mark.hsm, pytest.mark.db]

PEM = serialization.Encoding.PEM
HSMCA = str(Path(sys.executable).parent / "hsmca")


def _auth(env, **crl) -> Authority:
    """An Authority over the test CA with other [crl] settings (same database and token)."""
    profiles = dict(env.config.profiles)
    profiles["second"] = ProfileConfig(issuer="second", dns_names=["."])
    config = env.config.model_copy(
        update={"crl": CrlConfig(**crl), "profiles": profiles} if crl else {"profiles": profiles}
    )
    return Authority(config=config, db=env.auth.db, keys=env.auth.keys)


def _issue(auth, name, profile="server", requester="test"):
    return issue(auth, IssuanceRequest(make_csr([name]), profile, requester))


def _serial(issued) -> int:
    return issued.certificate.serial_number


def _crl(auth, ca="issuing", shard=0) -> x509.CertificateRevocationList:
    ca_id = auth.db.get_ca(ca).id
    meta = crls.latest_crl(auth.db, ca_id, shard)
    assert meta is not None, f"no CRL of {ca}/{shard}"
    return x509.load_der_x509_crl(crls.crl_der(auth.db, meta.id))


def _cdp(cert: x509.Certificate) -> str:
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    return points[0].full_name[0].value


def _reason(crl, serial: int) -> x509.ReasonFlags | None:
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None, f"{serial:x} is not listed"
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return None


def _write(path: Path, *items) -> Path:
    path.write_bytes(b"".join(i.public_bytes(PEM) for i in items))
    return path


def _lint_crl(crl, tmp_path: Path, crl_type: str = "CRL") -> list[str]:
    """pkilint's ERROR and FATAL findings for a CRL (BR profile, which includes PKIX)."""
    path = _write(tmp_path / "lint.crl", crl)
    proc = subprocess.run(
        [tool("lint_crl"), "lint", "-t", crl_type, "-p", "BR", "-s", "ERROR", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    findings = [ln.strip() for ln in proc.stdout.splitlines() if "(ERROR)" in ln or "(FATAL)" in ln]
    # pkilint exits with the number of findings; a crash shows as a traceback on stderr.
    if "Traceback" in proc.stderr or (proc.returncode and not findings):
        raise AssertionError(f"lint_crl failed (exit {proc.returncode}): {proc.stderr[-500:]}")
    return findings


# Revocation in the core ---------------------------------------------------------------------


def test_revocation_records_time_reason_and_audit_event(ca_env):
    auth = ca_env.auth
    issued = _issue(auth, "gone.corp.test")
    before = auth.now()
    done = revoke(auth, issued.serial, "keyCompromise", "operator", comment="laptop stolen")
    row = auth.db.get_certificate(issued.serial)
    assert row.status == "revoked" and row.revocation_reason == 1
    assert row.revoked_at is not None and before <= row.revoked_at <= auth.now()
    assert done.revoked_at == row.revoked_at and done.issuer == "issuing"
    event = auth.db.audit_events("certificate.revoked")[-1]
    assert event.actor == "operator" and event.subject == issued.serial
    assert event.details["reason"] == "keyCompromise" and event.details["reason_code"] == 1
    assert event.details["comment"] == "laptop stolen" and event.details["issuer"] == "issuing"
    assert verify_chain(auth.db.audit_entries()) > 0


def test_revoking_twice_unknown_serials_and_bad_reasons_are_refused(ca_env):
    auth = ca_env.auth
    issued = _issue(auth, "twice.corp.test")
    revoke(auth, issued.serial, "superseded", "operator")
    with pytest.raises(Conflict, match="already revoked"):
        revoke(auth, issued.serial, "keyCompromise", "operator")
    assert auth.db.get_certificate(issued.serial).revocation_reason == 4  # unchanged
    with pytest.raises(NotFound):
        revoke(auth, "abcdef0123456789", "superseded", "operator")
    other = _issue(auth, "reasons.corp.test")
    for reason in ("certificateHold", "removeFromCRL", "cACompromise", "aACompromise", "bogus"):
        with pytest.raises(BadRequest):
            revoke(auth, other.serial, reason, "operator")
    assert auth.db.get_certificate(other.serial).status == "issued"
    ca_serial = auth.db.get_ca("issuing").serial
    with pytest.raises(Conflict, match="hsmca ca revoke"):
        revoke(auth, ca_serial, "keyCompromise", "operator")
    assert len(auth.db.audit_events("certificate.revoked")) == 1


def test_after_revoke_hooks_run_after_the_commit_and_cannot_undo_it(ca_env):
    auth = ca_env.auth
    issued = _issue(auth, "hooked.corp.test")
    seen = []

    def look(a, revocation):
        seen.append((revocation.serial, a.db.get_certificate(revocation.serial).status))

    def fail(a, revocation):
        raise RuntimeError("OCSP signer down")

    done = revoke(auth, issued.serial, "cessationOfOperation", "operator", after=[fail, look])
    assert seen == [(issued.serial, "revoked")]
    assert done.hook_errors == ("RuntimeError: OCSP signer down",)
    assert auth.db.get_certificate(issued.serial).status == "revoked"


def test_requesters_may_revoke_their_own_certificates_only(ca_env):
    auth = ca_env.auth
    issued = _issue(auth, "mine.corp.test", requester="alice")
    bob = Requester(name="bob", roles=frozenset({"enroll"}))
    with pytest.raises(NotFound):
        revoke(auth, issued.serial, "superseded", "bob", requester=bob)
    reader = Requester(name="carol", roles=frozenset({"enroll", "read"}))
    with pytest.raises(Forbidden):
        revoke(auth, issued.serial, "superseded", "carol", requester=reader)
    assert auth.db.audit_events("certificate.revocation_denied")[-1].actor == "carol"
    alice = Requester(name="alice", roles=frozenset({"enroll"}))
    revoke(auth, issued.serial, "superseded", "alice", requester=alice)
    theirs = _issue(auth, "theirs.corp.test", requester="dave")
    revoker = Requester(name="sec", roles=frozenset({"revoke"}))
    revoke(auth, theirs.serial, "keyCompromise", "sec", requester=revoker)
    assert auth.db.get_certificate(theirs.serial).status == "revoked"


# CRLs ------------------------------------------------------------------------------------------


def test_crl_lists_revoked_serials_with_reasons_and_openssl_checks_it(ca_env, tmp_path):
    auth = ca_env.auth
    bad = _issue(auth, "bad.corp.test")
    quiet = _issue(auth, "quiet.corp.test")
    good = _issue(auth, "good.corp.test")
    revoke(auth, bad.serial, "keyCompromise", "operator")
    revoke(auth, quiet.serial, "unspecified", "operator")
    [published] = publish(auth, "issuing")
    assert published.entries == 2 and published.url == "http://pki.hsmca.test/crl/issuing.crl"
    crl = _crl(auth)
    assert _reason(crl, _serial(bad)) == x509.ReasonFlags.key_compromise
    assert _reason(crl, _serial(quiet)) is None  # RFC 5280 5.3.1: no reasonCode for unspecified
    assert crl.get_revoked_certificate_by_serial_number(_serial(good)) is None
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = bad.chain[0].extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert crl.next_update_utc - crl.last_update_utc == timedelta(hours=168)
    with pytest.raises(x509.ExtensionNotFound):
        crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)

    crl_pem = _write(tmp_path / "crl.pem", crl)
    chain = _write(tmp_path / "chain.pem", *bad.chain)
    checked = openssl("crl", "-in", str(crl_pem), "-CAfile", str(chain), "-noout", "-verify")
    assert checked.returncode == 0 and "verify OK" in checked.stdout + checked.stderr
    text = openssl("crl", "-in", str(crl_pem), "-noout", "-text").stdout
    assert f"{_serial(bad):X}" in text.replace(":", "") and "Key Compromise" in text

    def verify(issued):
        leaf = _write(tmp_path / "leaf.pem", issued.certificate)
        return openssl(
            "verify",
            "-crl_check",
            "-CRLfile",
            str(crl_pem),
            "-CAfile",
            str(ca_env.root_pem),
            "-untrusted",
            str(chain),
            str(leaf),
        )

    rejected = verify(bad)
    assert rejected.returncode != 0 and "revoked" in rejected.stdout + rejected.stderr
    accepted = verify(good)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert _lint_crl(crl, tmp_path) == []
    events = auth.db.audit_events("crl.published")
    assert events[-1].details["number"] == 1 and events[-1].details["entries"] == 2


def test_crl_numbers_only_grow(ca_env):
    auth = ca_env.auth
    numbers = []
    for i in range(3):
        revoke(auth, _issue(auth, f"n{i}.corp.test").serial, "superseded", "operator")
        [published] = publish(auth, "issuing")
        numbers.append(published.number)
        crl_number = _crl(auth).extensions.get_extension_for_class(x509.CRLNumber).value
        assert crl_number.crl_number == published.number
        assert len(_crl(auth)) == i + 1
    assert numbers == [1, 2, 3]


def test_large_crl_takes_the_fast_path_and_stays_valid(ca_env, tmp_path, monkeypatch):
    import crl.build

    auth = ca_env.auth
    for i in range(4):
        revoke(auth, _issue(auth, f"fast{i}.corp.test").serial, "keyCompromise", "operator")
    monkeypatch.setattr(crl.build, "FAST_PATH_MIN_ENTRIES", 2)
    publish(auth, "issuing")
    fast = _crl(auth)
    public_key = auth.issuer("issuing").certificate.public_key()
    assert len(fast) == 4 and fast.is_signature_valid(public_key)
    monkeypatch.setattr(crl.build, "FAST_PATH_MIN_ENTRIES", 10**9)
    publish(auth, "issuing")
    slow = _crl(auth)
    assert slow.is_signature_valid(public_key)
    assert [(r.serial_number, r.revocation_date_utc) for r in fast] == [
        (r.serial_number, r.revocation_date_utc) for r in slow
    ]
    assert _lint_crl(fast, tmp_path) == []


def test_partitioned_crls_name_their_url_and_list_only_their_serials(ca_env, tmp_path):
    auth = _auth(ca_env, shards=3)
    issued = [_issue(auth, f"s{i}.corp.test") for i in range(9)]
    for cert in issued:
        shard = _serial(cert) % 3
        assert _cdp(cert.certificate) == f"http://pki.hsmca.test/crl/issuing/{shard}.crl"
        assert auth.db.get_certificate(cert.serial).serial == cert.serial
    revoked = issued[:6]
    for cert in revoked:
        revoke(auth, cert.serial, "superseded", "operator")
    published = publish(auth, "issuing")
    assert [p.shard for p in published] == [0, 1, 2]
    chain = _write(tmp_path / "chain.pem", *issued[0].chain)
    for p in published:
        crl = _crl(auth, shard=p.shard)
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
        assert idp.critical and idp.value.full_name[0].value == p.url
        assert p.url == f"http://pki.hsmca.test/crl/issuing/{p.shard}.crl"
        assert {r.serial_number for r in crl} == {
            _serial(c) for c in revoked if _serial(c) % 3 == p.shard
        }
        assert _lint_crl(crl, tmp_path) == []
        # openssl matches the IDP against each certificate's CDP: right shard, right answer.
        crl_pem = _write(tmp_path / f"crl{p.shard}.pem", crl)
        for cert in issued:
            if _serial(cert) % 3 != p.shard:
                continue
            leaf = _write(tmp_path / "leaf.pem", cert.certificate)
            proc = openssl(
                "verify",
                "-crl_check",
                "-CRLfile",
                str(crl_pem),
                "-CAfile",
                str(ca_env.root_pem),
                "-untrusted",
                str(chain),
                str(leaf),
            )
            assert (proc.returncode == 0) == (cert not in revoked), proc.stdout + proc.stderr
    # The root's CRL is never partitioned; neither are the intermediate's CDP and shard.
    assert [p.shard for p in publish(auth, "root")] == [0]
    issuing_row = auth.db.get_certificate(auth.db.get_ca("issuing").serial)
    assert _cdp(x509.load_der_x509_certificate(issuing_row.der)).endswith("/crl/root.crl")


# The publisher's schedule ----------------------------------------------------------------------


def test_run_once_publishes_what_is_missing_old_or_behind_revocations(ca_env):
    auth = _auth(ca_env, revocation_delay_seconds=30, refresh_hours=24)
    now = auth.now()
    first = run_once(auth, now)
    assert sorted((p.ca, p.number) for p in first) == [("issuing", 1), ("root", 1)]
    assert run_once(auth, now + timedelta(seconds=5)) == []

    issued = _issue(auth, "sched.corp.test")
    done = revoke(auth, issued.serial, "keyCompromise", "operator")
    assert due(auth, done.revoked_at + timedelta(seconds=29)) == []  # debounced
    later = done.revoked_at + timedelta(seconds=31)
    [after] = run_once(auth, later)
    assert (after.ca, after.number, after.entries) == ("issuing", 2, 1)
    assert run_once(auth, later + timedelta(seconds=1)) == []

    refreshed = run_once(auth, later + timedelta(hours=24))  # the root's is a little older
    assert sorted((p.ca, p.number) for p in refreshed) == [("issuing", 3), ("root", 2)]


def test_run_once_skips_a_ca_whose_key_is_unavailable(ca_env, monkeypatch, caplog):
    auth = _auth(ca_env)
    real_load = auth.keys.load
    root_token = auth.config.root_token_label

    def offline_root(ref):
        if ref.token_label == root_token:
            raise HsmUnavailable("token 'hsmca-root' is not present")
        return real_load(ref)

    monkeypatch.setattr(auth.keys, "load", offline_root)
    with caplog.at_level(logging.INFO, logger="hsmca.crl"):
        published = run_once(auth, auth.now())
    assert [p.ca for p in published] == ["issuing"]
    assert "'root'" in caplog.text and "hsmca crl generate --ca root" in caplog.text
    assert [d.ca for d in due(auth, auth.now())] == ["root"]


# The HTTP endpoint -----------------------------------------------------------------------------


def test_crl_endpoint_serves_der_with_caching_headers_and_304(ca_env):
    auth = ca_env.auth
    client = create_app(auth.config, lambda cfg: auth, surface="plain").test_client()
    waiting = client.get("/crl/issuing.crl")
    assert waiting.status_code == 503 and waiting.headers["Retry-After"] == "60"
    assert waiting.mimetype == "application/problem+json"

    revoke(auth, _issue(auth, "http.corp.test").serial, "superseded", "operator")
    [published] = publish(auth, "issuing")
    resp = client.get("/crl/issuing.crl")
    assert resp.status_code == 200 and resp.mimetype == "application/pkix-crl"
    assert (
        x509.load_der_x509_crl(resp.data)
        .extensions.get_extension_for_class(x509.CRLNumber)
        .value.crl_number
        == published.number
    )
    assert resp.headers["ETag"] == f'"{published.sha256}"'
    assert resp.last_modified == published.this_update
    max_age = resp.cache_control.max_age
    assert resp.cache_control.public and max_age is not None and 0 < max_age <= 24 * 3600

    etag = resp.headers["ETag"]
    same = client.get("/crl/issuing.crl", headers={"If-None-Match": etag})
    assert same.status_code == 304 and same.data == b"" and same.headers["ETag"] == etag
    weak = client.get("/crl/issuing.crl", headers={"If-None-Match": f'W/{etag}, "x"'})
    assert weak.status_code == 304
    since = client.get(
        "/crl/issuing.crl", headers={"If-Modified-Since": resp.headers["Last-Modified"]}
    )
    assert since.status_code == 304
    stale = client.get("/crl/issuing.crl", headers={"If-None-Match": '"0000"'})
    assert stale.status_code == 200 and stale.data == resp.data

    publish(auth, "issuing")
    newer = client.get("/crl/issuing.crl", headers={"If-None-Match": etag})
    assert newer.status_code == 200 and newer.headers["ETag"] != etag

    for path in ("/crl/nope.crl", "/crl/issuing/0.crl", "/crl/issuing/x.crl", "/crl/nope/1.crl"):
        missing = client.get(path)
        assert missing.status_code == 404, path
        assert missing.mimetype == "application/problem+json", path
    assert client.head("/crl/issuing.crl").status_code == 200


def test_partitioned_crls_are_served_at_their_own_urls(ca_env):
    auth = _auth(ca_env, shards=3)
    client = create_app(auth.config, lambda cfg: auth).test_client()
    publish(auth, "issuing")
    bodies = set()
    for shard in range(3):
        resp = client.get(f"/crl/issuing/{shard}.crl")
        assert resp.status_code == 200 and resp.mimetype == "application/pkix-crl"
        idp = x509.load_der_x509_crl(resp.data).extensions.get_extension_for_class(
            x509.IssuingDistributionPoint
        )
        assert idp.value.full_name[0].value.endswith(f"/crl/issuing/{shard}.crl")
        bodies.add(resp.data)
    assert len(bodies) == 3
    for path in ("/crl/issuing.crl", "/crl/issuing/3.crl", "/crl/issuing/01.crl"):
        assert client.get(path).status_code == 404, path


# REST ------------------------------------------------------------------------------------------


def _token(auth, name, roles) -> dict[str, str]:
    _, token = create_client(auth, name, roles, [], [], "test")
    return {"Authorization": f"Bearer {token}"}


def _enroll(client, headers, name) -> str:
    body = {"csr": make_csr([name]).decode(), "profile": "server"}
    resp = client.post("/api/v1/certificates", json=body, headers=headers)
    assert resp.status_code == 201, resp.json
    return str(resp.json["serial"])


def test_rest_revoke_by_requester_revoker_and_the_refusals(ca_env, monkeypatch):
    import web.hooks

    hooked = []
    monkeypatch.setattr(
        web.hooks,
        "after_revoke_hooks",
        lambda: (lambda auth, revoked: hooked.append(revoked.serial),),
    )
    auth = ca_env.auth
    client = create_app(auth.config, lambda cfg: auth).test_client()
    alice = _token(auth, "alice", ["enroll"])
    bob = _token(auth, "bob", ["enroll"])
    reader = _token(auth, "reader", ["read"])
    security = _token(auth, "security", ["revoke"])
    mine = _enroll(client, alice, "alice.corp.test")
    other = _enroll(client, bob, "bob.corp.test")

    def post(serial, headers, body=None):
        return client.post(
            f"/api/v1/certificates/{serial}/revoke",
            json=body if body is not None else {"reason": "keyCompromise"},
            headers=headers,
        )

    assert post(mine, bob).status_code == 404  # bob may not know of alice's certificate
    denied = post(mine, reader)
    assert denied.status_code == 403 and denied.mimetype == "application/problem+json"
    assert post(mine, {}).status_code == 401
    for body in ({"reason": "certificateHold"}, {"reason": "cACompromise"}, {}, {"reason": 1}):
        bad = post(mine, alice, body)
        assert bad.status_code == 400, body
        assert bad.json["type"] == "urn:hsmca:problem:malformed-request"
    assert auth.db.get_certificate(mine).status == "issued"

    ok = post(mine, alice, {"reason": "superseded", "comment": "replaced"})
    assert ok.status_code == 200, ok.json
    assert ok.json["status"] == "revoked" and ok.json["revocation_reason"] == "superseded"
    assert ok.json["revoked_at"].endswith("Z")
    assert hooked == [mine]
    again = post(mine, alice)
    assert again.status_code == 409 and again.mimetype == "application/problem+json"
    assert again.json["type"] == "urn:hsmca:problem:conflict"
    assert "already revoked" in again.json["detail"]

    assert post(other, security).status_code == 200
    assert post("abcdef0123456789", security).status_code == 404
    assert post("not-hex", security).status_code == 404
    ca_serial = auth.db.get_ca("issuing").serial
    assert post(ca_serial, security).status_code == 409
    listed = client.get("/api/v1/certificates?status=revoked", headers=reader)
    assert {c["serial"] for c in listed.json["items"]} == {mine, other}
    events = auth.db.audit_events("certificate.revoked")
    assert [(e.actor, e.subject) for e in events] == [("alice", mine), ("security", other)]
    assert verify_chain(auth.db.audit_entries()) > 0


# Revoking an intermediate ----------------------------------------------------------------------


def test_revoked_intermediate_is_in_the_roots_crl_and_stops_issuing(ca_env, tmp_path):
    auth = _auth(ca_env)
    create_intermediate(auth, "second", actor="test")
    leaf = _issue(auth, "second.corp.test", profile="second")
    # Another process that loaded the CA before it was revoked (a gunicorn worker, say).
    worker = _auth(ca_env)
    worker.issuer("second")
    publish(auth, "root")
    publish(auth, "second")
    first_root_crl, second_crl = _crl(auth, "root"), _crl(auth, "second")

    with pytest.raises(BadRequest):
        revoke_ca(auth, "second", "certificateHold", "operator")
    with pytest.raises(Conflict, match="root"):
        revoke_ca(auth, "root", "cACompromise", "operator")
    done = revoke_ca(auth, "second", "cACompromise", "operator")
    assert done.ca == "second" and done.issuer == "root"
    assert auth.db.get_ca("second").status == "revoked"
    with pytest.raises(Conflict, match="already revoked"):
        revoke_ca(auth, "second", "cACompromise", "operator")
    event = auth.db.audit_events("ca.revoked")[-1]
    assert event.subject == "second" and event.details["reason"] == "cACompromise"

    [published] = publish(auth, "root")
    assert published.number == 2
    root_crl = _crl(auth, "root")
    second_serial = int(auth.db.get_ca("second").serial, 16)
    assert _reason(root_crl, second_serial) == x509.ReasonFlags.ca_compromise
    assert published.entries == 1
    assert _lint_crl(root_crl, tmp_path, "ARL") == []
    root = x509.load_pem_x509_certificate(ca_env.root_pem.read_bytes())
    assert root_crl.is_signature_valid(root.public_key())

    for who in (auth, worker):
        with pytest.raises(NotFound, match="revoked"):
            _issue(who, "after.corp.test", profile="second")
    assert auth.db.audit_events("certificate.denied")[-1].details["error"] == "notFound"
    _issue(worker, "still.corp.test")  # the other issuing CA is unaffected
    assert "second" not in {d.ca for d in due(auth, auth.now())}
    with pytest.raises(NotFound):
        publish(auth, "second")

    # openssl: with the root's CRL, the chain under 'second' fails at the intermediate.
    chain = _write(tmp_path / "chain.pem", *leaf.chain)
    crl_file = _write(tmp_path / "crls.pem", root_crl, second_crl)
    proc = openssl(
        "verify",
        "-crl_check_all",
        "-CRLfile",
        str(crl_file),
        "-CAfile",
        str(ca_env.root_pem),
        "-untrusted",
        str(chain),
        str(_write(tmp_path / "leaf.pem", leaf.certificate)),
    )
    assert proc.returncode != 0 and "revoked" in proc.stdout + proc.stderr
    before = _write(tmp_path / "before.pem", first_root_crl, second_crl)
    proc = openssl(
        "verify",
        "-crl_check_all",
        "-CRLfile",
        str(before),
        "-CAfile",
        str(ca_env.root_pem),
        "-untrusted",
        str(chain),
        str(tmp_path / "leaf.pem"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# CLI -------------------------------------------------------------------------------------------


def _cli(env, *args: str) -> subprocess.CompletedProcess[str]:
    return run_hsmca(env.data_dir, *args, timeout=120)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cli_revoke_generate_and_list(ca_env):
    auth = ca_env.auth
    issued = _issue(auth, "cli.corp.test")
    colons = ":".join(issued.serial[i : i + 2] for i in range(0, len(issued.serial), 2))
    proc = _cli(ca_env, "revoke", colons.upper(), "--reason", "affiliationChanged")
    assert proc.returncode == 0, proc.stderr
    assert f"revoked certificate {issued.serial}" in proc.stderr
    again = _cli(ca_env, "revoke", issued.serial, "--reason", "affiliationChanged")
    assert again.returncode == 1 and "already revoked" in again.stderr
    bad = _cli(ca_env, "revoke", issued.serial, "--reason", "certificateHold")
    assert bad.returncode == 2 and "certificateHold" in bad.stderr
    assert _cli(ca_env, "revoke", "abcdef0123456789", "--reason", "superseded").returncode == 1

    generated = _cli(ca_env, "crl", "generate", "--ca", "issuing")
    assert generated.returncode == 0, generated.stderr
    assert (
        "published http://pki.hsmca.test/crl/issuing.crl: number 1, 1 entries" in generated.stdout
    )
    assert _reason(_crl(auth), _serial(issued)) == x509.ReasonFlags.affiliation_changed
    listed = _cli(ca_env, "crl", "list")
    assert listed.returncode == 0 and '"ca": "issuing"' in listed.stdout

    create_intermediate(auth, "spare", actor="test")
    revoked = _cli(ca_env, "ca", "revoke", "spare", "--reason", "cessationOfOperation")
    assert revoked.returncode == 0, revoked.stderr
    assert "hsmca crl generate --ca root" in revoked.stderr
    root = _cli(ca_env, "crl", "generate", "--ca", "root")
    assert root.returncode == 0 and "1 entries" in root.stdout
    assert _cli(ca_env, "ca", "revoke", "root", "--reason", "cACompromise").returncode == 1
    actions = [e.action for e in auth.db.audit_events() if e.actor.startswith("cli:")]
    assert actions == ["certificate.revoked", "crl.published", "ca.revoked", "crl.published"]


def test_init_publishes_the_first_crls(tmp_path):
    data = tmp_path / "data"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HSMCA_", "SOFTHSM2_CONF"))}
    run = lambda *a: subprocess.run(  # noqa: E731
        [HSMCA, "--data-dir", str(data), *a], env=base, capture_output=True, text=True, check=False
    )
    init = run("init")
    assert init.returncode == 0, init.stderr
    assert "crl: published http://127.0.0.1:8080/crl/root.crl (number 1)" in init.stdout
    assert "crl: published http://127.0.0.1:8080/crl/issuing.crl (number 1)" in init.stdout
    listed = run("crl", "list")
    assert listed.stdout.count('"number": 1') == 2
