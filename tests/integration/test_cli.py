"""The `hsmca` command as a user runs it: init on the embedded default, issue, inspect, serve."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from helpers import make_csr, openssl

from ca.authority import Authority
from ca.clients import authenticate
from ca.config import load_config

pytestmark = [pytest.mark.hsm]

HSMCA = str(Path(sys.executable).parent / "hsmca")


def run(
    data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HSMCA_", "SOFTHSM2_CONF"))}
    return subprocess.run(
        [HSMCA, "--data-dir", str(data_dir), *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("cli") / "data"
    proc = run(data, "init")
    assert proc.returncode == 0, proc.stderr
    return data


def issue_cli(data: Path, tmp_path: Path, name: str, env: dict[str, str] | None = None):
    """`hsmca issue` of a fresh CSR for ``name`` under the server profile."""
    csr = tmp_path / "req.csr"
    csr.write_bytes(make_csr([name]))
    return run(data, "issue", "--csr", str(csr), "--profile", "server", env=env)


def _pins(data: Path) -> list[str]:
    return [p.read_text().strip() for p in (data / "pins").iterdir()]


def test_init_makes_token_pins_database_and_hierarchy(initialised):
    data = initialised
    for pin_file in (data / "pins").iterdir():
        assert stat.S_IMODE(pin_file.stat().st_mode) == 0o600
    assert (data / "softhsm/softhsm2.conf").exists()
    assert (data / "hsmca.db").exists()
    listing = run(data, "ca", "list")
    assert listing.returncode == 0
    assert "root " in listing.stdout and "issuing " in listing.stdout
    shown = json.loads(run(data, "ca", "show", "issuing").stdout)
    assert shown["key_type"] == "ec:P-256" and shown["key"]["token"] == "hsmca"


def test_no_pin_appears_in_any_output(initialised):
    outputs = [
        run(initialised, "ca", "list"),
        run(initialised, "ca", "show", "root"),
        run(initialised, "audit", "verify"),
        run(initialised, "issue", "--csr", "/nonexistent", "--profile", "server"),
    ]
    text = "".join(p.stdout + p.stderr for p in outputs) + (initialised / "hsmca.toml").read_text()
    for pin in _pins(initialised):
        assert pin not in text


def test_init_twice_is_refused(initialised):
    proc = run(initialised, "init")
    assert proc.returncode == 1
    assert "already initialised" in proc.stderr


def test_issue_writes_a_chain_that_openssl_verifies(initialised, tmp_path):
    csr = tmp_path / "req.csr"
    csr.write_bytes(make_csr(["cli.corp.test"]))
    out = tmp_path / "cert.pem"
    proc = run(initialised, "issue", "--csr", str(csr), "--profile", "server", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "root.pem"
    root.write_text(run(initialised, "ca", "show", "root", "--pem").stdout)
    verify = openssl("verify", "-CAfile", str(root), "-untrusted", str(out), str(out))
    assert verify.returncode == 0, verify.stderr
    serial = format(x509.load_pem_x509_certificate(out.read_bytes()).serial_number, "x")
    shown = json.loads(run(initialised, "cert", "show", serial).stdout)
    assert shown["sans"] == ["dns:cli.corp.test"] and shown["status"] == "issued"
    assert (
        run(initialised, "cert", "show", serial, "--pem").stdout
        == out.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    )


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"garbage", id="fail/garbage"),
        pytest.param(b"\x30\x82\x01", id="fail/truncated"),
        pytest.param(b"A" * 100_000, id="fail/oversized"),
    ],
)
def test_bad_csr_gives_one_line_error_and_stores_nothing(initialised, tmp_path, content):
    before = _certificate_count(initialised)
    csr = tmp_path / "bad.csr"
    csr.write_bytes(content)
    proc = run(initialised, "issue", "--csr", str(csr), "--profile", "server")
    assert proc.returncode == 1
    assert proc.stderr.startswith("hsmca: error: ") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert _certificate_count(initialised) == before


def test_unknown_profile_is_refused(initialised, tmp_path):
    csr = tmp_path / "req.csr"
    csr.write_bytes(make_csr(["x.corp.test"]))
    proc = run(initialised, "issue", "--csr", str(csr), "--profile", "nope")
    assert proc.returncode == 1 and "unknown profile 'nope'" in proc.stderr


def _certificate_count(data: Path) -> int:
    with sqlite3.connect(data / "hsmca.db") as conn:
        return int(conn.execute("select count(*) from certificates").fetchone()[0])


def test_unknown_config_key_is_refused_by_name(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "hsmca.toml").write_text('[hsm]\nmodule = "/x.so"\ntoken_lable = "typo"\n')
    proc = run(data, "ca", "list")
    assert proc.returncode == 1
    assert "unknown key 'hsm.token_lable'" in proc.stderr


def test_wrong_type_from_environment_is_refused_by_name(initialised):
    proc = run(initialised, "ca", "list", env={"HSMCA_HSM_POOL_SIZE": "many"})
    assert proc.returncode == 1 and "hsm.pool_size" in proc.stderr
    proc = run(initialised, "ca", "list", env={"HSMCA_HSM_NO_SUCH": "1"})
    assert proc.returncode == 1 and "HSMCA_HSM_NO_SUCH" in proc.stderr


def test_wrong_pin_from_environment_gives_clear_hsm_error(initialised, tmp_path):
    proc = issue_cli(initialised, tmp_path, "pin.corp.test", env={"HSMCA_HSM_PIN": "wrong-pin-123"})
    assert proc.returncode == 1
    assert "refused" in proc.stderr and "wrong-pin-123" not in proc.stderr


def test_audit_verify_names_the_first_tampered_event(tmp_path):
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    ok = run(data, "audit", "verify")
    assert ok.returncode == 0 and "audit chain OK" in ok.stdout
    with sqlite3.connect(data / "hsmca.db") as conn:
        conn.execute("update audit_events set actor = 'someone-else' where seq = 3")
    bad = run(data, "audit", "verify")
    assert bad.returncode == 3
    assert "seq 3" in bad.stderr


def test_audit_verify_detects_a_deleted_event(tmp_path):
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    with sqlite3.connect(data / "hsmca.db") as conn:
        conn.execute("delete from audit_events where seq = 2")
    bad = run(data, "audit", "verify")
    assert bad.returncode == 3 and "seq 2" in bad.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


def test_serve_answers_health_and_ca_certificates(initialised):
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HSMCA_", "SOFTHSM2_CONF"))}
    server = subprocess.Popen(
        [
            HSMCA,
            "--data-dir",
            str(initialised),
            "serve",
            "--bind",
            f"127.0.0.1:{port}",
            "--https-bind",
            f"127.0.0.1:{_free_port()}",
            "--workers",
            "2",
        ],
        env=base,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if _get(url + "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        status, ctype, body = _get(url + "/readyz")
        checks = json.loads(body)["checks"]
        assert status == 200 and checks == {
            "database": "ok",
            "hsm": "ok",
            "crl": "ok",
            "ocsp": "ok",
        }
        status, ctype, body = _get(url + "/ca/issuing.crt")
        assert status == 200 and ctype == "application/pkix-cert"
        issuing = x509.load_der_x509_certificate(body)
        status, ctype, body = _get(url + "/ca/root.pem")
        assert status == 200
        root = x509.load_pem_x509_certificate(body)
        issuing.verify_directly_issued_by(root)
        status, ctype, body = _get(url + "/ca/nope.crt")
        assert status == 404 and ctype == "application/problem+json"
        assert json.loads(body)["status"] == 404
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=30)
    text = out.decode(errors="replace")
    assert "Traceback" not in text
    for pin in _pins(initialised):
        assert pin not in text


def test_audit_actor_is_the_real_user_not_logname(initialised, tmp_path):
    proc = issue_cli(
        initialised, tmp_path, "actor.corp.test", env={"LOGNAME": "ceo", "USER": "ceo"}
    )
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(initialised / "hsmca.db") as conn:
        actor = conn.execute("select actor from audit_events order by seq desc limit 1").fetchone()[
            0
        ]
    import pwd

    assert actor == f"cli:{pwd.getpwuid(os.getuid()).pw_name}"


def test_intermediate_cannot_be_signed_by_a_pathlen_zero_ca(initialised):
    proc = run(initialised, "ca", "create-intermediate", "sub", "--parent", "issuing")
    assert proc.returncode == 1 and "pathLen 0" in proc.stderr
    assert "sub " not in run(initialised, "ca", "list").stdout


def test_client_add_prints_the_token_once_and_list_never_shows_it(initialised):
    added = run(
        initialised,
        "client",
        "add",
        "payments",
        "--role",
        "enroll,read",
        "--profile",
        "server",
        "--names",
        "*.payments.internal",
    )
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert token.startswith("hsmca_") and len(token) == 49
    assert "shown once" in added.stderr
    listed = run(initialised, "client", "list")
    assert "payments" in listed.stdout and "*.payments.internal" in listed.stdout
    assert token not in listed.stdout + listed.stderr
    again = run(initialised, "client", "add", "payments", "--role", "enroll")
    assert again.returncode == 1 and "exists already" in again.stderr
    bad = run(initialised, "client", "add", "x", "--role", "superuser", "--names", "a..b")
    assert bad.returncode == 1
    assert "unknown role 'superuser'" in bad.stderr and "a..b" in bad.stderr
    rotated = run(initialised, "client", "rotate", "payments")
    assert rotated.returncode == 0, rotated.stderr
    fresh = rotated.stdout.strip()
    assert fresh.startswith("hsmca_") and fresh != token and "shown once" in rotated.stderr
    auth = Authority.from_config(load_config(initialised))
    assert authenticate(auth, token) is None
    holder = authenticate(auth, fresh)
    assert holder is not None and holder.name == "payments" and holder.roles == ["enroll", "read"]
    [event] = [e for e in auth.db.audit_entries() if e.action == "client.token_rotated"]
    assert event.subject == "payments" and fresh not in json.dumps(event.details)
    assert run(initialised, "client", "rotate", "nobody").returncode == 1
    disabled = run(initialised, "client", "disable", "payments")
    assert disabled.returncode == 0
    refused = run(initialised, "client", "rotate", "payments")
    assert refused.returncode == 1 and "disabled" in refused.stderr
    assert "disabled" in run(initialised, "client", "list").stdout
    assert "--role" in run(initialised, "client", "add", "--help").stdout


def test_a_new_intermediate_gets_its_crl_and_ocsp_responder_at_once(initialised):
    made = run(initialised, "ca", "create-intermediate", "payments", "--key", "ec:P-256")
    assert made.returncode == 0, made.stderr
    assert "crl: published" in made.stdout and "/crl/payments.crl" in made.stdout
    assert "ocsp: responder for CA 'payments'" in made.stdout


def test_cert_show_reports_a_revocation(initialised, tmp_path):
    issued = issue_cli(initialised, tmp_path, "gone.corp.test")
    serial = re.search(r"serial ([0-9a-f]+)", issued.stderr).group(1)
    revoked = run(initialised, "revoke", serial, "--reason", "superseded")
    assert revoked.returncode == 0, revoked.stderr
    shown = json.loads(run(initialised, "cert", "show", serial).stdout)
    assert shown["status"] == "revoked" and shown["revocation_reason"] == "superseded"
    assert shown["revoked_at"].endswith("Z")
