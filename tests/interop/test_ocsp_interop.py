"""Outside tools judge our OCSP: pkilint on responses and responder certificates, and nginx
stapling a response it fetched from a live hsmca responder (``openssl s_client -status``)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp as xocsp
from cryptography.x509.oid import NameOID
from helpers import make_csr, pkilint_findings
from live import start_server
from sqlalchemy import update

import ocsp
from ca.authority import Authority
from ca.issuance import IssuanceRequest, issue
from ca.store import ocsp as store
from ca.store import tables as t
from ocsp.service import OcspService
from ocsp.signer import IssuerIds

pytestmark = [pytest.mark.interop, pytest.mark.hsm]

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER


def _lint(linter: str, data: bytes, tmp_path: Path, *args: str) -> list[str]:
    return pkilint_findings(linter, data, tmp_path, *args, name="doc.der")


def _request(cert, issuer, algorithm=None, nonce=None) -> bytes:
    builder = xocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(DER)


def _with_ocsp(env, responder_key: str = "ec:P-256") -> Authority:
    config = env.config.model_copy(
        update={"ocsp": env.config.ocsp.model_copy(update={"responder_key": responder_key})}
    )
    auth = Authority(config=config, db=env.auth.db, keys=env.auth.keys)
    ocsp.set_up(auth, actor="interop")
    return auth


@pytest.mark.parametrize("responder_key", ["ec:P-256", "rsa:2048"])
def test_responses_pass_pkilint(sqlite_ca_env, tmp_path, responder_key):
    auth = _with_ocsp(sqlite_ca_env, responder_key)
    service = OcspService(auth)
    good = issue(auth, IssuanceRequest(make_csr(["good.corp.test"]), "server", "t"))
    bad = issue(auth, IssuanceRequest(make_csr(["bad.corp.test"]), "server", "t"))
    issuer = good.chain[0]
    with auth.db.write() as conn:
        conn.execute(
            update(t.Certificate)
            .where(t.Certificate.serial == format(bad.certificate.serial_number, "x"))
            .values(status="revoked", revoked_at=auth.now(), revocation_reason=1)
        )
    ocsp.refresh_certificate(auth, format(bad.certificate.serial_number, "x"))
    ids = IssuerIds.of(0, "x", issuer)
    unknown = (
        xocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(
            ids.name_hashes["sha1"], ids.key_hashes["sha1"], 0xABCDEF0123, hashes.SHA1()
        )
        .build()
        .public_bytes(DER)
    )
    cases = {
        "good": _request(good.certificate, issuer),
        "revoked": _request(bad.certificate, issuer),
        "unknown": unknown,
        "nonce": _request(good.certificate, issuer, nonce=b"\x42" * 32),
        "sha256": _request(good.certificate, issuer, hashes.SHA256()),
    }
    for name, req in cases.items():
        body = service.respond(req).body
        assert xocsp.load_der_ocsp_response(body).response_status.name == "SUCCESSFUL", name
        assert _lint("lint_ocsp_response", body, tmp_path) == [], name
    for error in (b"garbage",):
        assert _lint("lint_ocsp_response", service.respond(error).body, tmp_path) == []


def test_responder_certificates_pass_pkilint(sqlite_ca_env, tmp_path):
    auth = _with_ocsp(sqlite_ca_env)
    for row in store.responders(auth.db):
        pem = x509.load_der_x509_certificate(row.certificate_der).public_bytes(PEM)
        assert _lint("lint_pkix_cert", pem, tmp_path) == []
        assert _lint("lint_cabf_serverauth_cert", pem, tmp_path, "-t", "OCSP-RESPONDER") == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found:
        pytest.skip("nginx is not installed (tests/run.sh installs nginx-light from Debian)")
    return found


def test_nginx_staples_our_ocsp_response(sqlite_ca_env, tmp_path):
    nginx = _nginx()
    auth = _with_ocsp(sqlite_ca_env)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tls.corp.test")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("tls.corp.test")]), critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(PEM)
    )
    issued = issue(auth, IssuanceRequest(csr, "server", "interop"))
    aia = issued.certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    assert [
        d.access_location.value for d in aia.value if d.access_method.dotted_string.endswith("48.1")
    ] == ["http://pki.hsmca.test/ocsp"]
    site = tmp_path / "nginx"
    site.mkdir()
    (site / "chain.pem").write_bytes(issued.pem_chain())
    (site / "key.pem").write_bytes(
        key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    trusted = sqlite_ca_env.root_pem.read_bytes() + issued.chain[0].public_bytes(PEM)
    (site / "trusted.pem").write_bytes(trusted)
    server = start_server(sqlite_ca_env.data_dir, workers=1, threads=4)
    port = _free_port()
    conf = site / "nginx.conf"
    conf.write_text(
        f"""
daemon off;
worker_processes 1;
pid {site}/nginx.pid;
error_log {site}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {site}/body;
    proxy_temp_path {site}/proxy;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name tls.corp.test;
        ssl_certificate {site}/chain.pem;
        ssl_certificate_key {site}/key.pem;
        ssl_stapling on;
        ssl_stapling_verify on;
        ssl_trusted_certificate {site}/trusted.pem;
        # The AIA names http://pki.hsmca.test/ocsp (no DNS here): point nginx at the live server.
        ssl_stapling_responder {server.url("/ocsp")};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""
    )
    proc = subprocess.Popen(
        [nginx, "-p", str(site), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            out = subprocess.run(
                [
                    "openssl",
                    "s_client",
                    "-connect",
                    f"127.0.0.1:{port}",
                    "-servername",
                    "tls.corp.test",
                    "-status",
                    "-CAfile",
                    str(sqlite_ca_env.root_pem),
                    "-verify_return_error",
                ],
                input="",
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            text = out.stdout + out.stderr
            if "OCSP Response Status: successful" in text:
                break
            time.sleep(0.3)
        assert "OCSP Response Status: successful" in text, text[-3000:]
        assert "Cert Status: good" in text
        serial = format(issued.certificate.serial_number, "X")
        assert f"Serial Number: {serial.zfill(len(serial) + len(serial) % 2)}" in text
        assert "Verify return code: 0 (ok)" in text
        # nginx staples only responses it verified (ssl_stapling_verify) against the CAs.
        log = (site / "error.log").read_text()
        assert "OCSP response not successful" not in log and "OCSP_basic_verify" not in log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        server.stop()
