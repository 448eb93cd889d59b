"""Fail closed: when the audit event cannot be written, the change it records does not happen.

Three ways the store refuses, each against a real database and a real HSM:

* a read-only database: SQLite on a read-only bind mount of its directory (as root) or a
  read-only file (otherwise); PostgreSQL with ``default_transaction_read_only``, and with INSERT
  on ``audit_events`` revoked from the application's role;
* a full disk: SQLite on a tiny tmpfs filled to the last byte (needs root to mount);
* a trigger that refuses every insert into ``audit_events`` (SQLite and PostgreSQL), while every
  other table still accepts writes.

In each case issuance stops with a clear StoreError, no certificate is handed out or stored, the
database is exactly as it was (every row of every table), the chain still verifies, and the REST
API answers 503 with a problem document.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec
from helpers import CaEnv, make_ca_env, make_csr

from ca.acme import accounts
from ca.acme.jws import jwk_of, thumbprint
from ca.audit import verify_chain
from ca.authority import Authority
from ca.clients import create_client, disable_client, rotate_token
from ca.errors import StoreError
from ca.issuance import IssuanceRequest, issue
from ca.revocation import revoke
from ca.store.db import Database
from ca.store.tables import Base
from crl.publisher import publish
from softhsm import SoftHsmToken
from web import create_app

pytestmark = [pytest.mark.db, pytest.mark.hsm]


# --- helpers ------------------------------------------------------------------------------------


def snapshot(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order: "nothing changed" means this is equal."""
    out = {}
    with db.read() as conn:
        for table in Base.metadata.sorted_tables:
            rows = conn.execute(sa.select(table)).all()
            out[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return out


def bearer(auth: Authority, name: str, roles: list[str]) -> dict[str, str]:
    _, token = create_client(auth, name, roles, [], [], "test")
    return {"Authorization": f"Bearer {token}"}


def assert_api_enrollment_is_503(auth: Authority, headers: dict[str, str]) -> None:
    """POST /api/v1/certificates answers 503 + Retry-After with a problem document."""
    client = create_app(auth.config, lambda _cfg: auth).test_client()
    body = {"csr": make_csr(["api.corp.test"]).decode(), "profile": "server"}
    resp = client.post("/api/v1/certificates", json=body, headers=headers)
    assert resp.status_code == 503, resp.data
    assert resp.mimetype == "application/problem+json"
    assert resp.json["status"] == 503 and resp.json["type"].endswith(":unavailable")
    assert resp.headers["Retry-After"]


def assert_issuance_refused(auth: Authority, reason: str) -> None:
    with pytest.raises(StoreError, match=reason):
        issue(auth, IssuanceRequest(make_csr(["refused.corp.test"]), "server", "test"))


def assert_chain_intact(db: Database) -> None:
    entries = list(db.audit_entries())
    assert verify_chain(entries) == db.verify_audit_chain() == len(entries)
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    issued = [e.subject for e in entries if e.action == "certificate.issued"]
    with db.read() as conn:
        stored = conn.execute(sa.text("SELECT serial FROM certificates")).scalars().all()
    ca_serials = {e.details["serial"] for e in entries if e.action == "ca.created"}
    # Every stored certificate has its issuance event (CA certificates have ca.created).
    assert set(stored) == set(issued) | (ca_serials & set(stored))


def _is_sqlite(env: CaEnv) -> bool:
    return env.auth.db.is_sqlite


def _sqlite_file(env: CaEnv) -> Path:
    return Path(env.auth.db.url.split("sqlite:///", 1)[1])


def _mount(*args: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode == 0


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


# --- a read-only database -----------------------------------------------------------------------


@contextlib.contextmanager
def sqlite_read_only(db_file: Path) -> Iterator[str]:
    """The URL of ``db_file`` as a read-only database.

    As root (whom file modes do not stop) the directory is bind-mounted read-only elsewhere;
    otherwise the file and its directory lose their write permission.
    """
    mount_point = Path(tempfile.mkdtemp(prefix="hsmca-ro-"))
    if _mount("--bind", str(db_file.parent), str(mount_point)):
        try:
            assert _mount("-o", "remount,ro,bind", str(mount_point)), "cannot remount read-only"
            yield f"sqlite:///{mount_point / db_file.name}"
        finally:
            _umount(mount_point)
            mount_point.rmdir()
        return
    mount_point.rmdir()
    if os.geteuid() == 0:
        pytest.skip("running as root without permission to mount: file modes do not stop root")
    saved = {p: p.stat().st_mode for p in (db_file, db_file.parent)}
    try:
        db_file.chmod(0o444)
        db_file.parent.chmod(0o555)
        yield f"sqlite:///{db_file}"
    finally:
        for path, mode in saved.items():
            path.chmod(mode)


@contextlib.contextmanager
def postgres_read_only(url: str) -> Iterator[str]:
    """``url``'s database with every new transaction read-only."""
    name = sa.engine.make_url(url).database
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql("SET default_transaction_read_only = off")
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
        admin.dispose()


def test_a_read_only_database_stops_issuance_and_changes_nothing(ca_env: CaEnv) -> None:
    headers = bearer(ca_env.auth, "web", ["enroll"])
    before = snapshot(ca_env.auth.db)
    read_only = (
        sqlite_read_only(_sqlite_file(ca_env))
        if _is_sqlite(ca_env)
        else postgres_read_only(ca_env.auth.db.url)
    )
    # A connection stays open on the writable side, as a running CA's would: with it the WAL
    # index exists and the read-only side can still read (without, SQLite cannot even open it).
    with ca_env.auth.db.engine.connect(), read_only as url:
        auth = Authority(config=ca_env.config, db=Database(url), keys=ca_env.auth.keys)
        try:
            assert_issuance_refused(auth, "read-only|read_only|readonly")
            assert_api_enrollment_is_503(auth, headers)
            assert snapshot(auth.db) == before
        finally:
            auth.db.dispose()
    assert snapshot(ca_env.auth.db) == before
    assert_chain_intact(ca_env.auth.db)
    issue(ca_env.auth, IssuanceRequest(make_csr(["later.corp.test"]), "server", "test"))
    assert_chain_intact(ca_env.auth.db)


def test_audit_insert_revoked_from_the_app_role_stops_issuance_on_postgresql(
    ca_env: CaEnv,
) -> None:
    """A role that may write every table except audit_events cannot issue anything."""
    if _is_sqlite(ca_env):
        pytest.skip("SQLite has no roles")
    url = sa.engine.make_url(ca_env.auth.db.url)
    role = f"app_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        conn.exec_driver_sql(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        conn.exec_driver_sql(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
        conn.exec_driver_sql(f"REVOKE INSERT ON audit_events FROM {role}")
    headers = bearer(ca_env.auth, "web", ["enroll"])
    before = snapshot(ca_env.auth.db)
    auth = Authority(
        config=ca_env.config,
        db=Database(url.set(username=role).render_as_string(hide_password=False)),
        keys=ca_env.auth.keys,
    )
    try:
        assert_issuance_refused(auth, "permission denied for table audit_events")
        assert_api_enrollment_is_503(auth, headers)
        with pytest.raises(StoreError):
            create_client(auth, "nope", ["enroll"], [], [], "test")
    finally:
        auth.db.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP OWNED BY {role}")
            conn.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()
    assert snapshot(ca_env.auth.db) == before
    assert_chain_intact(ca_env.auth.db)


# --- a full disk --------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk_env(softhsm_token: tuple[SoftHsmToken, str], tmp_path: Path) -> Iterator[CaEnv]:
    """An initialised CA whose SQLite database lives on a 16 MiB tmpfs."""
    disk = Path(tempfile.mkdtemp(prefix="hsmca-tiny-"))
    if not _mount("-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(disk)):
        disk.rmdir()
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    token, pin = softhsm_token
    env = None
    try:
        env = make_ca_env(tmp_path, token, pin, f"sqlite:///{disk / 'hsmca.db'}")
        yield env
    finally:
        if env is not None:
            env.auth.db.dispose()
        _umount(disk)
        disk.rmdir()


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until the file system has no byte left; returns it."""
    filler = directory / "filler"
    chunk = b"\0" * (1 << 16)
    with open(filler, "wb", buffering=0) as out:
        while True:
            try:
                out.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                chunk = chunk[: len(chunk) // 2]
                if not chunk:
                    return filler


def test_a_full_disk_stops_issuance_and_changes_nothing(tiny_disk_env: CaEnv) -> None:
    env = tiny_disk_env
    auth = env.auth
    headers = bearer(auth, "web", ["enroll"])
    issue(auth, IssuanceRequest(make_csr(["before.corp.test"]), "server", "test"))
    disk = _sqlite_file(env).parent
    with auth.db.engine.connect() as conn:
        # Empty the WAL, so the next commit needs new space (a WAL reuses what it has).
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    before = snapshot(auth.db)
    filler = fill(disk)
    try:
        assert_issuance_refused(auth, "full")
        assert_api_enrollment_is_503(auth, headers)
        with pytest.raises(StoreError, match="full"):
            revoke(auth, auth.db.list_certificates()[-1].serial, "superseded", "test")
        assert snapshot(auth.db) == before
    finally:
        filler.unlink()
    assert snapshot(auth.db) == before
    assert_chain_intact(auth.db)
    issue(auth, IssuanceRequest(make_csr(["after.corp.test"]), "server", "test"))
    assert_chain_intact(auth.db)


# --- a trigger refuses audit events -------------------------------------------------------------


@contextlib.contextmanager
def audit_inserts_refused(db: Database) -> Iterator[None]:
    """Every INSERT into audit_events fails (and nothing else does) while this is open."""
    if db.is_sqlite:
        create = [
            "CREATE TRIGGER audit_refused BEFORE INSERT ON audit_events"
            " BEGIN SELECT RAISE(ABORT, 'audit refused'); END"
        ]
        drop = ["DROP TRIGGER audit_refused"]
    else:
        create = [
            "CREATE FUNCTION audit_refused() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN RAISE EXCEPTION 'audit refused'; END $$",
            "CREATE TRIGGER audit_refused BEFORE INSERT ON audit_events"
            " FOR EACH ROW EXECUTE FUNCTION audit_refused()",
        ]
        drop = ["DROP TRIGGER audit_refused ON audit_events", "DROP FUNCTION audit_refused()"]
    with db.engine.begin() as conn:
        for statement in create:
            conn.exec_driver_sql(statement)
    try:
        yield
    finally:
        with db.engine.begin() as conn:
            for statement in drop:
                conn.exec_driver_sql(statement)


def _issue(auth: Authority) -> None:
    issue(auth, IssuanceRequest(make_csr(["trigger.corp.test"]), "server", "test"))


def _revoke(auth: Authority) -> None:
    serial = next(c.serial for c in auth.db.list_certificates() if c.profile == "server")
    revoke(auth, serial, "keyCompromise", "test")


def _client_add(auth: Authority) -> None:
    create_client(auth, "newcomer", ["enroll"], [], [], "test")


def _client_disable(auth: Authority) -> None:
    disable_client(auth, "web", "test")


def _client_rotate(auth: Authority) -> None:
    rotate_token(auth, "web", "test")


def _acme_new_account(auth: Authority) -> None:
    jwk = jwk_of(ec.generate_private_key(ec.SECP256R1()).public_key())
    accounts.find_or_create(auth.db, auth.now(), jwk, thumbprint(jwk), [], True)


def _crl_publish(auth: Authority) -> None:
    publish(auth, "issuing")


def _deny(auth: Authority) -> None:
    # Even a refusal must be on record before it is given: unrecorded, it is an outage.
    issue(auth, IssuanceRequest(make_csr(["ec.corp.test"]), "rsa-only", "test"))


CHANGES: dict[str, Callable[[Authority], None]] = {
    "issue": _issue,
    "revoke": _revoke,
    "client-add": _client_add,
    "client-disable": _client_disable,
    "client-rotate-token": _client_rotate,
    "acme-new-account": _acme_new_account,
    "crl-publish": _crl_publish,
    "policy-denial": _deny,
}


def test_when_audit_events_cannot_be_inserted_no_change_happens(ca_env: CaEnv) -> None:
    auth = ca_env.auth
    headers = bearer(auth, "web", ["enroll"])
    issue(auth, IssuanceRequest(make_csr(["revocable.corp.test"]), "server", "test"))
    before = snapshot(auth.db)
    failed = {}
    with audit_inserts_refused(auth.db):
        for name, change in CHANGES.items():
            try:
                change(auth)
            except StoreError as exc:
                failed[name] = str(exc)
            assert snapshot(auth.db) == before, f"{name} changed the database"
        assert_api_enrollment_is_503(auth, headers)
        assert snapshot(auth.db) == before
    assert set(failed) == set(CHANGES), f"these went through: {set(CHANGES) - set(failed)}"
    assert all("audit refused" in why for why in failed.values()), failed
    assert_chain_intact(auth.db)
    # The trigger gone, the same changes work again and are audited.
    _issue(auth)
    _client_add(auth)
    assert_chain_intact(auth.db)
