"""Revocation and CRLs: the queries (revoking a row, revoked entries, published CRLs).

Functions over a :class:`ca.store.db.Database` or one of its connections; writes take the
caller's write transaction, so a state change and its audit event commit together.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from ca.store import tables as t
from ca.store.db import Database

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class RevocationState:
    """What revocation needs to know of a stored certificate."""

    id: int
    serial: str
    issuer_id: int
    profile: str
    requester: str
    status: str
    revoked_at: datetime | None
    revocation_reason: int | None
    crl_shard: int


@dataclass(frozen=True)
class CrlMeta:
    """A published CRL without its bytes."""

    id: int
    issuer_id: int
    shard: int
    number: int
    this_update: datetime
    next_update: datetime
    entries: int
    sha256: str
    #: When its entries were read: revocations after this are not in it.
    created_at: datetime


_STATE_COLUMNS = (
    t.Certificate.id,
    t.Certificate.serial,
    t.Certificate.issuer_id,
    t.Certificate.profile,
    t.Certificate.requester,
    t.Certificate.status,
    t.Certificate.revoked_at,
    t.Certificate.revocation_reason,
    t.Certificate.crl_shard,
)
_META_COLUMNS = (
    t.CrlRecord.id,
    t.CrlRecord.issuer_id,
    t.CrlRecord.shard,
    t.CrlRecord.number,
    t.CrlRecord.this_update,
    t.CrlRecord.next_update,
    t.CrlRecord.entries,
    t.CrlRecord.sha256,
    t.CrlRecord.created_at,
)


def revocation_state(conn: Connection, serial: str) -> RevocationState | None:
    row = conn.execute(select(*_STATE_COLUMNS).where(t.Certificate.serial == serial)).first()
    return None if row is None else RevocationState(**row._mapping)


def mark_revoked(conn: Connection, serial: str, when: datetime, reason_code: int) -> bool:
    """Revoke a certificate that is still ``issued``; False if it is not (already revoked)."""
    result = conn.execute(
        update(t.Certificate)
        .where(t.Certificate.serial == serial, t.Certificate.status == "issued")
        .values(status="revoked", revoked_at=when, revocation_reason=reason_code)
    )
    return int(result.rowcount) == 1


def set_ca_status(conn: Connection, ca_id: int, from_status: str, to_status: str) -> bool:
    result = conn.execute(
        update(t.CertificateAuthority)
        .where(t.CertificateAuthority.id == ca_id, t.CertificateAuthority.status == from_status)
        .values(status=to_status)
    )
    return int(result.rowcount) == 1


#: Per database: when the CAs' statuses were last read, and the CAs that were not active.
_inactive_seen: weakref.WeakKeyDictionary[Database, tuple[float, dict[int, str]]] = (
    weakref.WeakKeyDictionary()
)


def inactive_cas(db: Database, ca_ids: set[int], max_age: float = 0.0) -> dict[int, str]:
    """Of ``ca_ids``, the CAs that no longer issue: id → status.

    With ``max_age`` > 0, an answer read less than that many seconds ago in this process is
    reused (issuance asks before every batch; one query per second is plenty).
    """
    seen = _inactive_seen.get(db)
    if max_age <= 0 or seen is None or time.monotonic() - seen[0] >= max_age:
        query = select(t.CertificateAuthority.id, t.CertificateAuthority.status).where(
            t.CertificateAuthority.status != "active"
        )
        with db.read() as conn:
            seen = (time.monotonic(), {int(r[0]): str(r[1]) for r in conn.execute(query).all()})
        _inactive_seen[db] = seen
    return {ca_id: status for ca_id, status in seen[1].items() if ca_id in ca_ids}


def forget_ca_statuses(db: Database) -> None:
    """Make the next :func:`inactive_cas` read the statuses again (after changing one)."""
    _inactive_seen.pop(db, None)


def revoked_entries(
    db: Database, issuer_id: int, shard: int | None, expired_before: datetime
) -> list[tuple[int, int, int]]:
    """``(serial, revoked_at as Unix seconds, reason code)`` of the CA's revoked certificates.

    ``shard`` None: all of them. Certificates that expired before ``expired_before`` are left
    out (RFC 5280 3.3 lets an entry go once it appeared on a CRL issued after the expiry).
    """
    c = t.Certificate.__table__.c
    query = select(c.serial, c.revoked_at, c.revocation_reason).where(
        c.issuer_id == issuer_id, c.status == "revoked", c.not_after >= expired_before
    )
    if shard is not None:
        query = query.where(c.crl_shard == shard)
    entries = []
    with db.read() as conn:
        result = conn.execution_options(yield_per=10000).execute(query.order_by(c.id))
        for serial, revoked_at, reason in result:
            seconds = int((revoked_at - _EPOCH).total_seconds())
            entries.append((int(serial, 16), seconds, int(reason or 0)))
    return entries


def revocations_since(db: Database, issuer_id: int, since: datetime) -> list[tuple[int, datetime]]:
    """``(crl_shard, revoked_at)`` of the CA's revocations after ``since``."""
    c = t.Certificate
    query = select(c.crl_shard, c.revoked_at).where(
        c.issuer_id == issuer_id, c.status == "revoked", c.revoked_at > since
    )
    with db.read() as conn:
        return [(int(r[0]), r[1]) for r in conn.execute(query).all() if r[1] is not None]


