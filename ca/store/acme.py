"""ACME storage: single-use nonces, accounts, orders, authorizations and challenges.

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


# Orders, authorizations and challenges ---------------------------------------------------------


@dataclass(frozen=True)
class ChallengeRow:
    """A stored ACME challenge."""

    id: int
    authz_id: int
    type: str
    token: str
    status: str  # pending | processing | valid | invalid
    validated_at: datetime | None
    error: dict[str, Any] | None


@dataclass(frozen=True)
class AuthzRow:
    """A stored ACME authorization with its challenges."""

    id: int
    account_id: int
    order_id: int
    identifier_type: str  # dns | ip
    identifier_value: str
    status: str  # pending | valid | invalid | deactivated | expired
    expires: datetime
    wildcard: bool
    challenges: tuple[ChallengeRow, ...] = ()


@dataclass(frozen=True)
class OrderRow:
    """A stored ACME order with the ids of its authorizations."""

    id: int
    account_id: int
    status: str  # pending | ready | processing | valid | invalid
    identifiers: list[dict[str, str]]
    profile: str
    not_before: datetime | None
    not_after: datetime | None
    expires: datetime
    error: dict[str, Any] | None
    certificate_serial: str | None
    created_at: datetime
    authz_ids: tuple[int, ...] = ()


def _loads(text: str | None) -> dict[str, Any] | None:
    return json.loads(text) if text else None


def _challenge(row: Any) -> ChallengeRow:
    return ChallengeRow(
        id=row.id,
        authz_id=row.authz_id,
        type=row.type,
        token=row.token,
        status=row.status,
        validated_at=row.validated_at,
        error=_loads(row.error),
    )


def _read(db: Database, conn: Connection | None) -> Any:
    """``conn`` itself (in a write transaction) or a fresh read connection."""
    if conn is not None:

        @contextmanager
        def same() -> Iterator[Connection]:
            yield conn

        return same()
    return db.read()


def add_order(
    conn: Connection,
    *,
    account_id: int,
    identifiers: list[dict[str, str]],
    profile: str,
    expires: datetime,
    authz_expires: datetime,
    now: datetime,
    wildcards: list[bool],
) -> int:
    """Insert a pending order, one pending authorization per identifier and one http-01
    challenge per authorization (a fresh 256-bit token each); the order's id."""
    result = conn.execute(
        insert(t.AcmeOrder).values(
            account_id=account_id,
            status="pending",
            identifiers=json.dumps(identifiers),
            profile=profile,
            expires=expires,
            created_at=now,
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    order_id = int(key[0])
    for ident, wildcard in zip(identifiers, wildcards, strict=True):
        authz = conn.execute(
            insert(t.AcmeAuthorization).values(
                account_id=account_id,
                order_id=order_id,
                identifier_type=ident["type"],
                identifier_value=ident["value"],
                status="pending",
                expires=authz_expires,
                wildcard=wildcard,
            )
        ).inserted_primary_key
        assert authz is not None
        conn.execute(
            insert(t.AcmeChallenge).values(
                authz_id=int(authz[0]),
                type="http-01",
                token=secrets.token_urlsafe(32),
                status="pending",
            )
        )
    return order_id


def get_order(db: Database, order_id: int, conn: Connection | None = None) -> OrderRow | None:
    """The order with this id and its authorization ids, or None."""
    with _read(db, conn) as c:
        row = c.execute(select(t.AcmeOrder.__table__).where(t.AcmeOrder.id == order_id)).first()
        if row is None:
            return None
        ids = c.execute(
            select(t.AcmeAuthorization.id)
            .where(t.AcmeAuthorization.order_id == order_id)
            .order_by(t.AcmeAuthorization.id)
        ).all()
    return OrderRow(
        id=row.id,
        account_id=row.account_id,
        status=row.status,
        identifiers=json.loads(row.identifiers),
        profile=row.profile,
        not_before=row.not_before,
        not_after=row.not_after,
        expires=row.expires,
        error=_loads(row.error),
        certificate_serial=row.certificate_serial,
        created_at=row.created_at,
        authz_ids=tuple(int(r.id) for r in ids),
    )


def order_of_certificate(db: Database, serial: str) -> OrderRow | None:
    """The order that produced the certificate with this serial, or None."""
    with db.read() as c:
        row = c.execute(
            select(t.AcmeOrder.id).where(t.AcmeOrder.certificate_serial == serial)
        ).first()
    return get_order(db, int(row.id)) if row else None


def get_authz(db: Database, authz_id: int, conn: Connection | None = None) -> AuthzRow | None:
    """The authorization with this id and its challenges, or None."""
    with _read(db, conn) as c:
        row = c.execute(
            select(t.AcmeAuthorization.__table__).where(t.AcmeAuthorization.id == authz_id)
        ).first()
        if row is None:
            return None
        challenges = c.execute(
            select(t.AcmeChallenge.__table__)
            .where(t.AcmeChallenge.authz_id == authz_id)
            .order_by(t.AcmeChallenge.id)
        ).all()
    return AuthzRow(
        id=row.id,
        account_id=row.account_id,
        order_id=row.order_id,
        identifier_type=row.identifier_type,
        identifier_value=row.identifier_value,
        status=row.status,
        expires=row.expires,
        wildcard=bool(row.wildcard),
        challenges=tuple(_challenge(c) for c in challenges),
    )


def get_order_status(conn: Connection, order_id: int) -> tuple[str, datetime] | None:
    """An order's (status, expires), read in ``conn``."""
    row = conn.execute(
        select(t.AcmeOrder.status, t.AcmeOrder.expires).where(t.AcmeOrder.id == order_id)
    ).first()
    return (str(row.status), row.expires) if row else None


def authz_statuses(conn: Connection, order_id: int) -> list[str]:
    """The statuses of an order's authorizations."""
    rows = conn.execute(
        select(t.AcmeAuthorization.status).where(t.AcmeAuthorization.order_id == order_id)
    ).all()
    return [str(r.status) for r in rows]


def get_challenge(
    db: Database, challenge_id: int, conn: Connection | None = None
) -> ChallengeRow | None:
    with _read(db, conn) as c:
        row = c.execute(
            select(t.AcmeChallenge.__table__).where(t.AcmeChallenge.id == challenge_id)
        ).first()
    return _challenge(row) if row else None


def move_challenge(
    conn: Connection,
    challenge_id: int,
    from_status: str,
    to_status: str,
    *,
    validated_at: datetime | None = None,
    error: dict[str, Any] | None = None,
) -> bool:
    """Conditional status change of a challenge; True if this call made it."""
    values: dict[str, Any] = {"status": to_status}
    if validated_at is not None:
        values["validated_at"] = validated_at
    if error is not None:
        values["error"] = json.dumps(error)
    result = conn.execute(
        update(t.AcmeChallenge)
        .where(t.AcmeChallenge.id == challenge_id, t.AcmeChallenge.status == from_status)
        .values(**values)
    )
    return result.rowcount == 1


def move_authz(conn: Connection, authz_id: int, from_status: str, to_status: str) -> bool:
    """Conditional status change of an authorization; True if this call made it."""
    result = conn.execute(
        update(t.AcmeAuthorization)
        .where(t.AcmeAuthorization.id == authz_id, t.AcmeAuthorization.status == from_status)
        .values(status=to_status)
    )
    return result.rowcount == 1


def move_order(
    conn: Connection,
    order_id: int,
    from_status: str,
    to_status: str,
    *,
    error: dict[str, Any] | None = None,
    certificate_serial: str | None = None,
) -> bool:
    """Conditional status change of an order (``UPDATE … WHERE status = from``); True if this
    call made it. Concurrent finalizes race on ready → processing and exactly one wins."""
    values: dict[str, Any] = {"status": to_status}
    if error is not None:
        values["error"] = json.dumps(error)
    if certificate_serial is not None:
        values["certificate_serial"] = certificate_serial
    result = conn.execute(
        update(t.AcmeOrder)
        .where(t.AcmeOrder.id == order_id, t.AcmeOrder.status == from_status)
        .values(**values)
    )
    return result.rowcount == 1
