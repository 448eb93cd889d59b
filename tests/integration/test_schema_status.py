"""``hsmca db status`` and the schema check of ``hsmca serve``: a server never starts on a schema
older or newer than its code, and says which command fixes it."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_hsmca
from sqlalchemy import create_engine

from ca.store.migrate import schema_status, upgrade

HSMCA = str(Path(sys.executable).parent / "hsmca")


def _run(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_hsmca(data, *args)


@pytest.fixture
def data_at_0007(tmp_path: Path) -> Path:
    """A data directory whose database was migrated by an older hsmca (revision 0007)."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    engine = create_engine(f"sqlite:///{data / 'hsmca.db'}")
    upgrade(engine, "0007")
    engine.dispose()
    config = data / "hsmca.toml"
    config.write_text("# every key at its default: SQLite hsmca.db here\n")
    config.chmod(0o600)
    return data


def test_status_lists_pending_migrations_and_serve_refuses_until_upgraded(data_at_0007: Path):
    data = data_at_0007
    behind = _run(data, "db", "status")
    assert behind.returncode == 1
    assert "database revision: 0007" in behind.stdout and "pending:           0008" in behind.stdout
    assert "run 'hsmca db upgrade'" in behind.stderr

    refused = _run(data, "serve", "--no-scheduler")
    assert refused.returncode == 1 and "run 'hsmca db upgrade'" in refused.stderr
    assert "Traceback" not in refused.stderr

    upgraded = _run(data, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    now = _run(data, "db", "status")
    assert now.returncode == 0 and now.stdout.rstrip().endswith("up to date"), now.stdout


def test_a_schema_migrated_by_a_newer_hsmca_is_refused(data_at_0007: Path):
    data = data_at_0007
    with sqlite3.connect(data / "hsmca.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    status = schema_status(create_engine(f"sqlite:///{data / 'hsmca.db'}"))
    assert not status.known and not status.up_to_date and status.pending == ()
    shown = _run(data, "db", "status")
    assert shown.returncode == 1 and "a newer hsmca migrated it" in shown.stderr
    refused = _run(data, "serve", "--no-scheduler")
    assert refused.returncode == 1 and "upgrade hsmca here" in refused.stderr


def test_an_empty_database_has_every_migration_pending(tmp_path: Path):
    status = schema_status(create_engine(f"sqlite:///{tmp_path / 'empty.db'}"))
    assert status.current is None and status.pending[0] == "0001"
    assert status.pending[-1] == status.head and "hsmca init" in (status.problem() or "")
