"""OCSP storage: delegated responder certificates and the pre-signed response of each certificate.

Plain functions over :class:`ca.store.db.Database` (reads) and a write transaction's
:class:`~sqlalchemy.Connection` (writes), kept apart from ``db.py`` so the OCSP and CRL code grow
independently. ``ocsp_responses`` holds one row per (issuer, serial), replaced when re-signed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ca.store import tables as t
from ca.store.db import Database


@dataclass(frozen=True)
class ResponderRow:
    """A delegated OCSP responder: its certificate and where its HSM key lives."""

    id: int
    issuer_id: int
    serial: str
    certificate_der: bytes
    key_token: str
    key_label: str
    key_id: str
    key_type: str
    not_before: datetime
    not_after: datetime
    status: str  # active | superseded
    created_at: datetime


@dataclass(frozen=True)
class CertStatus:
    """What OCSP says about one certificate: taken from its ``certificates`` row."""

    id: int
    issuer_id: int
    serial: str
    status: str  # issued | revoked
    not_after: datetime
    revoked_at: datetime | None
    revocation_reason: int | None

    @property
    def ocsp_status(self) -> str:
        """``good`` or ``revoked``: the value of ``ocsp_responses.cert_status``."""
        return "revoked" if self.status == "revoked" else "good"


@dataclass(frozen=True)
class StoredResponse:
    """A pre-signed response as stored."""

    issuer_id: int
    serial: str
    cert_status: str  # good | revoked
    this_update: datetime
    next_update: datetime
    produced_at: datetime
    der: bytes


_C = t.Certificate
_R = t.OcspResponse
_CERT_COLUMNS = (
    _C.id,
    _C.issuer_id,
    _C.serial,
    _C.status,
    _C.not_after,
    _C.revoked_at,
    _C.revocation_reason,
)
_RESPONSE_COLUMNS = (
    _R.cert_status,
    _R.this_update,
    _R.next_update,
    _R.produced_at,
    _R.der,
)
_JOIN = and_(_R.issuer_id == _C.issuer_id, _R.serial == _C.serial)

# The hot path of the responder (a cache miss): one indexed query, built once.
_LOOKUP = (
    select(*_CERT_COLUMNS, *_RESPONSE_COLUMNS)
    .select_from(_C)
    .outerjoin(_R, _JOIN)
    .where(_C.serial == bindparam("serial"), _C.issuer_id == bindparam("issuer_id"))
)


# Responders ------------------------------------------------------------------------------------


def responders(db: Database, status: str | None = "active") -> list[ResponderRow]:
    """Responders (oldest first), by default only the active ones."""
    query = select(t.OcspResponder.__table__).order_by(t.OcspResponder.id)
    if status is not None:
        query = query.where(t.OcspResponder.status == status)
    with db.read() as conn:
        return [_responder(r) for r in conn.execute(query).all()]


def add_responder(conn: Connection, row: Mapping[str, Any]) -> int:
    result = conn.execute(insert(t.OcspResponder).returning(t.OcspResponder.id), dict(row))
    return int(result.scalar_one())


def supersede_responders(conn: Connection, issuer_id: int, keep_id: int) -> list[str]:
    """Mark every other active responder of ``issuer_id`` superseded; return their serials."""
    r = t.OcspResponder
    serials = [
        str(s)
        for s in conn.execute(
            select(r.serial).where(r.issuer_id == issuer_id, r.status == "active", r.id != keep_id)
        ).scalars()
    ]
    if serials:
        conn.execute(
            update(r)
            .where(r.issuer_id == issuer_id, r.status == "active", r.id != keep_id)
            .values(status="superseded")
        )
    return serials


# Certificates and their responses ----------------------------------------------------------------


def lookup(
    db: Database, issuer_id: int, serial: str
) -> tuple[CertStatus | None, StoredResponse | None]:
    """The certificate ``serial`` of ``issuer_id`` and its stored response (either may be None)."""
    with db.read() as conn:
        row = conn.execute(_LOOKUP, {"serial": serial, "issuer_id": issuer_id}).first()
    if row is None:
        return None, None
    status = _status(row)
    if row.der is None:
        return status, None
    return status, StoredResponse(
        issuer_id=status.issuer_id,
        serial=status.serial,
        cert_status=row.cert_status,
        this_update=row.this_update,
        next_update=row.next_update,
        produced_at=row.produced_at,
        der=row.der,
    )


def certificate_status(db: Database, serial: str) -> CertStatus | None:
    """The status of certificate ``serial`` whatever its issuer; None if there is no such one."""
    with db.read() as conn:
        row = conn.execute(select(*_CERT_COLUMNS).where(_C.serial == serial)).first()
    return None if row is None else _status(row)


def certificates_to_sign(
    db: Database,
    issuer_id: int,
    now: datetime,
    stale_before: datetime,
    after_id: int = 0,
    limit: int = 1000,
) -> list[CertStatus]:
    """Unexpired certificates of ``issuer_id`` whose response is missing, older than
    ``stale_before``, ends before ``now`` or disagrees with the certificate's status.

    Keyset pagination on the certificate id (ids > ``after_id``, ascending).
    """
    query = (
        select(*_CERT_COLUMNS)
        .select_from(_C)
        .outerjoin(_R, _JOIN)
        .where(
            _C.issuer_id == issuer_id,
            _C.not_after > now,
            _C.id > after_id,
            or_(
                _R.id.is_(None),
                _R.produced_at < stale_before,
                _R.next_update <= now,
                and_(_C.status == "revoked", _R.cert_status != "revoked"),
                and_(_C.status != "revoked", _R.cert_status == "revoked"),
            ),
        )
        .order_by(_C.id)
        .limit(limit)
    )
    with db.read() as conn:
        return [_status(r) for r in conn.execute(query).all()]


_STORED = ("issuer_id", "serial", "cert_status", "this_update", "next_update", "produced_at", "der")
_TIMES = ("this_update", "next_update", "produced_at")
_upserts: dict[str, tuple[str, tuple[str, ...] | None, dict[str, Any]]] = {}


def _upsert_for(dialect: Any) -> tuple[str, tuple[str, ...] | None, dict[str, Any]]:
    """The upsert compiled once per dialect: (SQL, positional order or None, time converters)."""
    cached = _upserts.get(dialect.name)
    if cached is not None:
        return cached
    if dialect.name == "postgresql":
        stmt: Any = postgresql.insert(_R)
    elif dialect.name == "sqlite":
        stmt = sqlite.insert(_R)
    else:  # pragma: no cover - the two supported stores are above
        raise NotImplementedError(dialect.name)
    stmt = stmt.values({c: bindparam(c) for c in _STORED}).on_conflict_do_update(
        index_elements=[_R.issuer_id, _R.serial],
        set_={c: stmt.excluded[c] for c in _STORED[2:]},
    )
    compiled = stmt.compile(dialect=dialect)
    order = tuple(compiled.positiontup) if compiled.positional and compiled.positiontup else None
    converters = {c: _R.__table__.c[c].type.bind_processor(dialect) for c in _TIMES}
    _upserts[dialect.name] = (str(compiled), order, converters)
    return _upserts[dialect.name]


def store_responses(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert or replace responses (keys: issuer_id, serial, cert_status, this_update,
    next_update, produced_at, der) in one statement.

    Pre-signing stores hundreds of responses per batch that share their three times, so the
    statement is compiled once and the times converted once per batch, not per row (SQLAlchemy's
    per-row parameter processing otherwise costs more than the database does).
    """
    if not rows:
        return
    sql, order, converters = _upsert_for(conn.dialect)
    seen: dict[tuple[str, datetime], Any] = {}

    def convert(column: str, value: datetime) -> Any:
        key = (column, value)
        if key not in seen:
            fn = converters[column]
            seen[key] = fn(value) if fn is not None else value
        return seen[key]

    params: list[Any] = []
    for row in rows:
        values = {c: row[c] for c in _STORED}
        for c in _TIMES:
            values[c] = convert(c, values[c])
        params.append(tuple(values[c] for c in order) if order else values)
    conn.exec_driver_sql(sql, params)


def delete_expired_responses(conn: Connection, now: datetime) -> int:
    """Drop the responses of certificates that have expired; return how many."""
    expired = select(_C.serial).where(_C.not_after <= now)
    result = conn.execute(delete(_R).where(_R.serial.in_(expired)))
    return int(result.rowcount or 0)


def response_count(db: Database, issuer_id: int | None = None) -> int:
    query = select(func.count()).select_from(_R)
    if issuer_id is not None:
        query = query.where(_R.issuer_id == issuer_id)
    with db.read() as conn:
        return int(conn.execute(query).scalar_one())


def _status(row: Any) -> CertStatus:
    return CertStatus(
        id=int(row.id),
        issuer_id=int(row.issuer_id),
        serial=row.serial,
        status=row.status,
        not_after=row.not_after,
        revoked_at=row.revoked_at,
        revocation_reason=row.revocation_reason,
    )


def _responder(row: Any) -> ResponderRow:
    m = row._mapping
    return ResponderRow(**{f: m[f] for f in ResponderRow.__dataclass_fields__})
