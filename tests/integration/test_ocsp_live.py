"""OCSP against a live gunicorn server (2 workers x 8 threads): `openssl ocsp` over HTTP, GET and
POST, revocation seen by every worker within a second, bad input answered and survived.

SQLite and PostgreSQL (``live_api`` is parametrised over both).
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp as xocsp
from helpers import make_csr, openssl
from live import start_server

import ocsp
from ca.issuance import IssuanceRequest, issue
from ocsp.signer import IssuerIds

pytestmark = [pytest.mark.hsm, pytest.mark.db]

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER
OCSP_REQUEST = {"Content-Type": "application/ocsp-request"}


@pytest.fixture(scope="module")
def live(live_api):
    report = ocsp.set_up(live_api.env.auth, actor="test")
    assert set(report.responders.created) == {"root", "issuing"}
    return live_api


@pytest.fixture
def files(live, tmp_path):
    """A fresh leaf, its issuer and the root as PEM files for openssl."""
    issued = issue(live.env.auth, IssuanceRequest(make_csr(["live.corp.test"]), "server", "t"))
    paths = {
        "leaf": tmp_path / "leaf.pem",
        "issuer": tmp_path / "issuer.pem",
        "root": live.env.root_pem,
    }
    paths["leaf"].write_bytes(issued.certificate.public_bytes(PEM))
    paths["issuer"].write_bytes(issued.chain[0].public_bytes(PEM))
    return issued, paths


def openssl_ocsp(live, paths, *extra: str, cert: bool = True) -> subprocess.CompletedProcess[str]:
    args = [
        "ocsp",
        "-url",
        live.url("/ocsp"),
        "-issuer",
        str(paths["issuer"]),
        "-CAfile",
        str(paths["root"]),
        "-verify_other",
        str(paths["issuer"]),
        "-resp_text",
        *extra,
    ]
    if cert:
        args += ["-cert", str(paths["leaf"])]
    return openssl(*args)


def request_der(cert, issuer, nonce=None) -> bytes:
    builder = xocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(DER)


def test_openssl_post_good_verifies_with_nonce_echoed(live, files):
    _, paths = files
    proc = openssl_ocsp(live, paths)  # openssl sends a nonce and checks the echo by default
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Response verify OK" in out
    assert f"{paths['leaf']}: good" in out
    assert "WARNING: no nonce in response" not in out
    assert "OCSP Nonce" in out
    assert "This Update:" in out and "Next Update:" in out


def test_openssl_without_nonce_gets_the_presigned_response(live, files):
    _, paths = files
    proc = openssl_ocsp(live, paths, "-no_nonce")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Response verify OK" in out and ": good" in out, out
    assert "OCSP Nonce" not in out


def test_openssl_unknown_serial(live, files):
    _, paths = files
    proc = openssl_ocsp(live, paths, "-serial", "0x1234567890abcdef", cert=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Response verify OK" in out, out
    assert "0x1234567890abcdef: unknown" in out


def test_revocation_through_the_api_is_answered_by_every_worker_within_a_second(live, files):
    issued, paths = files
    req = request_der(issued.certificate, issued.chain[0])
    # Warm both workers' caches with "good" (new connections spread over the workers).
    for _ in range(20):
        resp = requests.post(live.url("/ocsp"), data=req, headers=OCSP_REQUEST, timeout=5)
        assert xocsp.load_der_ocsp_response(resp.content).certificate_status.name == "GOOD"
    token = live.add_client(f"revoker-{issued.certificate.serial_number:x}", ["revoke"])
    serial = format(issued.certificate.serial_number, "x")
    revoked = requests.post(
        live.url(f"/api/v1/certificates/{serial}/revoke"),
        json={"reason": "keyCompromise"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    done = time.monotonic()
    assert revoked.status_code in (200, 201), revoked.text
    first_revoked = None
    while time.monotonic() - done < 1.5:
        resp = requests.post(live.url("/ocsp"), data=req, headers=OCSP_REQUEST, timeout=5)
        status = xocsp.load_der_ocsp_response(resp.content).certificate_status.name
        if status == "REVOKED" and first_revoked is None:
            first_revoked = time.monotonic() - done
        if first_revoked is not None and time.monotonic() - done > 1.0:
            assert status == "REVOKED"  # every worker, every request, after one second
        time.sleep(0.02)
    assert first_revoked is not None and first_revoked < 1.0
    proc = openssl_ocsp(live, paths)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Response verify OK" in out, out
    assert f"{paths['leaf']}: revoked" in out
    assert "Reason: keyCompromise" in out and "Revocation Time:" in out


def test_get_with_standard_url_safe_and_percent_encoded_base64(live, files):
    issued, _ = files
    req = request_der(issued.certificate, issued.chain[0])
    post = requests.post(live.url("/ocsp"), data=req, headers=OCSP_REQUEST, timeout=5)
    std = base64.b64encode(req).decode()
    for path in (std, quote(std, safe=""), base64.urlsafe_b64encode(req).decode().rstrip("=")):
        resp = requests.get(live.url("/ocsp/" + path), timeout=5)
        assert resp.status_code == 200 and resp.content == post.content, path
        assert resp.headers["Content-Type"] == "application/ocsp-response"
        for header in ("ETag", "Last-Modified", "Expires"):
            assert resp.headers[header], header
        cc = resp.headers["Cache-Control"]
        for part in ("max-age=", "public", "no-transform", "must-revalidate"):
            assert part in cc
    again = requests.get(
        live.url("/ocsp/" + std), headers={"If-None-Match": resp.headers["ETag"]}, timeout=5
    )
    assert again.status_code == 304


def test_bad_requests_get_ocsp_errors_or_4xx_and_the_server_keeps_answering(live, files):
    issued, _ = files
    cfg = live.env.config.ocsp
    req = request_der(issued.certificate, issued.chain[0])
    ids = IssuerIds.of(0, "x", issued.chain[0])
    from asn1crypto import ocsp as asn1_ocsp

    def several(n: int) -> bytes:
        one = {
            "req_cert": {
                "hash_algorithm": {"algorithm": "sha1"},
                "issuer_name_hash": ids.name_hashes["sha1"],
                "issuer_key_hash": ids.key_hashes["sha1"],
                "serial_number": issued.certificate.serial_number,
            }
        }
        return asn1_ocsp.OCSPRequest({"tbs_request": {"request_list": [one] * n}}).dump()

    log_mark = live.server.log_size()
    cases = [
        ("garbage", b"\x00garbage\xff" * 10, OCSP_REQUEST, 200, "MALFORMED_REQUEST"),
        ("truncated", req[: len(req) // 2], OCSP_REQUEST, 200, "MALFORMED_REQUEST"),
        ("empty", b"", OCSP_REQUEST, 200, "MALFORMED_REQUEST"),
        (
            "nonce too long",
            request_der(issued.certificate, issued.chain[0], b"n" * 33),
            OCSP_REQUEST,
            200,
            "MALFORMED_REQUEST",
        ),
        (
            "too many serials",
            several(cfg.max_serials_per_request + 1),
            OCSP_REQUEST,
            200,
            "MALFORMED_REQUEST",
        ),
        ("thousands of serials", several(3000), OCSP_REQUEST, 413, None),
        ("oversized", b"\x30" * (cfg.max_request_bytes + 1), OCSP_REQUEST, 413, None),
        ("wrong content type", req, {"Content-Type": "text/plain"}, 415, None),
        ("no content type", req, {}, 415, None),
    ]
    for name, body, headers, code, ocsp_status in cases:
        resp = requests.post(live.url("/ocsp"), data=body, headers=headers, timeout=10)
        assert resp.status_code == code, name
        if ocsp_status:
            assert resp.headers["Content-Type"] == "application/ocsp-response", name
            assert xocsp.load_der_ocsp_response(resp.content).response_status.name == ocsp_status
        else:
            assert resp.headers["Content-Type"] == "application/problem+json", name
    for path in (
        "%%%",
        "AAAA",
        "not*base64",
        quote(base64.b64encode(b"\x30\x03\x02\x01")),
        "A" * 3000,
    ):
        resp = requests.get(live.url("/ocsp/" + path), timeout=5)
        assert resp.status_code in (200, 400, 413, 414), path
        if resp.status_code == 200:
            status = xocsp.load_der_ocsp_response(resp.content).response_status.name
            assert status == "MALFORMED_REQUEST", path
    # A chunked body over the limit (no Content-Length) is refused too.
    chunks = (b"\x30" * 1024 for _ in range(cfg.max_request_bytes // 1024 + 2))
    resp = requests.post(live.url("/ocsp"), data=chunks, headers=OCSP_REQUEST, timeout=10)
    assert resp.status_code == 413
    # Still answering, and nothing crashed.
    ok = requests.post(live.url("/ocsp"), data=req, headers=OCSP_REQUEST, timeout=5)
    assert xocsp.load_der_ocsp_response(ok.content).certificate_status.name == "GOOD"
    assert live.server.alive()
    assert "Traceback" not in live.server.log_text(log_mark)


def test_fresh_install_answers_ocsp_at_once(tmp_path):
    """`hsmca init` makes the responders and pre-signs: the server answers OCSP right away."""
    data = tmp_path / "data"
    hsmca = str(Path(sys.executable).parent / "hsmca")
    base = {
        k: v
        for k, v in __import__("os").environ.items()
        if not k.startswith(("HSMCA_", "SOFTHSM2_CONF"))
    }
    proc = subprocess.run(
        [hsmca, "--data-dir", str(data), "init"],
        env=base,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ocsp: responder for CA 'issuing'" in proc.stdout
    assert "response(s) pre-signed" in proc.stdout
    root = tmp_path / "root.pem"
    issuing = tmp_path / "issuing.pem"
    from ca.config import load_config
    from ca.store.db import Database

    cfg = load_config(data, environ={})
    db = Database(cfg.database_url)
    try:
        cas = {c.name: c for c in db.list_cas()}
    finally:
        db.dispose()
    root.write_bytes(x509.load_der_x509_certificate(cas["root"].certificate_der).public_bytes(PEM))
    issuing.write_bytes(
        x509.load_der_x509_certificate(cas["issuing"].certificate_der).public_bytes(PEM)
    )
    server = start_server(
        data, workers=1, threads=4, env={"SOFTHSM2_CONF": str(data / "softhsm/softhsm2.conf")}
    )
    try:
        # The issuing CA's own certificate, answered by the root's responder.
        out = openssl(
            "ocsp",
            "-url",
            server.url("/ocsp"),
            "-issuer",
            str(root),
            "-cert",
            str(issuing),
            "-CAfile",
            str(root),
            "-no_nonce",
        )
        text = out.stdout + out.stderr
        assert out.returncode == 0 and "Response verify OK" in text, text
        assert f"{issuing}: good" in text
    finally:
        server.stop()
