"""Stock ACME clients against ``hsmca serve``: certbot (pip) and lego (Debian) issue, renew and
revoke over HTTPS, with http-01, tls-alpn-01 and dns-01.

Everything is real: ``hsmca init`` on the embedded default (SoftHSM token, SQLite), ``hsmca
serve`` (HTTPS for ACME, plain HTTP for OCSP), the clients' own challenge servers, and for dns-01
a small authoritative DNS server (``tests/dnsserver.py``) that lego's ``exec`` provider feeds.
The test settings ``validation_resolve_to`` / ``validation_*_port`` / ``validation_dns_server``
point validation at them. Every certificate is checked with ``openssl verify`` and pkilint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID
from helpers import openssl, pkilint_findings
from serve import Server, free_port, run, start_server

pytestmark = [pytest.mark.hsm]

CERTBOT = str(Path(sys.executable).parent / "certbot")
LEGO = shutil.which("lego") or "/usr/bin/lego"
PEM = Encoding.PEM
HERE = Path(__file__).resolve().parent.parent


@dataclass
class Acme:
    """A serving CA and where its clients and challenge servers live."""

    server: Server
    data: Path
    root: Path
    work: Path
    http01_port: int
    tlsalpn01_port: int
    dns_port: int
    dns_records: Path

    @property
    def directory(self) -> str:
        return f"{self.server.https}/acme/directory"


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Acme]:
    base = tmp_path_factory.mktemp("acme-clients")
    data = base / "data"
    proc = run(data, "init")
    assert proc.returncode == 0, proc.stderr
    root = base / "root.pem"
    root.write_text(run(data, "ca", "show", "root", "--pem").stdout)
    http01, tlsalpn01, dns = free_port(), free_port(), free_port()
    records = base / "dns-records.json"
    records.write_text("{}")
    dns_proc = subprocess.Popen(
        [sys.executable, str(HERE / "dnsserver.py"), "--port", str(dns), "--records", str(records)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "HSMCA_ACME_VALIDATION_RESOLVE_TO": "127.0.0.1",
        "HSMCA_ACME_VALIDATION_HTTP01_PORT": str(http01),
        "HSMCA_ACME_VALIDATION_TLSALPN01_PORT": str(tlsalpn01),
        "HSMCA_ACME_VALIDATION_DNS_SERVER": f"127.0.0.1:{dns}",
        "HSMCA_ACME_NEW_ACCOUNTS_PER_IP_PER_HOUR": "0",
        "HSMCA_CRL_REVOCATION_DELAY_SECONDS": "2",
    }
    # Wildcards need dns-01 and a profile that allows them: let the default profile do so.
    config = data / "hsmca.toml"
    text = config.read_text()
    head, sep, rest = text.partition("[profiles.server]")
    config.write_text(
        head + sep + rest.replace("allow_wildcards = false", "allow_wildcards = true", 1)
    )
    server = start_server(data, base, env=env)
    try:
        yield Acme(server, data, root, base, http01, tlsalpn01, dns, records)
    finally:
        server.stop()
        dns_proc.kill()
        dns_proc.wait()


def certbot(acme: Acme, *args: str) -> subprocess.CompletedProcess[str]:
    dirs = acme.work / "certbot"
    proc = subprocess.run(
        [
            CERTBOT,
            *args,
            "--non-interactive",
            "--server",
            acme.directory,
            "--config-dir",
            str(dirs / "config"),
            "--work-dir",
            str(dirs / "work"),
            "--logs-dir",
            str(dirs / "logs"),
        ],
        env={**os.environ, "REQUESTS_CA_BUNDLE": str(acme.root)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def lego(
    acme: Acme, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [
            LEGO,
            "--server",
            acme.directory,
            "--email",
            "ops@acme.test",
            "--accept-tos",
            "--path",
            str(acme.work / "lego"),
            "--key-type",
            "ec256",
            *args,
        ],
        env={**os.environ, "LEGO_CA_CERTIFICATES": str(acme.root), **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def check_chain(acme: Acme, fullchain: Path, names: list[str], tmp_path: Path) -> x509.Certificate:
    """``openssl verify`` against our root, pkilint without ERROR, the names in the SAN."""
    pems = fullchain.read_bytes()
    certs = x509.load_pem_x509_certificates(pems)
    leaf, intermediates = certs[0], certs[1:]
    untrusted = tmp_path / "untrusted.pem"
    untrusted.write_bytes(b"".join(c.public_bytes(PEM) for c in intermediates))
    leaf_path = tmp_path / "leaf.pem"
    leaf_path.write_bytes(leaf.public_bytes(PEM))
    verified = openssl(
        "verify", "-CAfile", str(acme.root), "-untrusted", str(untrusted), str(leaf_path)
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    for cert in certs:
        findings = pkilint_findings("lint_pkix_cert", cert.public_bytes(PEM), tmp_path)
        # RFC 5280's preferred name syntax has no wildcards; the CA/B linter below checks them.
        findings = [f for f in findings if not ("invalid_domain_name_syntax" in f and '"*.' in f)]
        assert findings == [], cert.subject
    # The leaf also as a TLS server certificate (CA/B Forum BR): a private CA names internal
    # names, and that is the only finding allowed.
    findings = pkilint_findings("lint_cabf_serverauth_cert", leaf.public_bytes(PEM), tmp_path, "-d")
    assert [f for f in findings if "cabf.internal_domain_name" not in f] == []
    san = leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(names)
    return leaf


def ocsp_status(acme: Acme, leaf_pem: Path, chain_pem: Path) -> str:
    """What ``openssl ocsp`` says about the leaf, asking the plain-HTTP responder."""
    issuer = chain_pem.parent / "issuer.pem"
    issuer.write_bytes(x509.load_pem_x509_certificates(chain_pem.read_bytes())[0].public_bytes(PEM))
    proc = openssl(
        "ocsp",
        "-issuer",
        str(issuer),
        "-cert",
        str(leaf_pem),
        "-url",
        f"{acme.server.http}/ocsp",
        "-CAfile",
        str(acme.root),
        "-verify_other",
        str(issuer),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Response verify OK" in proc.stderr, proc.stderr
    return proc.stdout.split(":", 1)[1].split()[0]


def serial_of(pem: Path) -> int:
    return x509.load_pem_x509_certificates(pem.read_bytes())[0].serial_number


# certbot ---------------------------------------------------------------------------------------


def test_certbot_issues_renews_and_revokes_with_http01(acme, tmp_path):
    name = "certbot.acme.test"
    certonly = [
        "certonly",
        "--standalone",
        "--agree-tos",
        "--register-unsafely-without-email",
        "--http-01-address",
        "127.0.0.1",
        "--http-01-port",
        str(acme.http01_port),
        "--key-type",
        "ecdsa",
        "-d",
        name,
    ]
    certbot(acme, *certonly)
    live = acme.work / "certbot" / "config" / "live" / name
    check_chain(acme, live / "fullchain.pem", [name], tmp_path)
    first = serial_of(live / "cert.pem")
    assert ocsp_status(acme, live / "cert.pem", live / "chain.pem") == "good"

    certbot(acme, "renew", "--force-renewal", "--no-random-sleep-on-renew")
    renewed = serial_of(live / "cert.pem")
    assert renewed != first
    check_chain(acme, live / "fullchain.pem", [name], tmp_path)

    certbot(
        acme,
        "revoke",
        "--cert-name",
        name,
        "--reason",
        "keycompromise",
        "--no-delete-after-revoke",
    )
    assert ocsp_status(acme, live / "cert.pem", live / "chain.pem") == "revoked"


# lego ------------------------------------------------------------------------------------------


def lego_paths(acme: Acme, name: str) -> tuple[Path, Path]:
    certs = acme.work / "lego" / "certificates"
    return certs / f"{name}.crt", certs / f"{name}.issuer.crt"


def test_lego_issues_renews_and_revokes_with_http01(acme, tmp_path):
    name = "lego-http.acme.test"
    solver = ["--domains", name, "--http", "--http.port", f"127.0.0.1:{acme.http01_port}"]
    lego(acme, *solver, "run")
    bundle, issuer = lego_paths(acme, name)
    check_chain(acme, bundle, [name], tmp_path)
    first = serial_of(bundle)
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(x509.load_pem_x509_certificates(bundle.read_bytes())[0].public_bytes(PEM))
    assert ocsp_status(acme, leaf, issuer) == "good"

    # 90-day certificates: "renew when fewer than 365 days are left" renews now.
    lego(acme, *solver, "renew", "--days", "365", "--no-random-sleep")
    assert serial_of(bundle) != first
    check_chain(acme, bundle, [name], tmp_path)

    lego(acme, "--domains", name, "revoke", "--reason", "1", "--keep")
    leaf.write_bytes(x509.load_pem_x509_certificates(bundle.read_bytes())[0].public_bytes(PEM))
    assert ocsp_status(acme, leaf, issuer) == "revoked"


def test_lego_issues_with_tls_alpn01_for_a_name(acme, tmp_path):
    name = "lego-tls.acme.test"
    lego(acme, "--domains", name, "--tls", "--tls.port", f"127.0.0.1:{acme.tlsalpn01_port}", "run")
    bundle, _ = lego_paths(acme, name)
    check_chain(acme, bundle, [name], tmp_path)


def test_lego_issues_a_wildcard_with_dns01_through_its_exec_provider(acme, tmp_path):
    # lego's exec provider runs this with "present|cleanup FQDN VALUE"; the DNS server the CA
    # asks re-reads the file on every query.
    hook = acme.work / "dns-hook.sh"
    hook.write_text(
        "#!/bin/sh\n"
        f'exec "{sys.executable}" "{HERE / "dnsserver.py"}" --records "{acme.dns_records}" "$@"\n'
    )
    hook.chmod(0o755)
    names = ["lego-dns.acme.test", "*.lego-dns.acme.test"]
    args = [a for n in names for a in ("--domains", n)]
    resolver = f"127.0.0.1:{acme.dns_port}"
    env = {
        "EXEC_PATH": str(hook),
        "EXEC_POLLING_INTERVAL": "1",
        "EXEC_PROPAGATION_TIMEOUT": "30",
        # the exec provider solves one name at a time, 60 s apart unless told otherwise
        "EXEC_SEQUENCE_INTERVAL": "1",
    }
    lego(
        acme,
        *args,
        "--dns",
        "exec",
        "--dns.resolvers",
        resolver,
        "--dns.disable-cp",
        "run",
        env=env,
    )
    bundle, _ = lego_paths(acme, names[0])
    check_chain(acme, bundle, names, tmp_path)
    # lego cleaned up after itself: no challenge records are left.
    left = json.loads(acme.dns_records.read_text() or "{}")
    assert not any(v.get("TXT") for v in left.values()), left
