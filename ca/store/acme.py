"""ACME storage: single-use nonces and accounts.

Plain functions over :class:`ca.store.db.Database` (reads, nonces) and a write transaction's
:class:`~sqlalchemy.Connection` (account changes, which commit with their audit event).

Nonces are shared by every worker process and node: issuing one inserts a row; using it is
``DELETE … WHERE nonce = :n`` and succeeds only for the one request whose delete removed the row.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from ca.errors import StoreError
from ca.store import tables as t
from ca.store.db import Database

#: One issued nonce in this many also purges the expired ones.
PURGE_EVERY = 64


@contextmanager
def _nonce_tx(db: Database) -> Iterator[Connection]:
    """A short transaction for nonces. SQLite: the writer lock (one writer anyway);
    PostgreSQL: a plain transaction (a single-row insert or delete is atomic on its own)."""
    if db.is_sqlite:
        with db.write() as conn:
            yield conn
        return
    try:
        with db.engine.begin() as conn:
            yield conn
    except SQLAlchemyError as exc:
        raise StoreError(f"database unavailable: {type(exc).__name__}") from exc


def issue_nonce(db: Database, now: datetime, lifetime_seconds: int) -> str:
    """A fresh nonce (base64url, 256 random bits), stored until used or expired."""
    nonce = secrets.token_urlsafe(32)
    with _nonce_tx(db) as conn:
        conn.execute(insert(t.AcmeNonce).values(nonce=nonce, created_at=now))
        if secrets.randbelow(PURGE_EVERY) == 0:
            purge_nonces(conn, now, lifetime_seconds)
    return nonce


def use_nonce(db: Database, nonce: str, now: datetime, lifetime_seconds: int) -> bool:
    """Consume ``nonce``: True for exactly one caller if it was issued and has not expired."""
    if len(nonce) > 64:
        return False
    oldest = now - timedelta(seconds=lifetime_seconds)
    with _nonce_tx(db) as conn:
        result = conn.execute(
            delete(t.AcmeNonce).where(t.AcmeNonce.nonce == nonce, t.AcmeNonce.created_at >= oldest)
        )
        return result.rowcount == 1


def purge_nonces(conn: Connection, now: datetime, lifetime_seconds: int) -> int:
    """Delete nonces older than the lifetime; the number deleted."""
    oldest = now - timedelta(seconds=lifetime_seconds)
    result = conn.execute(delete(t.AcmeNonce).where(t.AcmeNonce.created_at < oldest))
    return int(result.rowcount)


@dataclass(frozen=True)
class AccountRow:
    """A stored ACME account."""

    id: int
    key_thumbprint: str
    jwk: dict[str, str]
    status: str  # valid | deactivated | revoked
    contact: list[str]
    tos_agreed: bool
    requester: str | None
    created_at: datetime
    updated_at: datetime


def _account(row: Any) -> AccountRow:
    return AccountRow(
        id=row.id,
        key_thumbprint=row.key_thumbprint,
        jwk=json.loads(row.jwk),
        status=row.status,
        contact=json.loads(row.contact),
        tos_agreed=bool(row.tos_agreed),
        requester=row.requester,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def get_account(db: Database, account_id: int, conn: Connection | None = None) -> AccountRow | None:
    """The account with this id, or None."""
    query = select(t.AcmeAccount.__table__).where(t.AcmeAccount.id == account_id)
    if conn is not None:
        row = conn.execute(query).first()
    else:
        with db.read() as c:
            row = c.execute(query).first()
    return _account(row) if row else None


def account_by_thumbprint(
    db: Database, thumbprint: str, conn: Connection | None = None
) -> AccountRow | None:
    """The account whose key has this RFC 7638 thumbprint, or None."""
    query = select(t.AcmeAccount.__table__).where(t.AcmeAccount.key_thumbprint == thumbprint)
    if conn is not None:
        row = conn.execute(query).first()
    else:
        with db.read() as c:
            row = c.execute(query).first()
    return _account(row) if row else None


def add_account(
    conn: Connection,
    *,
    thumbprint: str,
    jwk_json: str,
    contact: list[str],
    tos_agreed: bool,
    now: datetime,
    requester: str | None = None,
) -> int:
    """Insert a ``valid`` account; its id."""
    result = conn.execute(
        insert(t.AcmeAccount).values(
            key_thumbprint=thumbprint,
            jwk=jwk_json,
            status="valid",
            contact=json.dumps(contact),
            tos_agreed=tos_agreed,
            requester=requester,
            created_at=now,
            updated_at=now,
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def update_account(
    conn: Connection, account_id: int, now: datetime, values: Mapping[str, Any]
) -> None:
    """Set columns of an account (``contact`` is given as a list)."""
    row = dict(values)
    if "contact" in row:
        row["contact"] = json.dumps(row["contact"])
    conn.execute(
        update(t.AcmeAccount).where(t.AcmeAccount.id == account_id).values(**row, updated_at=now)
    )
