"""`hsmca backup` and `hsmca restore` end to end, on SQLite and PostgreSQL, with the real token.

A CA issues, revokes and publishes CRLs; it is backed up; the backup is restored into a fresh
data directory and an empty database that see the same token. The restored CA must go on:
issue with a fresh serial, revoke, publish CRLs numbered past every earlier one that openssl
accepts, and keep an audit chain that verifies. Bad, tampered and truncated backups are refused
before anything is changed, with one line on stderr.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from helpers import CaEnv, make_csr, openssl, run_hsmca, write_config

from ca.config import load_config
from ca.store import crls
from ca.store.backup import TRAILER
from ca.store.db import Database
from softhsm import create_token, random_pin, write_pin_file

pytestmark = [pytest.mark.hsm, pytest.mark.db]

HSMCA = str(Path(sys.executable).parent / "hsmca")


def run(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_hsmca(data, *args, timeout=300)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def issue(data: Path, tmp: Path, name: str) -> Path:
    csr = tmp / f"{name}.csr"
    csr.write_bytes(make_csr([name]))
    out = tmp / f"{name}.pem"
    ok(run(data, "issue", "--csr", str(csr), "--profile", "server", "--out", str(out)))
    return out


def serial_of(pem: Path) -> str:
    return format(x509.load_pem_x509_certificate(pem.read_bytes()).serial_number, "x")


def crl_numbers(data: Path) -> dict[str, int]:
    return {
        (row := json.loads(line))["ca"]: row["number"]
        for line in ok(run(data, "crl", "list")).splitlines()
    }


def audit_actions(data: Path) -> list[str]:
    db = Database(load_config(data, environ={}).database_url)
    try:
        return [e.action for e in db.audit_entries()]
    finally:
        db.dispose()


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("hsmca: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@dataclass
class Source:
    """A CA with history, and its backup."""

    env: CaEnv
    backup: Path
    kept: Path  # a certificate left valid
    revoked: Path  # a certificate revoked before the backup
    numbers: dict[str, int]  # the CRL numbers before the backup
    serials: set[str]


def make_source(env: CaEnv, tmp: Path) -> Source:
    data = env.data_dir
    ok(run(data, "audit", "key", "create"))
    kept = issue(data, tmp, "kept.corp.test")
    revoked = issue(data, tmp, "revoked.corp.test")
    ok(run(data, "revoke", serial_of(revoked), "--reason", "keyCompromise"))
    for ca_name in ("root", "issuing", "issuing"):
        ok(run(data, "crl", "generate", "--ca", ca_name))
    ok(run(data, "audit", "checkpoint"))
    numbers = crl_numbers(data)
    assert numbers["root"] >= 1 and numbers["issuing"] >= 2
    backup = tmp / "hsmca-backup.zip"
    ok(run(data, "backup", "--out", str(backup)))
    return Source(env, backup, kept, revoked, numbers, {serial_of(kept), serial_of(revoked)})


def fresh_target(source: Source, tmp: Path, name: str = "restored") -> Path:
    """A new data directory beside the same token: only the PIN files (restored with the token,
    never in a backup) are put there."""
    data = tmp / name
    for pin in ("user.pin", "root.pin"):
        write_pin_file(
            data / "pins" / pin, (source.env.data_dir / "pins" / pin).read_text().strip()
        )
    return data


def new_database(request: pytest.FixtureRequest, backend: str, tmp: Path, name: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp / f'{name}.db'}"
    cluster = request.getfixturevalue("pg_cluster")
    if cluster is None:
        pytest.skip("PostgreSQL not available outside CI")
    return str(cluster.create_database("restore"))


def pem_chain(env: CaEnv, tmp: Path) -> tuple[Path, Path]:
    issuing = tmp / "issuing.pem"
    issuing.write_bytes(env.issuing_pem())
    return env.root_pem, issuing


def current_crl_pem(data: Path, ca_name: str, tmp: Path) -> Path:
    db = Database(load_config(data, environ={}).database_url)
    try:
        ca = db.get_ca(ca_name)
        meta = crls.latest_crl(db, ca.id, 0)
        assert meta is not None
        der = crls.crl_der(db, meta.id)
    finally:
        db.dispose()
    crl = x509.load_der_x509_crl(der)
    path = tmp / f"{ca_name}-{meta.number}.crl.pem"
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.parametrize(
    "target_backend",
    [
        pytest.param("same", id="same-dialect"),
        pytest.param("cross", id="cross-dialect"),
    ],
)
def test_the_restored_ca_issues_revokes_continues_crl_numbers_and_its_chain_verifies(
    ca_env: CaEnv, database_url: str, tmp_path: Path, request: pytest.FixtureRequest, target_backend
):
    source_backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    backend = (
        source_backend
        if target_backend == "same"
        else {"sqlite": "postgresql", "postgresql": "sqlite"}[source_backend]
    )
    target_url = new_database(request, backend, tmp_path, "target")
    source = make_source(ca_env, tmp_path)
    assert "backup.created" in audit_actions(ca_env.data_dir)

    data = fresh_target(source, tmp_path)
    restored = run(data, "restore", str(source.backup), "--database-url", target_url)
    assert restored.returncode == 0, restored.stderr
    assert "audit chain OK" in restored.stdout
    assert (data / "hsmca.toml").exists()
    assert load_config(data, environ={}).database_url == target_url

    # The CRLs published by the restore are numbered past every earlier one.
    after_restore = crl_numbers(data)
    for ca_name, number in source.numbers.items():
        assert after_restore[ca_name] > number

    # The restored CA issues with a fresh serial, revokes, and publishes a newer CRL.
    fresh = issue(data, tmp_path, "fresh.corp.test")
    assert serial_of(fresh) not in source.serials
    ok(run(data, "revoke", serial_of(fresh), "--reason", "superseded"))
    ok(run(data, "crl", "generate", "--ca", "issuing"))
    assert crl_numbers(data)["issuing"] == after_restore["issuing"] + 1

    root, issuing = pem_chain(ca_env, tmp_path)
    crl_pem = current_crl_pem(data, "issuing", tmp_path)
    checked = openssl("crl", "-in", str(crl_pem), "-CAfile", str(issuing), "-noout", "-text")
    assert checked.returncode == 0 and "verify OK" in checked.stderr, checked.stderr
    listed = {
        s.lower().lstrip("0") for s in re.findall(r"Serial Number: ([0-9A-F]+)", checked.stdout)
    }
    assert listed == {serial_of(source.revoked), serial_of(fresh)}
    chain = ["-CAfile", str(root), "-untrusted", str(issuing)]
    root_crl = current_crl_pem(data, "root", tmp_path)
    crl_check = ["-crl_check_all", "-CRLfile", str(crl_pem), "-CRLfile", str(root_crl)]
    good = openssl("verify", *chain, *crl_check, str(source.kept))
    assert good.returncode == 0, good.stdout + good.stderr
    for gone in (source.revoked, fresh):
        bad = openssl("verify", *chain, *crl_check, str(gone))
        assert bad.returncode != 0 and "revoked" in (bad.stdout + bad.stderr)

    # The chain verifies, checkpoints included, and records the restore.
    verified = run(data, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert "checkpoint(s) verified" in verified.stdout
    actions = audit_actions(data)
    assert "backup.created" not in actions  # written after the snapshot, in the source only
    assert actions.count("restore.completed") == 1
    assert actions[actions.index("restore.completed") + 1 :][:1] == ["crl.published"]


def test_the_backup_is_private_and_holds_no_pin_token_file_or_private_key(
    sqlite_ca_env: CaEnv, tmp_path: Path
):
    source = make_source(sqlite_ca_env, tmp_path)
    mode = stat.S_IMODE(source.backup.stat().st_mode)
    assert mode == 0o600
    with zipfile.ZipFile(source.backup) as zf:
        names = zf.namelist()
        content = b"".join(zf.read(n) for n in names)
    assert set(names) == {"manifest.json", "hsmca.toml"} | {
        n for n in names if re.fullmatch(r"tables/\d\d-[a-z_]+\.jsonl", n)
    }
    raw = source.backup.read_bytes()
    pins = [p.read_text().strip() for p in (sqlite_ca_env.data_dir / "pins").iterdir()]
    for blob in (content, raw):
        for pin in pins:
            assert pin.encode() not in blob
        assert b"PRIVATE KEY" not in blob
    token_dir = Path(sqlite_ca_env.config.hsm.softhsm_conf).parent
    token_files = [p.name for p in token_dir.rglob("*") if p.is_file()]
    assert token_files
    for name in token_files:
        assert all(Path(n).name != name for n in names)
    manifest = json.loads(zipfile.ZipFile(source.backup).read("manifest.json"))
    assert manifest["dialect"] == "sqlite" and manifest["alembic_revision"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", manifest["created"])
    assert manifest["audit_head"]["seq"] > 0
    counts = {t["name"]: t["rows"] for t in manifest["tables"]}
    assert counts["certificates"] >= 2 and counts["certificate_authorities"] == 2


def _target_untouched(data: Path) -> None:
    assert not (data / "hsmca.toml").exists()
    assert not (data / "hsmca.db").exists() or not _tables(data / "hsmca.db")


def _tables(path: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]


def test_tampered_truncated_and_foreign_files_are_refused_before_any_change(
    sqlite_ca_env: CaEnv, tmp_path: Path
):
    source = make_source(sqlite_ca_env, tmp_path)
    raw = bytearray(source.backup.read_bytes())
    data = fresh_target(source, tmp_path)
    url = ("--database-url", f"sqlite:///{data / 'hsmca.db'}")

    cases: dict[str, bytes] = {}
    for offset in (len(raw) // 3, len(raw) // 2, len(raw) - 40):
        flipped = bytearray(raw)
        flipped[offset] ^= 0x01
        cases[f"byte {offset} changed"] = bytes(flipped)
    cases["truncated"] = bytes(raw[: len(raw) // 2])
    cases["not an archive"] = b"this is not a backup\n"
    cases["empty"] = b""
    # A well-formed zip whose table was edited but whose manifest was not.
    edited = tmp_path / "edited.zip"
    with zipfile.ZipFile(source.backup) as zf, zipfile.ZipFile(edited, "w") as out:
        for info in zf.infolist():
            body = zf.read(info)
            if info.filename.endswith("-certificates.jsonl"):
                assert b'"revoked"' in body
                body = body.replace(b'"revoked"', b'"issued"')
            out.writestr(info, body)
        out.comment = TRAILER + b"0" * 64
    whole = edited.read_bytes()  # the whole-file digest recomputed, as anyone can
    edited.write_bytes(whole[:-64] + hashlib.sha256(whole[:-64]).hexdigest().encode())
    cases["edited table"] = edited.read_bytes()
    for what, body in cases.items():
        bad = tmp_path / "bad.zip"
        bad.write_bytes(body)
        line = one_line_error(run(data, "restore", str(bad), *url))
        assert str(bad) in line, (what, line)
        _target_untouched(data)
    assert "SHA-256" in one_line_error(run(data, "restore", str(edited), *url))
    # The untouched backup still restores into the same directory afterwards.
    ok(run(data, "restore", str(source.backup), *url))


def test_restore_refuses_a_non_empty_database_and_an_existing_config_unless_forced(
    sqlite_ca_env: CaEnv, tmp_path: Path
):
    source = make_source(sqlite_ca_env, tmp_path)
    first = fresh_target(source, tmp_path, "first")
    url = f"sqlite:///{first / 'hsmca.db'}"
    ok(run(first, "restore", str(source.backup), "--database-url", url))
    ok(run(first, "issue", "--csr", str(tmp_path / "kept.corp.test.csr"), "--profile", "server"))
    before = audit_actions(first)

    again = one_line_error(run(first, "restore", str(source.backup)))
    assert "hsmca.toml exists" in again
    # Another directory pointed at the first one's (non-empty) database.
    other = fresh_target(source, tmp_path, "other")
    refused = one_line_error(run(other, "restore", str(source.backup), "--database-url", url))
    assert "not empty" in refused and "certificates: " in refused and "--force" in refused
    assert audit_actions(first) == before
    assert not (other / "hsmca.toml").exists()

    forced = run(first, "restore", str(source.backup), "--force")
    assert forced.returncode == 0, forced.stderr
    after = audit_actions(first)
    # The database is the backup's again: the certificate issued since is gone.
    assert after.count("certificate.issued") == before.count("certificate.issued") - 1
    assert after.count("restore.completed") == 1
    ok(run(first, "audit", "verify"))


def test_restore_refuses_a_database_url_with_a_password_on_the_command_line(
    sqlite_ca_env: CaEnv, tmp_path: Path
):
    source = make_source(sqlite_ca_env, tmp_path)
    data = fresh_target(source, tmp_path)
    line = one_line_error(
        run(data, "restore", str(source.backup), "--database-url", "postgresql://u:secret@h/db")
    )
    assert "password" in line and "secret" not in line
    _target_untouched(data)


def rewrite_backup(
    backup: Path,
    out: Path,
    edit_member: dict[str, Callable[[bytes], bytes]] | None = None,
    edit_manifest: Callable[[dict], None] | None = None,
) -> Path:
    """A copy of ``backup`` with members edited and every digest recomputed (manifest, trailer):
    what someone who can write the file can make. Members dropped from the manifest are left out."""
    edit_member = edit_member or {}
    with zipfile.ZipFile(backup) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        bodies = {n: zf.read(n) for n in zf.namelist() if n != "manifest.json"}
    for suffix, fn in edit_member.items():
        (name,) = [n for n in bodies if n.endswith(suffix)]
        bodies[name] = fn(bodies[name])
        manifest["members"][name] = hashlib.sha256(bodies[name]).hexdigest()
        for table in manifest["tables"]:
            if table["member"] == name:
                table["sha256"] = manifest["members"][name]
    if edit_manifest is not None:
        edit_manifest(manifest)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, body in bodies.items():
            if name in manifest["members"]:
                zf.writestr(name, body)
        zf.writestr("manifest.json", json.dumps(manifest))
        zf.comment = TRAILER + b"0" * 64
    whole = out.read_bytes()
    out.write_bytes(whole[:-64] + hashlib.sha256(whole[:-64]).hexdigest().encode())
    return out


def test_a_restore_whose_audit_chain_does_not_verify_fails_and_leaves_the_database_empty(
    sqlite_ca_env: CaEnv, tmp_path: Path
):
    source = make_source(sqlite_ca_env, tmp_path)

    def edit_event(body: bytes) -> bytes:
        lines = body.splitlines(keepends=True)
        event = json.loads(lines[4])
        event[5] = event[5].replace("}", ',"x":1}', 1)  # details, as if edited in the database
        lines[4] = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        return b"".join(lines)

    forged = rewrite_backup(
        source.backup, tmp_path / "forged.zip", {"-audit_events.jsonl": edit_event}
    )
    data = fresh_target(source, tmp_path)
    db_path = data / "hsmca.db"
    proc = run(data, "restore", str(forged), "--database-url", f"sqlite:///{db_path}")
    assert proc.returncode == 3, proc.stderr
    line = one_line_error(proc)
    assert "restored audit chain broken at seq 5" in line
    assert "left empty" in proc.stderr
    _target_untouched(data)
    assert _tables(db_path) == []


def test_a_backup_of_an_older_schema_restores_and_is_upgraded_to_this_one(
    sqlite_ca_env: CaEnv, tmp_path: Path
):
    """A backup as the previous hsmca version wrote it (one revision back, without the tables
    that revision did not have) is loaded at its revision and migrated to the current head."""
    from sqlalchemy import MetaData

    from ca.store.db import make_engine
    from ca.store.migrate import upgrade
    from hsmca.cli_backup import _script_head, _scripts

    head = _script_head()
    previous = _scripts().get_revision(head).down_revision
    assert isinstance(previous, str)
    scratch = make_engine(f"sqlite:///{tmp_path / 'scratch.db'}")
    upgrade(scratch, previous)
    old = MetaData()
    old.reflect(bind=scratch)
    scratch.dispose()

    source = make_source(sqlite_ca_env, tmp_path)

    def as_previous(manifest: dict) -> None:
        manifest["alembic_revision"] = previous
        kept = []
        for table in manifest["tables"]:
            if table["name"] in old.tables:
                have = {c.name for c in old.tables[table["name"]].columns}
                assert {c[0] for c in table["columns"]} == have, table["name"]
                kept.append(table)
            else:
                del manifest["members"][table["member"]]
        assert len(kept) < len(manifest["tables"])  # the previous revision had fewer tables
        manifest["tables"] = kept

    older = rewrite_backup(source.backup, tmp_path / "older.zip", edit_manifest=as_previous)
    data = fresh_target(source, tmp_path)
    proc = run(data, "restore", str(older), "--database-url", f"sqlite:///{data / 'hsmca.db'}")
    assert proc.returncode == 0, proc.stderr
    assert f"at revision {head}" in proc.stdout
    assert f"creating the schema at revision {previous}" in proc.stderr
    ok(run(data, "audit", "verify"))
    fresh = issue(data, tmp_path, "after-upgrade.corp.test")
    assert serial_of(fresh) not in source.serials


def test_a_restore_onto_a_token_without_the_ca_keys_is_refused_before_any_change(
    sqlite_ca_env: CaEnv, tmp_path: Path
):
    source = make_source(sqlite_ca_env, tmp_path)
    pin = (sqlite_ca_env.data_dir / "pins/user.pin").read_text().strip()
    other = create_token(tmp_path / "other-token", "hsmca", pin, random_pin())
    create_token(tmp_path / "other-token", "hsmca-root", pin, random_pin())
    ours = sqlite_ca_env.config.hsm.softhsm_conf
    elsewhere = rewrite_backup(
        source.backup,
        tmp_path / "elsewhere.zip",
        {"hsmca.toml": lambda body: body.replace(ours.encode(), str(other.conf_path).encode())},
    )
    data = fresh_target(source, tmp_path)
    proc = run(data, "restore", str(elsewhere), "--database-url", f"sqlite:///{data / 'hsmca.db'}")
    line = one_line_error(proc)
    assert "holds no key" in line and "restore the CA's token first" in line
    _target_untouched(data)


def test_a_witness_that_saw_checkpoints_after_the_backup_is_warned_about_not_fatal(
    sqlite_ca_env: CaEnv, softhsm_token, tmp_path: Path
):
    token, _ = softhsm_token
    witness = tmp_path / "witness" / "checkpoints.jsonl"
    witness.parent.mkdir()
    url = sqlite_ca_env.config.database_url
    write_config(sqlite_ca_env.data_dir, token, url, extra=f'[audit]\nwitness_file = "{witness}"\n')
    source = make_source(sqlite_ca_env, tmp_path)
    # The old installation goes on after the backup: a certificate and a checkpoint more.
    issue(sqlite_ca_env.data_dir, tmp_path, "after-backup.corp.test")
    ok(run(sqlite_ca_env.data_dir, "audit", "checkpoint"))
    witnessed = witness.read_text().splitlines()
    assert len(witnessed) >= 2

    data = fresh_target(source, tmp_path)
    proc = run(
        data, "restore", str(source.backup), "--database-url", f"sqlite:///{data / 'hsmca.db'}"
    )
    assert proc.returncode == 0, proc.stderr
    assert "witness file disagrees with the restored chain" in proc.stderr
    assert witness.read_text().splitlines() == witnessed  # the witness is never rewritten
    # The live verification reports what happened: the chain lost its events after the backup.
    after = run(data, "audit", "verify")
    assert after.returncode == 3 and "witness" in after.stderr
