"""ACME storage: single-use nonces, accounts, orders, authorizations and challenges.

Plain functions over :class:`ca.store.db.Database` (reads, nonces) and a write transaction's
:class:`~sqlalchemy.Connection` (account changes, which commit with their audit event).

Nonces are shared by every worker process and node: handing one out writes nothing (it is
MAC'd, :mod:`ca.acme.nonces`); using one inserts its row, and only the request whose insert
added the row proceeds.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from ca.acme.nonces import make_nonce, nonce_issued_at
from ca.errors import StoreError
from ca.store import tables as t
from ca.store.db import Database

#: One issued nonce in this many also purges the expired ones.
PURGE_EVERY = 64


@contextmanager
def _nonce_tx(db: Database) -> Iterator[Connection]:
    """A short transaction for nonces, committed without waiting for the disk.

    A used nonce guards the request it came with, and every request that changes anything
    commits that change flushed, after the nonce: the flush makes the nonce durable too (the
    write-ahead log is flushed in order). Only a replay of a request that changed nothing could
    pass after a power loss. That saves one disk flush on every ACME request.

    SQLite: the writer lock (one writer anyway); PostgreSQL: a plain transaction (a single-row
    insert or delete is atomic on its own) with ``synchronous_commit`` off.
    """
    if db.is_sqlite:
        with db.write(flush=False) as conn:
            yield conn
        return
    try:
        with db.engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            yield conn
    except SQLAlchemyError as exc:
        raise StoreError(f"database unavailable: {type(exc).__name__}") from exc


_NONCE_KEYS: dict[str, bytes] = {}


def nonce_key(db: Database) -> bytes:
    """The installation's nonce HMAC key: made (once, by whoever comes first) and cached."""
    cached = _NONCE_KEYS.get(db.url)
    if cached is not None:
        return cached
    with db.read() as conn:
        row = conn.execute(select(t.AcmeNonceKey.key).where(t.AcmeNonceKey.id == 1)).first()
    if row is None:
        fresh = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")
        with db.write() as conn:
            conn.execute(
                _insert_ignore(db, t.AcmeNonceKey).values(
                    id=1, key=fresh, created_at=datetime.now(UTC)
                )
            )
            row = conn.execute(select(t.AcmeNonceKey.key).where(t.AcmeNonceKey.id == 1)).first()
    assert row is not None
    key = base64.urlsafe_b64decode(str(row.key))
    _NONCE_KEYS[db.url] = key
    return key


def _insert_ignore(db: Database, table: Any) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING`` in the database's dialect."""
    if db.is_sqlite:
        return sqlite_insert(table).on_conflict_do_nothing()
    return pg_insert(table).on_conflict_do_nothing()


def issue_nonce(db: Database, now: datetime, lifetime_seconds: int) -> str:
    """A fresh nonce (nothing is written: see :mod:`ca.acme.nonces`)."""
    return make_nonce(nonce_key(db), now)


