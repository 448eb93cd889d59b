"""Helpers shared by the integration and interop tests."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ca.authority import Authority
from ca.config import AppConfig, load_config
from ca.hierarchy import create_intermediate, create_root
from softhsm import SoftHsmToken, write_pin_file

VENV_BIN = Path(os.environ.get("HSMCA_VENV_BIN", Path(__file__).resolve().parents[1] / ".venv/bin"))
HSMCA = str(Path(sys.executable).parent / "hsmca")


def run_hsmca(
    data_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    """``hsmca --data-dir DATA_DIR ARGS`` as an operator runs it: no ambient HSMCA_* or
    SOFTHSM2_CONF from the test process (only ``env``), text output captured, never raising."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HSMCA_", "SOFTHSM2_CONF"))}
    return subprocess.run(
        [HSMCA, "--data-dir", str(data_dir), *args],
        env={**base, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class CaEnv:
    data_dir: Path
    config: AppConfig
    auth: Authority
    root_pem: Path

    def issuing_pem(self, name: str = "issuing") -> bytes:
        row = self.auth.db.get_ca(name)
        return x509.load_der_x509_certificate(row.certificate_der).public_bytes(
            serialization.Encoding.PEM
        )


def write_config(data_dir: Path, token: SoftHsmToken, database_url: str, extra: str = "") -> None:
    (data_dir / "hsmca.toml").write_text(
        f"""
[server]
public_base_url = "http://pki.hsmca.test"

[database]
url = "{database_url}"

[hsm]
module = "{token.module}"
token_label = "hsmca"
root_token_label = "hsmca-root"
pin_file = "pins/user.pin"
root_pin_file = "pins/root.pin"
softhsm_conf = "{token.conf_path}"

[ca]
organization = "hsmca tests"
country = "DE"

[profiles.server]
extended_key_usage = ["serverAuth"]
dns_names = ["."]
ip_ranges = ["0.0.0.0/0", "::/0"]

[profiles.client]
extended_key_usage = ["clientAuth"]
certificate_policies = []
dns_names = ["."]

[profiles.rsa-only]
key_types = ["rsa:2048", "rsa:3072", "rsa:4096"]
dns_names = ["."]
{extra}
"""
    )


def make_ca_env(tmp_path: Path, token: SoftHsmToken, pin: str, database_url: str) -> CaEnv:
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    write_pin_file(data_dir / "pins/user.pin", pin)
    write_pin_file(data_dir / "pins/root.pin", pin)
    write_config(data_dir, token, database_url)
    config = load_config(data_dir, environ={})
    auth = Authority.from_config(config, environ={})
    auth.db.upgrade()
    root = create_root(auth, actor="test")
    create_intermediate(auth, "issuing", common_name="hsmca tests Issuing CA", actor="test")
    root_pem = data_dir / "root.pem"
    root_pem.write_bytes(root.certificate.public_bytes(serialization.Encoding.PEM))
    return CaEnv(data_dir, config, auth, root_pem)


def make_key(kind: str = "ec:P-256") -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    algorithm, _, param = kind.partition(":")
    if algorithm == "ec":
        curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}[param]
        return ec.generate_private_key(curve)
    return rsa.generate_private_key(65537, int(param))


def make_csr(
    names: list[str],
    kind: str = "ec:P-256",
    cn: str | None = "",
    der: bool = False,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
) -> bytes:
    """A CSR for DNS names / IP addresses; ``cn=""`` uses the first name, None omits the CN;
    signed by ``key`` (default: a new key of ``kind``)."""
    key = key or make_key(kind)
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    common_name = names[0] if cn == "" else cn
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM)


def openssl(*args: str, input_: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *args],
        input=input_.decode() if input_ else None,
        capture_output=True,
        text=True,
        check=False,
    )


def tool(name: str) -> str:
    """Path of a console script installed beside the test interpreter (pkilint's linters)."""
    import shutil
    import sys

    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(name)
    return found


def pkilint_findings(
    linter: str, data: bytes, tmp_path: Path, *args: str, name: str = "doc"
) -> list[str]:
    """pkilint findings at ERROR or FATAL severity, one line each (``data`` is PEM or DER)."""
    path = tmp_path / name
    path.write_bytes(data)
    proc = subprocess.run(
        [tool(linter), "lint", *args, "-s", "ERROR", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    findings = [ln.strip() for ln in proc.stdout.splitlines() if "(ERROR)" in ln or "(FATAL)" in ln]
    # pkilint exits with the number of findings; a crash shows as a traceback on stderr.
    if "Traceback" in proc.stderr or (proc.returncode and not findings):
        raise AssertionError(f"{linter} failed (exit {proc.returncode}): {proc.stderr[-500:]}")
    return findings
