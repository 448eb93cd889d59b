"""`hsmca serve` as two listeners: HTTPS (the CA's own certificate, TLS >= 1.2) for everything,
plain HTTP for CA certificates / OCSP / CRLs only; and both stop together, however serve stops.

Real parts throughout: `hsmca init` on the embedded SoftHSM default, real gunicorn arbiters on
free loopback ports, curl / openssl / Python's ssl as clients.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from helpers import openssl
from serve import (
    Server,
    alive,
    clean_env,
    cmdline,
    free_port,
    listening,
    run,
    start_server,
    wait_until,
)

from ca.config import ServerConfig
from web import create_app


def tls_check(data: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """What `hsmca serve` runs before it starts the listeners."""
    return subprocess.run(
        [sys.executable, "-m", "hsmca.server", "tls"],
        env=clean_env({"HSMCA_HOME": str(data), **(env or {})}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


def _pins(data: Path) -> list[str]:
    return [p.read_text().strip() for p in (data / "pins").iterdir()]


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("https") / "data"
    proc = run(data, "init")
    assert proc.returncode == 0, proc.stderr
    assert "https: issued HTTPS certificate serial" in proc.stdout
    (data / "root.pem").write_text(run(data, "ca", "show", "root", "--pem").stdout)
    return data


@pytest.fixture
def launch(initialised: Path, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start `hsmca serve` on the module's data directory; whatever is left is killed after."""
    started: list[Server] = []

    def start(**kwargs: object) -> Server:
        srv = start_server(initialised, tmp_path, **kwargs)  # type: ignore[arg-type]
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.kill_leftovers()