def use_nonce(db: Database, nonce: str, now: datetime, lifetime_seconds: int) -> bool:
    """Consume ``nonce``: True for exactly one caller if we made it and it has not expired."""
    issued = nonce_issued_at(nonce_key(db), nonce)
    if issued is None:
        return False
    # A minute of slack for the clocks of other nodes; the lifetime bounds how long rows stay.
    if not now - timedelta(seconds=lifetime_seconds) <= issued <= now + timedelta(seconds=60):
        return False
    with _nonce_tx(db) as conn:
        # RETURNING, not rowcount: drivers disagree on rowcount for ON CONFLICT DO NOTHING.
        added = conn.execute(
            _insert_ignore(db, t.AcmeNonce)
            .values(nonce=nonce, created_at=issued)
            .returning(t.AcmeNonce.nonce)
        ).first()
        if secrets.randbelow(PURGE_EVERY) == 0:
            purge_nonces(conn, now, lifetime_seconds)
        return added is not None


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
    eab_key_id: str | None = None  # the EAB key that bound it to the API client ``requester``
    created_ip: str | None = None  # where new-account came from (per-IP rate limit)


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
        eab_key_id=row.eab_key_id,
        created_ip=row.created_ip,
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
    eab_key_id: str | None = None,
    created_ip: str | None = None,
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
            eab_key_id=eab_key_id,
            created_ip=created_ip,
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
    started_at: datetime | None = None  # when its validation (last) started


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
    replaces: str | None = None  # ARI (RFC 9773 §5): serial of the certificate it replaces


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
        started_at=row.started_at,
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
    replaces: str | None = None,
    challenge_types: Sequence[Sequence[str]] | None = None,
) -> int:
    """Insert a pending order, one pending authorization per identifier and one challenge per
    type in ``challenge_types`` (per identifier; default http-01) per authorization (a fresh
    256-bit token each); the order's id. A wildcard's authorization names the base name."""
    result = conn.execute(
        insert(t.AcmeOrder).values(
            account_id=account_id,
            status="pending",
            identifiers=json.dumps(identifiers),
            profile=profile,
            expires=expires,
            created_at=now,
            replaces=replaces,
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    order_id = int(key[0])
    types = challenge_types or [("http-01",)] * len(identifiers)
    for ident, wildcard, kinds in zip(identifiers, wildcards, types, strict=True):
        authz = conn.execute(
            insert(t.AcmeAuthorization).values(
                account_id=account_id,
                order_id=order_id,
                identifier_type=ident["type"],
                # RFC 8555 §7.1.4: the authorization of *.x.test is for x.test, wildcard true
                identifier_value=ident["value"][2:] if wildcard else ident["value"],
                status="pending",
                expires=authz_expires,
                wildcard=wildcard,
            )
        ).inserted_primary_key
        assert authz is not None
        for kind in kinds:
            conn.execute(
                insert(t.AcmeChallenge).values(
                    authz_id=int(authz[0]),
                    type=kind,
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
        replaces=row.replaces,
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


def authz_states(db: Database, order_id: int) -> list[tuple[str, datetime]]:
    """``(status, expires)`` of each of an order's authorizations (one read)."""
    with db.read() as conn:
        rows = conn.execute(
            select(t.AcmeAuthorization.status, t.AcmeAuthorization.expires).where(
                t.AcmeAuthorization.order_id == order_id
            )
        ).all()
    return [(str(r.status), r.expires) for r in rows]


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
    started_at: datetime | None = None,
) -> bool:
    """Conditional status change of a challenge; True if this call made it."""
    values: dict[str, Any] = {"status": to_status}
    if validated_at is not None:
        values["validated_at"] = validated_at
    if started_at is not None:
        values["started_at"] = started_at
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
    processing_since: datetime | None = None,
) -> bool:
    """Conditional status change of an order (``UPDATE … WHERE status = from``); True if this
    call made it. Concurrent finalizes race on ready → processing and exactly one wins."""
    values: dict[str, Any] = {"status": to_status}
    if processing_since is not None:
        values["processing_since"] = processing_since
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


# Recovery and housekeeping (ca/acme/recovery.py) ---------------------------------------------


def orders_processing_since(db: Database, before: datetime) -> list[tuple[int, int, datetime]]:
    """``(order id, account id, processing_since)`` of orders ``processing`` since before
    ``before`` (or with no start recorded): finalizes a crash may have cut short."""
    query = select(t.AcmeOrder.id, t.AcmeOrder.account_id, t.AcmeOrder.processing_since).where(
        t.AcmeOrder.status == "processing",
        (t.AcmeOrder.processing_since < before) | (t.AcmeOrder.processing_since.is_(None)),
    )
    with db.read() as conn:
        return [
            (int(r.id), int(r.account_id), r.processing_since or datetime.min)
            for r in conn.execute(query.order_by(t.AcmeOrder.id)).all()
        ]


def certificates_of_order(conn: Connection, order_id: int, since: datetime) -> list[str]:
    """Serials of certificates stored since ``since`` whose metadata names the ACME order."""
    rows = conn.execute(
        select(t.Certificate.serial, t.Certificate.meta).where(
            t.Certificate.created_at >= since, t.Certificate.meta.is_not(None)
        )
    ).all()
    out = []
    for row in rows:
        meta = _loads(row.meta) or {}
        if meta.get("acme_order") == str(order_id):
            out.append(str(row.serial))
    return out


def pending_intents_of(conn: Connection, requester: str, since: datetime) -> int:
    """How many issuance intents of ``requester`` made since ``since`` are still pending."""
    rows = conn.execute(
        select(t.IssuanceIntent.id).where(
            t.IssuanceIntent.state == "pending",
            t.IssuanceIntent.requester == requester,
            t.IssuanceIntent.created_at >= since,
        )
    ).all()
    return len(rows)


def challenges_processing_since(db: Database, before: datetime) -> list[int]:
    """Ids of challenges ``processing`` since before ``before`` (or with no start recorded)."""
    query = select(t.AcmeChallenge.id).where(
        t.AcmeChallenge.status == "processing",
        (t.AcmeChallenge.started_at < before) | (t.AcmeChallenge.started_at.is_(None)),
    )
    with db.read() as conn:
        return [int(r.id) for r in conn.execute(query.order_by(t.AcmeChallenge.id)).all()]


def expire_orders(conn: Connection, now: datetime) -> int:
    """Mark pending/ready orders past their expiry invalid; the number changed."""
    result = conn.execute(
        update(t.AcmeOrder)
        .where(t.AcmeOrder.status.in_(("pending", "ready")), t.AcmeOrder.expires <= now)
        .values(
            status="invalid",
            error=json.dumps(
                {
                    "type": "urn:ietf:params:acme:error:malformed",
                    "detail": "the order expired before it was finalized",
                    "status": 403,
                }
            ),
        )
    )
    return int(result.rowcount)


def expire_authorizations(conn: Connection, now: datetime) -> int:
    """Mark pending/valid authorizations past their expiry ``expired``; the number changed."""
    result = conn.execute(
        update(t.AcmeAuthorization)
        .where(
            t.AcmeAuthorization.status.in_(("pending", "valid")),
            t.AcmeAuthorization.expires <= now,
        )
        .values(status="expired")
    )
    return int(result.rowcount)


# revokeCert and ARI (ca/acme/revocation.py, ca/acme/renewal.py) --------------------------------


def valid_authz_identifiers(
    db: Database, account_id: int, now: datetime
) -> frozenset[tuple[str, str]]:
    """The (type, value) identifiers ``account_id`` holds valid, unexpired authorizations for."""
    query = select(t.AcmeAuthorization.identifier_type, t.AcmeAuthorization.identifier_value).where(
        t.AcmeAuthorization.account_id == account_id,
        t.AcmeAuthorization.status == "valid",
        t.AcmeAuthorization.expires > now,
    )
    with db.read() as conn:
        return frozenset((str(r[0]), str(r[1])) for r in conn.execute(query).all())


def replacing_orders(
    db: Database, serial: str, conn: Connection | None = None
) -> list[tuple[str, datetime]]:
    """(status, expires) of the orders whose ``replaces`` is the certificate ``serial``."""
    query = select(t.AcmeOrder.status, t.AcmeOrder.expires).where(t.AcmeOrder.replaces == serial)
    with _read(db, conn) as c:
        return [(str(r.status), r.expires) for r in c.execute(query).all()]


# External account binding keys, rate-limit counts, listings (ca/acme/eab.py, limits.py) ---------


@dataclass(frozen=True)
class EabKeyRow:
    """A stored external account binding key (the HMAC key base64url, as given out)."""

    key_id: str
    hmac_key: str
    client: str
    created_at: datetime
    expires: datetime
    account_id: int | None
    used_at: datetime | None


def add_eab_key(
    conn: Connection, *, key_id: str, hmac_key: str, client: str, now: datetime, expires: datetime
) -> None:
    conn.execute(
        insert(t.AcmeEabKey).values(
            key_id=key_id, hmac_key=hmac_key, client=client, created_at=now, expires=expires
        )
    )


def get_eab_key(db: Database, key_id: str, conn: Connection | None = None) -> EabKeyRow | None:
    with _read(db, conn) as c:
        row = c.execute(select(t.AcmeEabKey.__table__).where(t.AcmeEabKey.key_id == key_id)).first()
    return EabKeyRow(**row._mapping) if row else None


def list_eab_keys(db: Database) -> list[EabKeyRow]:
    """Every EAB key, oldest first."""
    query = select(t.AcmeEabKey.__table__).order_by(t.AcmeEabKey.created_at, t.AcmeEabKey.key_id)
    with db.read() as c:
        return [EabKeyRow(**r._mapping) for r in c.execute(query).all()]


def delete_unused_eab_key(conn: Connection, key_id: str) -> bool:
    """Delete a key that bound no account; True if this call deleted it."""
    result = conn.execute(
        delete(t.AcmeEabKey).where(t.AcmeEabKey.key_id == key_id, t.AcmeEabKey.account_id.is_(None))
    )
    return result.rowcount == 1


def use_eab_key(conn: Connection, key_id: str, account_id: int, now: datetime) -> bool:
    """Mark an unused, unexpired key used by ``account_id`` (``UPDATE … WHERE account_id IS
    NULL``): of concurrent new-accounts with one key exactly one gets True."""
    result = conn.execute(
        update(t.AcmeEabKey)
        .where(
            t.AcmeEabKey.key_id == key_id,
            t.AcmeEabKey.account_id.is_(None),
            t.AcmeEabKey.expires > now,
        )
        .values(account_id=account_id, used_at=now)
    )
    return result.rowcount == 1


def recent_order_times(
    db: Database, account_id: int, since: datetime, limit: int
) -> list[datetime]:
    """Creation times of the account's newest orders after ``since`` (at most ``limit``)."""
    query = (
        select(t.AcmeOrder.created_at)
        .where(t.AcmeOrder.account_id == account_id, t.AcmeOrder.created_at > since)
        .order_by(t.AcmeOrder.created_at.desc())
        .limit(limit)
    )
    with db.read() as c:
        return [r.created_at for r in c.execute(query).all()]


def recent_account_times(conn: Connection, ip: str, since: datetime, limit: int) -> list[datetime]:
    """Creation times of the newest accounts created from ``ip`` after ``since`` (≤ ``limit``)."""
    query = (
        select(t.AcmeAccount.created_at)
        .where(t.AcmeAccount.created_ip == ip, t.AcmeAccount.created_at > since)
        .order_by(t.AcmeAccount.created_at.desc())
        .limit(limit)
    )
    return [r.created_at for r in conn.execute(query).all()]


def list_accounts(db: Database) -> list[AccountRow]:
    """Every account, by id."""
    with db.read() as c:
        rows = c.execute(select(t.AcmeAccount.__table__).order_by(t.AcmeAccount.id)).all()
    return [_account(r) for r in rows]


def account_order_ids(
    db: Database, account_id: int, now: datetime, after_id: int, limit: int
) -> list[int]:
    """Ids (ascending, above ``after_id``) of the account's orders worth listing (RFC 8555
    §7.1.2.1): not invalid, and pending/ready ones only while unexpired."""
    query = (
        select(t.AcmeOrder.id)
        .where(
            t.AcmeOrder.account_id == account_id,
            t.AcmeOrder.id > after_id,
            t.AcmeOrder.status != "invalid",
            (t.AcmeOrder.status.not_in(("pending", "ready"))) | (t.AcmeOrder.expires > now),
        )
        .order_by(t.AcmeOrder.id)
        .limit(limit)
    )
    with db.read() as c:
        return [int(r.id) for r in c.execute(query).all()]
