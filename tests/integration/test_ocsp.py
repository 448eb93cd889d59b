"""OCSP: responder certificates, pre-signed responses, the per-worker responder and its endpoints.

Real SoftHSM token, SQLite and PostgreSQL (``ca_env``). The live-server tests (openssl ocsp over
HTTP against gunicorn) are in ``test_ocsp_live.py``.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp as xocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from helpers import make_csr
from sqlalchemy import update

import ocsp
from ca.authority import Authority
from ca.errors import HsmUnavailable, NotFound, StoreError
from ca.issuance import IssuanceRequest, issue
from ca.store import ocsp as store
from ca.store import tables as t
from ocsp import der, presign, responders
from ocsp.request import MalformedRequest, parse_request
from ocsp.service import OcspService, TokenBucket
from ocsp.signer import IssuerIds, public_key_bits
from web import create_app

pytestmark = [pytest.mark.hsm, pytest.mark.db]

DER = serialization.Encoding.DER


@dataclass
class Clock:
    """A clock the test moves."""

    at: datetime

    def now(self) -> datetime:
        return self.at


@pytest.fixture
def env(ca_env):
    """The test CA with its responders created and every response pre-signed."""
    report = ocsp.set_up(ca_env.auth, actor="test")
    assert set(report.responders.created) == {"root", "issuing"}
    assert report.responders.errors == {} and report.presigned.errors == {}
    return ca_env


def leaf(env, name="www.corp.test"):
    return issue(env.auth, IssuanceRequest(make_csr([name]), "server", "test"))


def ocsp_request(cert, issuer, algorithm=None, nonce=None) -> bytes:
    builder = xocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(DER)


def request_for_serial(issuer, serial: int, nonce=None) -> bytes:
    ids = IssuerIds.of(0, "x", issuer)
    builder = xocsp.OCSPRequestBuilder().add_certificate_by_hash(
        ids.name_hashes["sha1"], ids.key_hashes["sha1"], serial, hashes.SHA1()
    )
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(DER)


def multi_request(pairs, nonce=None) -> bytes:
    """A request naming several (certificate, issuer) pairs (cryptography builds only one)."""
    items = []
    for cert, issuer in pairs:
        ids = IssuerIds.of(0, "x", issuer)
        items.append(
            {
                "req_cert": {
                    "hash_algorithm": {"algorithm": "sha1"},
                    "issuer_name_hash": ids.name_hashes["sha1"],
                    "issuer_key_hash": ids.key_hashes["sha1"],
                    "serial_number": cert.serial_number if hasattr(cert, "serial_number") else cert,
                }
            }
        )
    tbs: dict = {"request_list": items}
    if nonce is not None:
        tbs["request_extensions"] = [{"extn_id": "nonce", "extn_value": nonce}]
    return asn1_ocsp.OCSPRequest({"tbs_request": tbs}).dump()


def parse(body: bytes) -> xocsp.OCSPResponse:
    return xocsp.load_der_ocsp_response(body)


def verify_signature(resp: xocsp.OCSPResponse, issuer: x509.Certificate) -> x509.Certificate:
    """The responder certificate: issued by ``issuer``, OCSPSigning, and it signed ``resp``."""
    (responder,) = resp.certificates
    responder.verify_directly_issued_by(issuer)
    eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    from cryptography.hazmat.primitives.asymmetric import ec

    responder.public_key().verify(  # type: ignore[call-arg]
        resp.signature, resp.tbs_response_bytes, ec.ECDSA(resp.signature_hash_algorithm)
    )
    assert resp.responder_key_hash == hashlib.sha1(public_key_bits(responder)).digest()
    return responder


# --- responders -------------------------------------------------------------------------------


def test_set_up_makes_a_responder_per_ca_with_the_br_profile(env):
    auth = env.auth
    rows = store.responders(auth.db)
    assert len(rows) == 2
    issuing = auth.db.get_ca("issuing")
    row = responders.current(rows, issuing.id)
    assert row is not None and row.key_type == "ec:P-256"
    cert = x509.load_der_x509_certificate(row.certificate_der)
    issuer_cert = x509.load_der_x509_certificate(issuing.certificate_der)
    cert.verify_directly_issued_by(issuer_cert)
    ext = cert.extensions
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.OCSP_SIGNING
    ]
    assert ext.get_extension_for_class(x509.OCSPNoCheck).critical is False
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life == timedelta(days=auth.config.ocsp.responder_validity_days, seconds=-1)
    # The key is in the HSM, sensitive and not extractable.
    from ca.keys import KeyRef

    ref = KeyRef(row.key_token, row.key_label, row.key_id)
    attrs = auth.keys.key_attributes(ref)  # type: ignore[attr-defined]
    assert attrs["sensitive"] and not attrs["extractable"]
    assert auth.keys.try_export_private_value(ref) is None  # type: ignore[attr-defined]
    # Issued with the intent pattern: a certificates row and audit events.
    assert auth.db.get_certificate(row.serial).profile == responders.PROFILE
    actions = [e.action for e in auth.db.audit_events() if e.action.startswith("ocsp.")]
    assert actions.count("ocsp.responder_requested") == 2
    assert actions.count("ocsp.responder_created") == 2
    created = auth.db.audit_events("ocsp.responder_created")[-1]
    assert created.details["ca"] in ("root", "issuing") and created.details["supersedes"] == []


def test_responders_run_once_is_idempotent_and_renews_before_expiry(env):
    auth = env.auth
    assert responders.run_once(auth, auth.now()).created == {}
    issuing = auth.db.get_ca("issuing")
    old = responders.current(store.responders(auth.db), issuing.id)
    assert old is not None
    renew = auth.config.ocsp.responder_renew_days
    almost = old.not_after - timedelta(days=renew, hours=1)
    assert responders.run_once(auth, almost).created == {}
    due = old.not_after - timedelta(days=renew - 1)
    report = responders.run_once(auth, due)
    assert set(report.created) == {"root", "issuing"}
    new = responders.current(store.responders(auth.db), issuing.id)
    assert new is not None and new.id != old.id and new.not_after > old.not_after
    statuses = {r.serial: r.status for r in store.responders(auth.db, status=None)}
    assert statuses[old.serial] == "superseded" and statuses[new.serial] == "active"
    event = auth.db.audit_events("ocsp.responder_created")[-1]
    assert event.details["supersedes"]
    # Responses signed by the old responder are re-signed by the new one on the next run.
    signed = presign.run_once(auth, due)
    assert signed.signed == store.response_count(auth.db)
    key_hash = hashlib.sha1(
        public_key_bits(x509.load_der_x509_certificate(new.certificate_der))
    ).digest()
    _, stored = store.lookup(auth.db, issuing.id, new.serial)
    assert stored is not None and parse(stored.der).responder_key_hash == key_hash


# --- pre-signing ------------------------------------------------------------------------------


def test_presign_signs_missing_and_stale_responses_and_drops_expired(env):
    auth = env.auth
    issued = [leaf(env, f"h{i}.corp.test") for i in range(5)]
    now = auth.now()
    first = presign.run_once(auth, now)
    assert first.signed == 5 and first.errors == {}
    assert presign.run_once(auth, now).signed == 0  # nothing is stale yet
    issuing = auth.db.get_ca("issuing")
    status, stored = store.lookup(
        auth.db, issuing.id, format(issued[0].certificate.serial_number, "x")
    )
    assert status is not None and stored is not None and stored.cert_status == "good"
    resp = parse(stored.der)
    assert resp.certificate_status == xocsp.OCSPCertStatus.GOOD
    assert resp.next_update_utc - resp.this_update_utc == timedelta(
        hours=auth.config.ocsp.response_validity_hours, seconds=-1
    )
    verify_signature(resp, issued[0].chain[0])
    # A day later every response is older than refresh_hours: all are re-signed.
    total = store.response_count(auth.db)
    later = now + timedelta(hours=auth.config.ocsp.refresh_hours, minutes=1)
    assert presign.run_once(auth, later).signed == total
    # An expired certificate's response is dropped and not signed again.
    with auth.db.write() as conn:
        conn.execute(
            update(t.Certificate)
            .where(t.Certificate.serial == status.serial)
            .values(not_after=now - timedelta(seconds=1))
        )
    report = presign.run_once(auth, later)
    assert report.dropped == 1 and report.signed == 0
    assert store.lookup(auth.db, issuing.id, status.serial)[1] is None


def test_presign_batches_are_stored_per_batch(env):
    auth = env.auth
    for i in range(7):
        leaf(env, f"b{i}.corp.test")
    report = presign.run_once(auth, auth.now(), batch=3)
    assert report.signed == 7
    assert presign.run_once(auth, auth.now(), batch=3).signed == 0


def test_refresh_certificate_resigns_after_a_revocation(env):
    auth = env.auth
    issued = leaf(env)
    presign.run_once(auth, auth.now())
    serial = format(issued.certificate.serial_number, "x")
    revoked_at = auth.now().replace(microsecond=0) - timedelta(minutes=1)
    with auth.db.write() as conn:
        conn.execute(
            update(t.Certificate)
            .where(t.Certificate.serial == serial)
            .values(status="revoked", revoked_at=revoked_at, revocation_reason=1)
        )
    stored = ocsp.refresh_certificate(auth, serial)
    assert stored.cert_status == "revoked"
    resp = parse(stored.der)
    assert resp.certificate_status == xocsp.OCSPCertStatus.REVOKED
    assert resp.revocation_time_utc == revoked_at
    assert resp.revocation_reason == x509.ReasonFlags.key_compromise
    with pytest.raises(NotFound):
        ocsp.refresh_certificate(auth, "abcdef")


# --- DER written by hand equals what cryptography builds --------------------------------------


@pytest.mark.parametrize("status", ["good", "revoked", "revoked-unspecified", "unknown"])
@pytest.mark.parametrize("nonce", [None, b"\x01" * 16])
def test_hand_written_der_matches_cryptography_builder(env, status, nonce):
    auth = env.auth
    issuing = auth.db.get_ca("issuing")
    signer = presign.signers(auth)[issuing.id]
    issuer_cert = signer.issuer.certificate
    serial = 0x00FF_1234_5678_9ABC_DEF0
    now = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
    this_update, next_update = now, now + timedelta(hours=96)
    revoked_at = now - timedelta(hours=2)
    reason = {"revoked": 1, "revoked-unspecified": 0}.get(status)
    kind = "revoked" if status.startswith("revoked") else status
    single = der.Single(
        signer.issuer.cert_id(serial),
        kind,
        this_update,
        next_update,
        revoked_at if kind == "revoked" else None,
        reason or None,
    )
    ours = parse(signer.sign([single], now, nonce))
    cert_status = {
        "good": xocsp.OCSPCertStatus.GOOD,
        "revoked": xocsp.OCSPCertStatus.REVOKED,
        "unknown": xocsp.OCSPCertStatus.UNKNOWN,
    }[kind]
    builder = (
        xocsp.OCSPResponseBuilder()
        .add_response_by_hash(
            signer.issuer.name_hashes["sha1"],
            signer.issuer.key_hashes["sha1"],
            serial,
            hashes.SHA1(),
            cert_status,
            this_update,
            next_update,
            revoked_at if kind == "revoked" else None,
            x509.ReasonFlags.key_compromise if reason == 1 else None,
        )
        .responder_id(xocsp.OCSPResponderEncoding.HASH, signer.certificate)
        .certificates([signer.certificate])
    )
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    theirs = parse(builder.sign(signer.key, hashes.SHA256()).public_bytes(DER))
    # Field by field, then byte for byte once producedAt (which the builder sets to "now") and
    # the (randomised) signature are set aside.
    for field in (
        "certificate_status",
        "serial_number",
        "issuer_key_hash",
        "issuer_name_hash",
        "responder_key_hash",
        "this_update_utc",
        "next_update_utc",
        "revocation_time_utc",
        "revocation_reason",
        "signature_algorithm_oid",
    ):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert list(ours.extensions) == list(theirs.extensions)
    assert ours.certificates == theirs.certificates

    def without_produced_at(resp):
        data = asn1_ocsp.ResponseData.load(resp.tbs_response_bytes)
        return [
            data["responder_id"].dump(),
            data["responses"].dump(),
            data["response_extensions"].dump(),
        ]

    assert without_produced_at(ours) == without_produced_at(theirs)
    verify_signature(ours, issuer_cert)


def test_der_integers_are_minimal():
    for value, encoded in [
        (0, "020100"),
        (127, "02017f"),
        (128, "02020080"),
        (256, "02020100"),
        (-1, "0201ff"),
        (-128, "020180"),
        (-129, "0202ff7f"),
    ]:
        assert der.integer(value).hex() == encoded


# --- request parsing --------------------------------------------------------------------------


def test_parse_request_reads_one_or_several_certids_and_the_nonce(env):
    issued = leaf(env)
    issuer = issued.chain[0]
    one = parse_request(ocsp_request(issued.certificate, issuer, nonce=b"abc"), 16)
    assert one.nonce == b"abc" and len(one.certs) == 1
    assert one.certs[0].serial == issued.certificate.serial_number
    several = parse_request(multi_request([(issued.certificate, issuer)] * 3, nonce=b"xyz"), 16)
    assert len(several.certs) == 3 and several.nonce == b"xyz"
    with pytest.raises(MalformedRequest, match="at most 2"):
        parse_request(multi_request([(issued.certificate, issuer)] * 3), 2)
    for junk in (b"", b"garbage", ocsp_request(issued.certificate, issuer)[:-3]):
        with pytest.raises(MalformedRequest):
            parse_request(junk, 16)
    sha256 = parse_request(ocsp_request(issued.certificate, issuer, hashes.SHA256()), 16)
    assert sha256.certs[0].hash_name == "sha256"
    md5 = parse_request(ocsp_request(issued.certificate, issuer, hashes.SHA224()), 16)
    assert md5.certs[0].hash_name is None  # not a CertID hash we answer for


# --- the responder ----------------------------------------------------------------------------


def test_service_answers_good_revoked_unknown_and_unauthorized(env, tmp_path):
    auth = env.auth
    service = OcspService(auth)
    good = leaf(env, "good.corp.test")
    bad = leaf(env, "bad.corp.test")
    presign.run_once(auth, auth.now())
    issuer = good.chain[0]

    reply = service.respond(ocsp_request(good.certificate, issuer))
    assert reply.status == "good" and reply.cacheable and reply.etag
    resp = parse(reply.body)
    assert resp.certificate_status == xocsp.OCSPCertStatus.GOOD
    assert resp.serial_number == good.certificate.serial_number
    verify_signature(resp, issuer)
    # Served from the database's pre-signed response, byte for byte.
    _, stored = store.lookup(auth.db, auth.db.get_ca("issuing").id, format(resp.serial_number, "x"))
    assert stored is not None and stored.der == reply.body

    # Revoked (the row changed, the stored response not yet re-signed): answered revoked anyway.
    when = auth.now().replace(microsecond=0)
    with auth.db.write() as conn:
        conn.execute(
            update(t.Certificate)
            .where(t.Certificate.serial == format(bad.certificate.serial_number, "x"))
            .values(status="revoked", revoked_at=when, revocation_reason=4)
        )
    service._cache.clear()
    resp = parse(service.respond(ocsp_request(bad.certificate, issuer)).body)
    assert resp.certificate_status == xocsp.OCSPCertStatus.REVOKED
    assert resp.revocation_reason == x509.ReasonFlags.superseded
    assert resp.revocation_time_utc == when
    # ... and the re-signed response was stored for every other worker.
    _, stored = store.lookup(
        auth.db, auth.db.get_ca("issuing").id, format(bad.certificate.serial_number, "x")
    )
    assert stored is not None and stored.cert_status == "revoked"

    # A serial this CA never issued: unknown, signed; the same request again reuses it.
    unknown_req = request_for_serial(issuer, 0x1234567890ABCDEF)
    reply = service.respond(unknown_req)
    resp = parse(reply.body)
    assert resp.certificate_status == xocsp.OCSPCertStatus.UNKNOWN and not reply.cacheable
    verify_signature(resp, issuer)
    assert service.respond(unknown_req).body == reply.body

    # A CA that is not ours: unauthorized (unsigned).
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    foreign_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Foreign CA")])
    foreign = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(foreign_key.public_key())
        .serial_number(7)
        .not_valid_before(auth.now() - timedelta(days=1))
        .not_valid_after(auth.now() + timedelta(days=1))
        .sign(foreign_key, hashes.SHA256())
    )
    reply = service.respond(request_for_serial(foreign, good.certificate.serial_number))
    assert reply.status == "unauthorized"
    assert parse(reply.body).response_status == xocsp.OCSPResponseStatus.UNAUTHORIZED

    # The intermediate's own status, answered by the root's responder.
    inter = x509.load_der_x509_certificate(auth.db.get_ca("issuing").certificate_der)
    root = x509.load_pem_x509_certificate(env.root_pem.read_bytes())
    resp = parse(service.respond(ocsp_request(inter, root)).body)
    assert resp.certificate_status == xocsp.OCSPCertStatus.GOOD
    verify_signature(resp, root)


def test_unknown_status_can_be_unauthorized(env):
    config = env.config.model_copy(
        update={"ocsp": env.config.ocsp.model_copy(update={"unknown_status": "unauthorized"})}
    )
    auth = Authority(config=config, db=env.auth.db, keys=env.auth.keys)
    issuer = leaf(env).chain[0]
    reply = OcspService(auth).respond(request_for_serial(issuer, 0xDEADBEEF))
    assert reply.status == "unauthorized"


def test_expired_certificate_is_unauthorized(env):
    auth = env.auth
    issued = leaf(env)
    with auth.db.write() as conn:
        conn.execute(
            update(t.Certificate)
            .where(t.Certificate.serial == format(issued.certificate.serial_number, "x"))
            .values(not_after=auth.now() - timedelta(seconds=1))
        )
    reply = OcspService(auth).respond(ocsp_request(issued.certificate, issued.chain[0]))
    assert reply.status == "unauthorized"


def test_nonce_is_echoed_and_checked(env):
    auth = env.auth
    service = OcspService(auth)
    issued = leaf(env)
    issuer = issued.chain[0]
    nonce = bytes(range(16))
    reply = service.respond(ocsp_request(issued.certificate, issuer, nonce=nonce))
    resp = parse(reply.body)
    assert not reply.cacheable
    assert resp.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    verify_signature(resp, issuer)
    for size in (1, 32):
        resp = parse(
            service.respond(ocsp_request(issued.certificate, issuer, nonce=b"n" * size)).body
        )
        assert resp.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"n" * size
    for bad in (b"", b"n" * 33, b"n" * 200):
        reply = service.respond(ocsp_request(issued.certificate, issuer, nonce=bad))
        assert reply.status == "malformedRequest", len(bad)
    # A nonce with SHA-256 CertIDs: echoed, and the CertID uses SHA-256.
    resp = parse(
        service.respond(ocsp_request(issued.certificate, issuer, hashes.SHA256(), nonce)).body
    )
    assert isinstance(resp.hash_algorithm, hashes.SHA256)
    assert resp.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce


def test_nonce_ignore_is_pure_rfc5019(env):
    config = env.config.model_copy(
        update={"ocsp": env.config.ocsp.model_copy(update={"nonce": "ignore"})}
    )
    auth = Authority(config=config, db=env.auth.db, keys=env.auth.keys)
    service = OcspService(auth)
    issued = leaf(env)
    issuer = issued.chain[0]
    plain = service.respond(ocsp_request(issued.certificate, issuer))
    for nonce in (b"n" * 16, b"n" * 100):  # even an invalid one is ignored
        reply = service.respond(ocsp_request(issued.certificate, issuer, nonce=nonce))
        assert reply.body == plain.body and reply.cacheable


def test_nonce_signing_is_rate_limited(env):
    auth = env.auth
    service = OcspService(auth)
    ticks = [0.0]
    service.bucket = TokenBucket(2.0, 2.0, clock=lambda: ticks[0])
    issued = leaf(env)
    issuer = issued.chain[0]
    presigned = service.respond(ocsp_request(issued.certificate, issuer)).body
    echoed = 0
    for i in range(6):
        resp = parse(
            service.respond(ocsp_request(issued.certificate, issuer, nonce=bytes([i + 1]) * 8)).body
        )
        try:
            resp.extensions.get_extension_for_class(x509.OCSPNonce)
            echoed += 1
        except x509.ExtensionNotFound:
            assert resp.certificate_status == xocsp.OCSPCertStatus.GOOD
    assert echoed == 2  # the burst; then the pre-signed response without the nonce
    assert (
        service.respond(ocsp_request(issued.certificate, issuer, nonce=b"z" * 8)).body == presigned
    )
    # Requests that need a fresh signature and have no pre-signed fallback: tryLater / unauthorized.
    assert (
        service.respond(ocsp_request(issued.certificate, issuer, hashes.SHA256())).status
        == "tryLater"
    )
    assert service.respond(request_for_serial(issuer, 0xBADBAD)).status == "unauthorized"
    ticks[0] += 1.0  # a second later the bucket has refilled
    resp = parse(service.respond(ocsp_request(issued.certificate, issuer, nonce=b"q" * 8)).body)
    assert resp.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"q" * 8


def test_several_certificates_in_one_request(env):
    auth = env.auth
    service = OcspService(auth)
    a, b = leaf(env, "a.corp.test"), leaf(env, "b.corp.test")
    issuer = a.chain[0]
    body = service.respond(
        multi_request(
            [(a.certificate, issuer), (b.certificate, issuer), (0x7777, issuer)], b"nonce123"
        )
    ).body
    parsed = asn1_ocsp.OCSPResponse.load(body)
    basic = parsed["response_bytes"]["response"].parsed
    singles = basic["tbs_response_data"]["responses"]
    statuses = [s["cert_status"].name for s in singles]
    serials = [s["cert_id"]["serial_number"].native for s in singles]
    assert statuses == ["good", "good", "unknown"]
    assert serials == [a.certificate.serial_number, b.certificate.serial_number, 0x7777]
    nonce = basic["tbs_response_data"]["response_extensions"][0]
    assert nonce["extn_id"].native == "nonce" and nonce["extn_value"].parsed.native == b"nonce123"
    # Verifies with the responder certificate it carries.
    responder = x509.load_der_x509_certificate(basic["certs"][0].dump())
    from cryptography.hazmat.primitives.asymmetric import ec

    responder.public_key().verify(  # type: ignore[call-arg]
        basic["signature"].native, basic["tbs_response_data"].dump(), ec.ECDSA(hashes.SHA256())
    )
    too_many = multi_request(
        [(a.certificate, issuer)] * (auth.config.ocsp.max_serials_per_request + 1)
    )
    assert service.respond(too_many).status == "malformedRequest"


def test_hundreds_of_serials_within_the_byte_limit_are_malformed(env):
    config = env.config.model_copy(
        update={"ocsp": env.config.ocsp.model_copy(update={"max_request_bytes": 65536})}
    )
    auth = Authority(config=config, db=env.auth.db, keys=env.auth.keys)
    issued = leaf(env)
    body = multi_request([(issued.certificate, issued.chain[0])] * 800)
    assert len(body) < 65536
    started = time.monotonic()
    assert OcspService(auth).respond(body).status == "malformedRequest"
    assert time.monotonic() - started < 1.0


def test_outages_answer_try_later_and_cached_responses_survive(env, monkeypatch):
    auth = env.auth
    service = OcspService(auth)
    issued = leaf(env)
    issuer = issued.chain[0]
    req = ocsp_request(issued.certificate, issuer)
    first = service.respond(req)
    assert first.status == "good"

    def db_down(*args, **kwargs):
        raise StoreError("database unavailable: test")

    monkeypatch.setattr(store, "lookup", db_down)
    service._cache = {k: v.__class__(0.0, v.status, v.reply) for k, v in service._cache.items()}
    assert service.respond(req).body == first.body  # expired from the cache, DB down: still served
    other = leaf(env, "other.corp.test")
    reply = service.respond(ocsp_request(other.certificate, issuer))
    assert reply.status == "tryLater"
    assert parse(reply.body).response_status == xocsp.OCSPResponseStatus.TRY_LATER
    monkeypatch.undo()

    def hsm_down(*args, **kwargs):
        raise HsmUnavailable("token gone (test)")

    fresh = OcspService(auth)
    monkeypatch.setattr(auth.keys, "load", hsm_down)
    assert fresh.respond(req).body == first.body  # pre-signed: no HSM needed
    reply = fresh.respond(ocsp_request(issued.certificate, issuer, nonce=b"n" * 8))
    assert reply.status == "tryLater"

    def boom(*args, **kwargs):
        raise RuntimeError("unexpected")

    monkeypatch.setattr("ocsp.service.parse_request", boom)
    reply = fresh.respond(req)
    assert reply.status == "internalError"
    assert parse(reply.body).response_status == xocsp.OCSPResponseStatus.INTERNAL_ERROR


def test_new_ca_without_responder_answers_try_later_until_one_exists(env):
    from ca.hierarchy import create_intermediate

    auth = env.auth
    created = create_intermediate(auth, "second", actor="test")
    config = env.config.model_copy(
        update={
            "profiles": {
                **env.config.profiles,
                "second": env.config.profiles["server"].model_copy(update={"issuer": "second"}),
            }
        }
    )
    auth2 = Authority(config=config, db=auth.db, keys=auth.keys)
    issued = issue(auth2, IssuanceRequest(make_csr(["s.corp.test"]), "second", "test"))
    service = OcspService(auth2)
    req = ocsp_request(issued.certificate, created.certificate)
    assert service.respond(req).status == "tryLater"
    assert set(responders.run_once(auth2, auth2.now()).created) == {"second"}
    service._issuers_loaded = float("-inf")
    service._cache.clear()
    assert service.respond(req).status == "good"


# --- HTTP (the WSGI layer, in process) --------------------------------------------------------


@pytest.fixture
def client(env):
    app = create_app(env.config, lambda cfg: env.auth)
    return app.test_client()


def test_http_post_and_get_with_caching_headers(env, client):
    issued = leaf(env)
    presign.run_once(env.auth, env.auth.now())
    req = ocsp_request(issued.certificate, issued.chain[0])
    post = client.post("/ocsp", data=req, content_type="application/ocsp-request")
    assert post.status_code == 200 and post.content_type == "application/ocsp-response"
    assert parse(post.data).certificate_status == xocsp.OCSPCertStatus.GOOD
    encoded = base64.b64encode(req).decode()
    urlsafe = base64.urlsafe_b64encode(req).decode().rstrip("=")
    from urllib.parse import quote

    for path in (encoded, urlsafe, quote(encoded, safe="")):
        get = client.get("/ocsp/" + path)
        assert get.status_code == 200, path
        assert get.data == post.data
        h = get.headers
        assert h["Content-Type"] == "application/ocsp-response"
        assert h["ETag"].startswith('"') and h["Last-Modified"] and h["Expires"]
        cc = h["Cache-Control"]
        assert cc.startswith("max-age=") and "public" in cc and "no-transform" in cc
        assert "must-revalidate" in cc
        max_age = int(cc.split(",")[0].split("=")[1])
        assert 0 < max_age <= env.config.ocsp.refresh_hours * 3600
        resp = parse(get.data)
        from email.utils import parsedate_to_datetime

        assert parsedate_to_datetime(h["Expires"]) == resp.next_update_utc
        assert parsedate_to_datetime(h["Last-Modified"]) == resp.produced_at_utc
    cached = client.get("/ocsp/" + encoded, headers={"If-None-Match": h["ETag"]})
    assert cached.status_code == 304 and cached.data == b""


def test_http_errors_are_ocsp_errors_or_4xx_never_500(env, client):
    issued = leaf(env)
    req = ocsp_request(issued.certificate, issued.chain[0])
    ctype = "application/ocsp-request"

    def status_of(resp):
        assert resp.status_code == 200 and resp.content_type == "application/ocsp-response"
        return parse(resp.data).response_status

    malformed = xocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert status_of(client.post("/ocsp", data=b"garbage", content_type=ctype)) == malformed
    assert status_of(client.post("/ocsp", data=req[:-7], content_type=ctype)) == malformed
    assert status_of(client.post("/ocsp", data=b"", content_type=ctype)) == malformed
    long_nonce = ocsp_request(issued.certificate, issued.chain[0], nonce=b"x" * 64)
    assert status_of(client.post("/ocsp", data=long_nonce, content_type=ctype)) == malformed
    assert status_of(client.get("/ocsp/!!!notbase64")) == malformed
    assert status_of(client.get("/ocsp/" + base64.b64encode(b"junk").decode())) == malformed
    big = client.post(
        "/ocsp", data=b"\x30" * (env.config.ocsp.max_request_bytes + 1), content_type=ctype
    )
    assert big.status_code == 413 and big.content_type == "application/problem+json"
    wrong = client.post("/ocsp", data=req, content_type="application/json")
    assert (
        wrong.status_code == 415
        and wrong.json["type"] == "urn:hsmca:problem:unsupported-media-type"
    )
    assert client.put("/ocsp", data=req).status_code == 405
    assert client.get("/ocsp").status_code == 405
    # Still answering.
    assert status_of(client.post("/ocsp", data=req, content_type=ctype)) == (
        xocsp.OCSPResponseStatus.SUCCESSFUL
    )


def test_plain_surface_serves_ocsp(env):
    app = create_app(env.config, lambda cfg: env.auth, surface="plain")
    issued = leaf(env)
    req = ocsp_request(issued.certificate, issued.chain[0])
    resp = app.test_client().post("/ocsp", data=req, content_type="application/ocsp-request")
    assert resp.status_code == 200
    assert parse(resp.data).certificate_status == xocsp.OCSPCertStatus.GOOD