@pytest.fixture(scope="module")
def server(initialised: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(initialised, tmp_path_factory.mktemp("serve"))
    yield srv
    srv.stop()


# --- the certificate init issues --------------------------------------------------------------


@pytest.mark.hsm
def test_init_issues_the_https_certificate_through_the_ca(initialised, tmp_path):
    key, chain = initialised / "tls/server.key", initialised / "tls/server.crt"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    certs = x509.load_pem_x509_certificates(chain.read_bytes())
    assert len(certs) == 2  # leaf + issuing CA, no root
    leaf = certs[0]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    verify = openssl(
        "verify", "-CAfile", str(initialised / "root.pem"), "-untrusted", str(chain), str(chain)
    )
    assert verify.returncode == 0, verify.stderr
    # Stored and audited like any certificate.
    shown = json.loads(run(initialised, "cert", "show", format(leaf.serial_number, "x")).stdout)
    assert shown["profile"] == "server" and shown["requester"] == "hsmca:tls"
    assert run(initialised, "audit", "verify").returncode == 0
    text = (initialised / "tls/server.crt").read_text()
    for pin in _pins(initialised):
        assert pin not in text


# --- serving ----------------------------------------------------------------------------------


@pytest.mark.hsm
def test_https_verifies_against_the_root_by_ip_and_by_name(server):
    status, _, body = get(server.https + "/healthz", server.context())
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, _, body = get(f"https://localhost:{server.https_port}/readyz", server.context())
    assert status == 200 and json.loads(body)["checks"] == {
        "database": "ok",
        "hsm": "ok",
        "crl": "ok",
        "ocsp": "ok",
    }
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        get(server.https + "/healthz", ssl.create_default_context())  # not a public CA
    if shutil.which("curl"):
        curl = subprocess.run(
            ["curl", "-sS", "--cacert", str(server.root), server.https + "/healthz"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert curl.returncode == 0 and json.loads(curl.stdout) == {"status": "ok"}, curl.stderr


@pytest.mark.hsm
def test_plain_http_serves_ca_certificates_and_refuses_the_api(server):
    status, ctype, body = get(server.http + "/ca/issuing.crt")
    assert status == 200 and ctype == "application/pkix-cert"
    x509.load_der_x509_certificate(body)
    assert get(server.http + "/healthz")[0] == 200
    assert get(server.http + "/readyz")[0] == 200
    for path in ("/api/v1/anything", "/acme/directory", "/ui/", "/"):
        status, ctype, body = get(server.http + path)
        assert status == 403 and ctype == "application/problem+json", path
        problem = json.loads(body)
        assert problem["status"] == 403
        assert f"https://127.0.0.1:{server.https_port}{path}" in problem["detail"]
    # Over HTTPS the API is the API (whatever it answers, it is not the plain listener's 403).
    status, _, body = get(server.https + "/api/v1/anything", server.context())
    assert status != 403 or "https-required" not in body.decode()
    # The plain port speaks no TLS.
    with pytest.raises(urllib.error.URLError):
        get(f"https://127.0.0.1:{server.http_port}/healthz", server.context())


@pytest.mark.hsm
def test_tls_is_1_2_or_newer_and_openssl_verifies_the_server_certificate(server, tmp_path):
    connect = f"127.0.0.1:{server.https_port}"
    ok = subprocess.run(
        ["openssl", "s_client", "-connect", connect, "-CAfile", str(server.root)]
        + ["-verify_return_error", "-verify_ip", "127.0.0.1", "-showcerts"],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    protocol = re.search(r"New, (TLSv[\d.]+), Cipher is", ok.stdout)
    assert protocol and protocol.group(1) in ("TLSv1.2", "TLSv1.3")
    assert "Verify return code: 0 (ok)" in ok.stdout
    served = tmp_path / "served.pem"
    served.write_text(
        "".join(
            re.findall(
                r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", ok.stdout, re.S
            )
        )
    )
    verify = openssl("verify", "-CAfile", str(server.root), "-untrusted", str(served), str(served))
    assert verify.returncode == 0, verify.stderr
    for old in ("-tls1", "-tls1_1"):
        refused = subprocess.run(
            ["openssl", "s_client", "-connect", connect, old, "-cipher", "DEFAULT@SECLEVEL=0"],
            input="",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert refused.returncode != 0 and "Cipher is (NONE)" in refused.stdout + refused.stderr
    tls12 = ssl.create_default_context(cafile=str(server.root))
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert get(server.https + "/healthz", tls12)[0] == 200


# --- stopping ---------------------------------------------------------------------------------


@pytest.mark.hsm
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_signal_to_serve_stops_both_listeners_and_leaves_no_process(initialised, launch, sig):
    srv = launch()
    below = srv.workers_up()
    argv = " ".join(cmdline(p) for p in {srv.proc.pid, *below})
    assert "hsmca.server plain" in argv
    assert srv.stop(sig) == 0
    assert not listening(srv.http_port) and not listening(srv.https_port)
    wait_until(lambda: not any(alive(p) for p in below), 10, "no process left")
    text = srv.log.read_text()
    assert "Traceback" not in text
    for pin in _pins(initialised):
        assert pin not in text and pin not in argv


@pytest.mark.hsm
def test_a_killed_serve_leaves_no_plain_listener_behind(launch):
    srv = launch()
    below = srv.workers_up()
    srv.proc.kill()  # no chance to clean up: the child notices its pipe closing
    srv.proc.wait(timeout=30)
    wait_until(lambda: not any(alive(p) for p in below), 30, "orphans to go")
    assert not listening(srv.http_port) and not listening(srv.https_port)


@pytest.mark.hsm
def test_serve_stops_with_status_1_if_the_plain_listener_dies(launch):
    srv = launch()
    (arbiter,) = [
        p
        for p in srv.workers_up()
        if _ppid(p) == srv.proc.pid and "hsmca.server plain" in cmdline(p)
    ]
    os.kill(arbiter, signal.SIGKILL)
    assert srv.proc.wait(timeout=60) == 1
    assert "plain-HTTP listener" in srv.log.read_text()
    wait_until(lambda: not listening(srv.https_port), 10, "HTTPS to stop")
    wait_until(lambda: not any(alive(p) for p in srv.known), 10, "no process left")


@pytest.mark.hsm
def test_serve_exits_1_when_the_plain_port_is_taken(initialised, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port, https_port = taken.getsockname()[1], free_port()
        proc = run(
            initialised,
            "serve",
            "--bind",
            f"127.0.0.1:{port}",
            "--https-bind",
            f"127.0.0.1:{https_port}",
        )
    assert proc.returncode == 1
    assert "the plain-HTTP listener on" in proc.stderr and "Traceback" not in proc.stderr
    assert not listening(https_port)


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


@pytest.mark.hsm
def test_https_can_be_disabled(launch):
    srv = launch(https=False)
    assert not listening(srv.https_port)
    status, ctype, body = get(srv.http + "/api/v1/x")
    assert status == 403 and "disabled" in json.loads(body)["detail"]
    assert get(srv.http + "/ca/root.crt")[0] == 200
    assert srv.stop() == 0


# --- renewal ----------------------------------------------------------------------------------


def _serial(data: Path) -> int:
    return x509.load_pem_x509_certificates((data / "tls/server.crt").read_bytes())[0].serial_number


def _tls_rows(data: Path) -> int:
    with sqlite3.connect(data / "hsmca.db") as conn:
        return int(
            conn.execute(
                "select count(*) from certificates where requester = 'hsmca:tls'"
            ).fetchone()[0]
        )


@pytest.mark.hsm
def test_a_valid_certificate_is_kept_and_changes_renew_it(initialised, tmp_path):
    config = initialised / "hsmca.toml"
    original = config.read_text()
    try:
        before, rows = _serial(initialised), _tls_rows(initialised)
        kept = tls_check(initialised)
        assert kept.returncode == 0 and kept.stderr == "", kept.stderr
        assert _serial(initialised) == before and _tls_rows(initialised) == rows

        config.write_text(
            original.replace(
                'tls_hostnames = ["localhost"]', 'tls_hostnames = ["localhost", "pki.hsmca.test"]'
            )
        )
        renamed = tls_check(initialised)
        assert renamed.returncode == 0 and "tls_hostnames changed" in renamed.stderr
        leaf = x509.load_pem_x509_certificates((initialised / "tls/server.crt").read_bytes())[0]
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == ["localhost", "pki.hsmca.test"]
        assert _tls_rows(initialised) == rows + 1

        soon = tls_check(initialised, {"HSMCA_SERVER_TLS_RENEW_DAYS": "365"})
        assert soon.returncode == 0 and "tls_renew_days" in soon.stderr
        assert "every start renews it" in soon.stderr  # 365 > the profile's 90 days

        os.chmod(initialised / "tls/server.key", 0o644)
        exposed = tls_check(initialised)
        assert exposed.returncode == 0 and "readable by others" in exposed.stderr
        assert stat.S_IMODE((initialised / "tls/server.key").stat().st_mode) == 0o600

        (initialised / "tls/server.key").unlink()
        missing = tls_check(initialised)
        assert missing.returncode == 0 and "does not exist" in missing.stderr
        assert _tls_rows(initialised) == rows + 4
    finally:
        config.write_text(original)
        assert tls_check(initialised).returncode == 0


@pytest.mark.hsm
def test_a_policy_refusal_names_the_profile_and_the_hostnames(initialised, tmp_path):
    alt = tmp_path / "alt.toml"
    alt.write_text(
        (initialised / "hsmca.toml")
        .read_text()
        .replace('tls_hostnames = ["localhost"]', 'tls_hostnames = ["web.corp.test"]')
        .replace('dns_names = ["."]', 'dns_names = [".example.org"]', 1)
    )
    refused = tls_check(initialised, {"HSMCA_CONFIG": str(alt)})
    assert refused.returncode == 1
    assert "refused the HTTPS certificate for web.corp.test" in refused.stderr
    assert "profiles.server" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.hsm
def test_without_a_server_profile_serve_and_init_refuse_clearly(initialised, tmp_path):
    text = (initialised / "hsmca.toml").read_text()
    no_server = re.sub(r"\[profiles\.server\].*?(?=\n\[)", "", text, flags=re.S)
    assert "[profiles.server]" not in no_server and "[profiles.client]" in no_server
    alt = tmp_path / "alt.toml"
    alt.write_text(no_server)
    port = free_port()
    proc = run(initialised, "serve", "--bind", f"127.0.0.1:{port}", env={"HSMCA_CONFIG": str(alt)})
    assert proc.returncode == 1 and "profile 'server'" in proc.stderr
    assert 'https_bind = ""' in proc.stderr and not listening(port)

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "hsmca.toml").write_text(no_server.replace(str(initialised), str(fresh)))
    proc = run(fresh, "init")
    assert proc.returncode == 1 and "profile 'server'" in proc.stderr
    assert not (fresh / "hsmca.db").exists()  # refused before anything was made


# --- the app's surfaces and the config (no processes) -----------------------------------------


@pytest.mark.hsm
def test_the_plain_surface_serves_only_what_rfc_5280_clients_fetch(sqlite_ca_env):
    plain = create_app(sqlite_ca_env.config, lambda cfg: sqlite_ca_env.auth, surface="plain")
    client = plain.test_client()
    assert client.get("/ca/issuing.crt").mimetype == "application/pkix-cert"
    assert client.get("/healthz").status_code == 200
    assert client.get("/ca/none.crt").status_code == 404
    assert client.get("/crl/issuing.crl").status_code == 503  # allowed; none published yet
    for path in ("/api/v1/certificates", "/acme/new-order", "/ui/", "/apix", "/.well-known/x"):
        resp = client.post(path, headers={"Host": "pki.corp.test:8080"})
        assert resp.status_code == 403 and resp.mimetype == "application/problem+json", path
        assert f"https://pki.corp.test:8443{path}" in resp.get_json()["detail"]
    full = create_app(sqlite_ca_env.config, lambda cfg: sqlite_ca_env.auth)
    assert full.test_client().get("/api/v1/nothing-here").status_code != 403
    with pytest.raises(ValueError, match="surface"):
        create_app(sqlite_ca_env.config, surface="public")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "error"),
    [
        pytest.param({"https_bind": "8443"}, "not HOST:PORT", id="fail/no-host"),
        pytest.param({"https_bind": "127.0.0.1:99999"}, "port", id="fail/port"),
        pytest.param({"https_bind": "127.0.0.1:8080"}, "must differ", id="fail/same-as-bind"),
        pytest.param({"tls_hostnames": ["*.corp.test"]}, "not a DNS name", id="fail/wildcard"),
        pytest.param({"tls_hostnames": ["a.test", "A.test"]}, "twice", id="fail/duplicate"),
        pytest.param({"tls_hostnames": ["bad_name"]}, "not a DNS name", id="fail/underscore"),
        pytest.param({"threads": 0}, "greater than", id="fail/threads"),
        pytest.param({"tls_renew_days": -1}, "greater than", id="fail/renew-days"),
        pytest.param({"tls_key_file": "tls/server.crt"}, "must differ", id="fail/same-files"),
        pytest.param({"threads": "8"}, "valid integer", id="fail/strict"),
    ],
)
def test_server_section_is_validated_strictly(values, error):
    with pytest.raises(ValueError, match=error):
        ServerConfig(**values)


def test_server_section_normalises_names_and_accepts_ip_listeners():
    cfg = ServerConfig(
        https_bind="[::1]:8443", bind="0.0.0.0:80", tls_hostnames=["PKI.Corp.Test", "fe80:0::1"]
    )
    assert cfg.tls_hostnames == ["pki.corp.test", "fe80::1"]
    assert ServerConfig(https_bind="").https_bind == ""  # HTTPS off


@pytest.mark.hsm
def test_serve_runs_the_scheduler_and_stops_it_with_the_servers(launch):
    srv = launch()
    below = srv.workers_up()
    scheduler = [p for p in below if "hsmca.scheduler" in cmdline(p)]
    assert len(scheduler) == 1
    # Active, or standing by when the module's long-running server holds the scheduler lock.
    wait_until(
        lambda: any(m in srv.log.read_text() for m in ("scheduler active", "standing by")),
        30,
        "the scheduler to start",
    )
    assert srv.stop() == 0
    wait_until(lambda: not alive(scheduler[0]), 10, "the scheduler to stop")


@pytest.mark.hsm
def test_a_revocation_through_the_api_reaches_ocsp_at_once_and_the_crl_within_the_delay(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The whole appliance: hsmca serve with its scheduler, the REST API, OCSP and the CRL."""
    import requests
    from cryptography.hazmat.primitives import serialization
    from helpers import make_csr

    data = tmp_path_factory.mktemp("e2e") / "data"
    assert run(data, "init").returncode == 0
    root = data / "root.pem"
    root.write_text(run(data, "ca", "show", "root", "--pem").stdout)
    token = run(data, "client", "add", "ops", "--role", "enroll").stdout.strip()
    delay = 2
    srv = start_server(data, tmp_path, env={"HSMCA_CRL_REVOCATION_DELAY_SECONDS": str(delay)})
    try:
        auth = {"Authorization": f"Bearer {token}"}
        body = {"csr": make_csr(["e2e.corp.test"]).decode(), "profile": "server"}
        issued = requests.post(
            f"{srv.https}/api/v1/certificates",
            json=body,
            headers=auth,
            verify=str(root),
            timeout=30,
        )
        assert issued.status_code == 201, issued.text
        serial = int(issued.json()["serial"], 16)
        leaf = tmp_path / "leaf.pem"
        leaf.write_text(issued.json()["certificate"])
        chain = tmp_path / "chain.pem"
        chain.write_text(issued.json()["chain"] + root.read_text())
        issuing = tmp_path / "issuing.pem"
        issuing.write_text(issued.json()["chain"])

        revoked_at = time.monotonic()
        revoke = requests.post(
            f"{srv.https}/api/v1/certificates/{issued.json()['serial']}/revoke",
            json={"reason": "keyCompromise"},
            headers=auth,
            verify=str(root),
            timeout=30,
        )
        assert revoke.status_code == 200, revoke.text

        ocsp = openssl(
            "ocsp", "-issuer", str(issuing), "-cert", str(leaf), "-CAfile", str(chain),
            "-url", f"{srv.http}/ocsp",
        )  # fmt: skip
        assert time.monotonic() - revoked_at < 1.0 + 2.0  # (openssl itself takes a moment)
        assert "revoked" in ocsp.stdout and "Response verify OK" in ocsp.stderr, ocsp

        def crl_lists_it() -> bool:
            der = urllib.request.urlopen(f"{srv.http}/crl/issuing.crl", timeout=10).read()
            crl = x509.load_der_x509_crl(der)
            return crl.get_revoked_certificate_by_serial_number(serial) is not None

        wait_until(crl_lists_it, 30, "the CRL to list the revoked certificate")
        took = time.monotonic() - revoked_at
        # The delay, plus the publish job's interval (5 s at this delay), plus slack.
        assert took < delay + 5 + 5, took
        crl_pem = tmp_path / "crl.pem"
        der = urllib.request.urlopen(f"{srv.http}/crl/issuing.crl", timeout=10).read()
        crl_pem.write_bytes(x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM))
        check = openssl(
            "verify", "-crl_check", "-CRLfile", str(crl_pem), "-CAfile", str(root),
            "-untrusted", str(issuing), str(leaf),
        )  # fmt: skip
        assert check.returncode != 0 and "revoked" in (check.stdout + check.stderr)
    finally:
        srv.stop()
