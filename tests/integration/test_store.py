"""Storage: migrations match the models, SQLite durability settings, one audit writer at a time."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from helpers import make_csr
from sqlalchemy import text

from ca.audit import verify_chain
from ca.store import tables as t
from ca.store.tables import Base

pytestmark = [pytest.mark.db, pytest.mark.hsm]


def test_migrations_produce_exactly_the_models(ca_env):
    with ca_env.auth.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_sqlite_runs_in_wal_mode_with_full_sync(sqlite_ca_env):
    with sqlite_ca_env.auth.db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def _sync_level(conn) -> object:
    if conn.dialect.name == "sqlite":
        return conn.connection.driver_connection.execute("PRAGMA synchronous").fetchone()[0]
    return conn.execute(text("SHOW synchronous_commit")).scalar()


def test_an_unflushed_write_commits_and_leaves_every_connection_flushing(ca_env):
    db = ca_env.auth.db
    full = 2 if db.is_sqlite else "on"
    relaxed = 1 if db.is_sqlite else "off"
    with db.write() as conn:
        conn.execute(text("CREATE TABLE relax_probe (x INTEGER)"))
    with db.write(flush=False) as conn:
        assert _sync_level(conn) == relaxed
        conn.execute(text("INSERT INTO relax_probe VALUES (1)"))
    with pytest.raises(RuntimeError), db.write(flush=False) as conn:
        conn.execute(text("INSERT INTO relax_probe VALUES (2)"))
        raise RuntimeError("rolled back")
    with db.read() as conn:
        assert conn.execute(text("SELECT x FROM relax_probe")).scalars().all() == [1]
    # Every pooled connection is back to flushing its commits.
    conns = [db.engine.connect() for _ in range(3)]
    try:
        assert [_sync_level(c) for c in conns] == [full] * 3
    finally:
        for c in conns:
            c.close()
    with db.write() as conn:
        assert _sync_level(conn) == full


WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from ca.config import load_config
    from ca.authority import Authority
    from ca.issuance import IssuanceRequest, issue
    auth = Authority.from_config(load_config(Path(sys.argv[1])))
    csr = Path(sys.argv[2]).read_bytes()
    for _ in range(int(sys.argv[3])):
        issue(auth, IssuanceRequest(csr, "server", "worker"))
    """
)


def test_concurrent_issuers_in_several_processes_never_fork_or_gap_the_chain(ca_env, tmp_path):
    """Four processes issue at once on the same database: every certificate stored, chain intact."""
    csr = tmp_path / "req.pem"
    csr.write_bytes(make_csr(["concurrent.corp.test"]))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(ca_env.data_dir), str(csr), "15"],
            env=dict(os.environ),
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    db = ca_env.auth.db
    assert db.count(t.Certificate) == 1 + 60
    entries = list(db.audit_entries())
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert verify_chain(entries) == len(entries)
    assert sum(e.action == "certificate.issued" for e in entries) == 60
