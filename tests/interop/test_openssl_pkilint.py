"""Outside tools judge what we emit: `openssl verify` and pkilint."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from helpers import make_csr, openssl, pkilint_findings

from ca.hierarchy import create_intermediate
from ca.issuance import IssuanceRequest, issue

pytestmark = [pytest.mark.interop, pytest.mark.hsm]

PEM = serialization.Encoding.PEM


def _lint(linter: str, data: bytes, tmp_path: Path, *args: str) -> list[str]:
    return pkilint_findings(linter, data, tmp_path, *args, name="cert.pem")


def _verify(env, chain: Path, *options: str):
    """`openssl verify` of a leaf+intermediate file against the test root."""
    return openssl(
        "verify", *options, "-CAfile", str(env.root_pem), "-untrusted", str(chain), str(chain)
    )


def _issue(env, names, kind="ec:P-256", profile="server"):
    return issue(env.auth, IssuanceRequest(make_csr(names, kind), profile, "interop"))


@pytest.mark.parametrize("kind", ["ec:P-256", "ec:P-384", "rsa:2048"])
def test_openssl_verifies_every_issued_chain(sqlite_ca_env, tmp_path, kind):
    issued = _issue(sqlite_ca_env, ["www.corp.test", "192.0.2.10"], kind)
    chain = tmp_path / "chain.pem"
    chain.write_bytes(issued.pem_chain())
    proc = _verify(sqlite_ca_env, chain, "-x509_strict", "-purpose", "sslserver")
    assert proc.returncode == 0 and ": OK" in proc.stdout, proc.stdout + proc.stderr


def test_openssl_verifies_client_certificate_for_client_purpose(sqlite_ca_env, tmp_path):
    issued = _issue(sqlite_ca_env, ["client.corp.test"], profile="client")
    chain = tmp_path / "chain.pem"
    chain.write_bytes(issued.pem_chain())
    ok = _verify(sqlite_ca_env, chain, "-purpose", "sslclient")
    assert ok.returncode == 0, ok.stderr
    wrong = _verify(sqlite_ca_env, chain, "-purpose", "sslserver")
    assert wrong.returncode != 0  # a client certificate is not a server certificate


def test_openssl_rejects_chain_against_a_foreign_root(sqlite_ca_env, tmp_path):
    issued = _issue(sqlite_ca_env, ["www.corp.test"])
    chain = tmp_path / "chain.pem"
    chain.write_bytes(issued.pem_chain())
    foreign = tmp_path / "foreign.pem"
    foreign.write_bytes(issued.chain[0].public_bytes(PEM))  # the intermediate is not a trust anchor
    proc = openssl("verify", "-CAfile", str(foreign), str(chain))
    assert proc.returncode != 0


def test_root_and_intermediate_pass_pkilint_pkix(sqlite_ca_env, tmp_path):
    root_pem = sqlite_ca_env.root_pem.read_bytes()
    assert _lint("lint_pkix_cert", root_pem, tmp_path) == []
    assert _lint("lint_pkix_cert", sqlite_ca_env.issuing_pem(), tmp_path) == []


def test_rsa_intermediate_passes_pkilint_pkix(sqlite_ca_env, tmp_path):
    created = create_intermediate(
        sqlite_ca_env.auth, "rsa-issuing", key="rsa:3072", actor="interop"
    )
    assert _lint("lint_pkix_cert", created.certificate.public_bytes(PEM), tmp_path) == []


@pytest.mark.parametrize("kind", ["ec:P-256", "rsa:2048"])
@pytest.mark.parametrize("profile", ["server", "client"])
def test_leaves_pass_pkilint_pkix(sqlite_ca_env, tmp_path, kind, profile):
    issued = _issue(sqlite_ca_env, ["leaf.corp.test"], kind, profile)
    assert _lint("lint_pkix_cert", issued.certificate.public_bytes(PEM), tmp_path) == []


@pytest.mark.parametrize("kind", ["ec:P-256", "ec:P-384", "rsa:2048"])
@pytest.mark.parametrize("cn", ["", None], ids=["with-cn", "without-cn"])
def test_server_leaves_pass_cabf_serverauth_except_internal_names(
    sqlite_ca_env, tmp_path, kind, cn
):
    issued = issue(
        sqlite_ca_env.auth,
        IssuanceRequest(make_csr(["api.corp.test", "10.1.2.3"], kind, cn=cn), "server", "t"),
    )
    findings = _lint(
        "lint_cabf_serverauth_cert", issued.certificate.public_bytes(PEM), tmp_path, "-d"
    )
    # A private CA issues for internal names (and our test URLs are internal too): that finding only.
    assert [
        f
        for f in findings
        if "cabf.internal_domain_name" not in f and "internal_ip_address" not in f
    ] == []
