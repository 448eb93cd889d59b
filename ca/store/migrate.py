"""Alembic, driven from code: ``hsmca db upgrade`` and ``hsmca init`` call :func:`upgrade`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Upgrade the schema to ``revision``; returns the current revision afterwards."""
    command.upgrade(alembic_config(engine), revision)
    return current_revision(engine) or ""


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database's schema stands against the migrations this hsmca carries."""

    current: str | None  # None: an empty database
    head: str
    pending: tuple[str, ...]  # revisions still to apply, oldest first
    known: bool  # False: the database was migrated by a newer hsmca

    @property
    def up_to_date(self) -> bool:
        return self.known and self.current == self.head

    def problem(self) -> str | None:
        """Why a server must not start on this schema, or None."""
        if not self.known:
            return (
                f"the database schema is at revision {self.current}, which this hsmca does not "
                f"know (its newest is {self.head}): a newer hsmca migrated it; upgrade hsmca here"
            )
        if self.current is None:
            return "the database has no schema yet: run 'hsmca init' (or 'hsmca db upgrade')"
        if self.pending:
            return (
                f"the database schema is at revision {self.current}, this hsmca needs {self.head} "
                f"({len(self.pending)} migration(s) pending): run 'hsmca db upgrade'"
            )
        return None


def schema_status(engine: Engine) -> SchemaStatus:
    """Compare the database's Alembic revision with the newest migration (no change made)."""
    scripts = ScriptDirectory.from_config(alembic_config(engine))
    head = scripts.get_current_head() or ""
    current = current_revision(engine)
    known = current is None or any(s.revision == current for s in scripts.walk_revisions())
    pending: tuple[str, ...] = ()
    if known:
        upper = "base" if current is None else current
        pending = tuple(s.revision for s in reversed(list(scripts.iterate_revisions(head, upper))))
    return SchemaStatus(current, head, pending, known)