def newest_revocation(db: Database, issuer_id: int) -> datetime | None:
    query = select(func.max(t.Certificate.revoked_at)).where(
        t.Certificate.issuer_id == issuer_id, t.Certificate.status == "revoked"
    )
    with db.read() as conn:
        value = conn.execute(query).scalar_one()
    return value if isinstance(value, datetime) else None


def current_crls(db: Database, issuer_id: int | None = None) -> dict[tuple[int, int], CrlMeta]:
    """The newest CRL of every (CA, shard), or of one CA's shards."""
    r = t.CrlRecord
    newest = select(r.issuer_id, r.shard, func.max(r.number).label("number")).group_by(
        r.issuer_id, r.shard
    )
    if issuer_id is not None:
        newest = newest.where(r.issuer_id == issuer_id)
    sub = newest.subquery()
    query = select(*_META_COLUMNS).join(
        sub,
        (r.issuer_id == sub.c.issuer_id) & (r.shard == sub.c.shard) & (r.number == sub.c.number),
    )
    with db.read() as conn:
        rows = conn.execute(query).all()
    return {(int(m.issuer_id), int(m.shard)): CrlMeta(**m._mapping) for m in rows}


def latest_crl(db: Database, issuer_id: int, shard: int) -> CrlMeta | None:
    r = t.CrlRecord
    query = (
        select(*_META_COLUMNS)
        .where(r.issuer_id == issuer_id, r.shard == shard)
        .order_by(r.number.desc())
        .limit(1)
    )
    with db.read() as conn:
        row = conn.execute(query).first()
    return None if row is None else CrlMeta(**row._mapping)


def crl_der(db: Database, crl_id: int) -> bytes:
    with db.read() as conn:
        return bytes(
            conn.execute(select(t.CrlRecord.der).where(t.CrlRecord.id == crl_id)).scalar_one()
        )


def last_crl_number(conn: Connection, issuer_id: int, shard: int) -> int:
    """The highest CRL number used for (CA, shard); 0 if none."""
    value = conn.execute(
        select(func.max(t.CrlRecord.number)).where(
            t.CrlRecord.issuer_id == issuer_id, t.CrlRecord.shard == shard
        )
    ).scalar_one()
    return int(value or 0)


def add_crl(conn: Connection, row: Mapping[str, Any]) -> None:
    conn.execute(insert(t.CrlRecord), [dict(row)])
