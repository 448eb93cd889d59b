"""Queries of the expiry notices: candidate certificates, possible renewals, what was recorded."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, insert, or_, select, update

from ca.store import tables as t

_T = TypeVar("_T")
_CHUNK = 500  # IN lists stay well below every driver's parameter limit

_c = t.Certificate
_COLUMNS = (
    _c.serial,
    _c.subject,
    _c.sans,
    _c.not_before,
    _c.not_after,
    _c.profile,
    _c.requester,
    _c.status,
    _c.fingerprint_sha256,
    _c.owner,
    t.CertificateAuthority.name.label("issuer"),
)


def _chunks(items: Iterable[_T]) -> Iterator[list[_T]]:
    batch: list[_T] = []
    for item in items:
        batch.append(item)
        if len(batch) == _CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


def _rows(conn: Connection, *where: Any) -> list[dict[str, Any]]:
    query = (
        select(*_COLUMNS)
        .join(t.CertificateAuthority, _c.issuer_id == t.CertificateAuthority.id)
        .where(*where)
        .order_by(_c.id)
    )
    result = conn.execute(query)
    keys = list(result.keys())  # once: a mapping per row costs more than the query
    out = []
    for row in result.all():
        values = dict(zip(keys, row, strict=True))
        values["sans"] = tuple(json.loads(values["sans"]))
        out.append(values)
    return out


def expiring_certificates(
    conn: Connection, now: datetime, until: datetime, skip_profiles: Sequence[str]
) -> list[dict[str, Any]]:
    """Issued (unrevoked) certificates with ``now < not_after <= until``."""
    return _rows(
        conn,
        _c.status == "issued",
        _c.not_after > now,
        _c.not_after <= until,
        _c.profile.not_in(list(skip_profiles)),
    )


def later_certificates(
    conn: Connection, names: Iterable[str], after: datetime
) -> list[dict[str, Any]]:
    """Issued certificates expiring after ``after`` whose owner or requester is one of ``names``
    (the possible renewals of the candidates)."""
    found: dict[str, dict[str, Any]] = {}
    for batch in _chunks(sorted(set(names))):
        for row in _rows(
            conn,
            _c.status == "issued",
            _c.not_after > after,
            or_(_c.owner.in_(batch), _c.requester.in_(batch)),
        ):
            found[row["serial"]] = row
    return list(found.values())


def acme_accounts(conn: Connection, ids: Iterable[int]) -> dict[int, tuple[str | None, list[str]]]:
    """Account id → (the API client it is bound to, its contact URLs)."""
    a = t.AcmeAccount
    out: dict[int, tuple[str | None, list[str]]] = {}
    for batch in _chunks(sorted(set(ids))):
        for row in conn.execute(select(a.id, a.requester, a.contact).where(a.id.in_(batch))):
            out[int(row.id)] = (row.requester, list(json.loads(row.contact or "[]")))
    return out


def acme_accounts_bound_to(conn: Connection, clients: Iterable[str]) -> list[int]:
    """The ids of the ACME accounts bound (EAB) to these API clients."""
    a = t.AcmeAccount
    ids: list[int] = []
    for batch in _chunks(sorted(set(clients))):
        ids += [int(i) for i in conn.execute(select(a.id).where(a.requester.in_(batch))).scalars()]
    return ids


def recorded_notices(
    conn: Connection, serials: Iterable[str]
) -> dict[tuple[str, int, str], tuple[str, int, datetime | None]]:
    """(serial, window days, channel) → (status, attempts, next_attempt_at) for these serials."""
    n = t.ExpiryNotice
    out: dict[tuple[str, int, str], tuple[str, int, datetime | None]] = {}
    for batch in _chunks(sorted(set(serials))):
        query = select(
            n.serial, n.window_days, n.channel, n.status, n.attempts, n.next_attempt_at
        ).where(n.serial.in_(batch))
        for row in conn.execute(query):
            out[(row.serial, int(row.window_days), row.channel)] = (
                row.status,
                int(row.attempts),
                row.next_attempt_at,
            )
    return out


def record_notices(
    conn: Connection,
    rows: Sequence[Mapping[str, Any]],
    now: datetime,
) -> None:
    """Insert or update one row per (serial, window_days, channel) in ``rows``.

    Each of ``rows`` has those three plus ``owner``, ``status``, ``notice_id``, ``attempts``,
    ``next_attempt_at``, ``sent_at``, ``last_error``. Runs inside the caller's write
    transaction (which holds the writer lock, so nobody inserts the same key meanwhile).
    """
    n = t.ExpiryNotice
    existing: dict[tuple[str, int, str], int] = {}
    for batch in _chunks(sorted({r["serial"] for r in rows})):
        query = select(n.id, n.serial, n.window_days, n.channel).where(n.serial.in_(batch))
        for found in conn.execute(query):
            existing[(found.serial, int(found.window_days), found.channel)] = int(found.id)
    fresh = []
    for row in rows:
        row_id = existing.get((row["serial"], row["window_days"], row["channel"]))
        if row_id is None:
            fresh.append({**row, "first_attempt_at": now, "last_attempt_at": now})
            continue
        values = {k: v for k, v in row.items() if k not in ("serial", "window_days", "channel")}
        conn.execute(update(n).where(n.id == row_id).values(last_attempt_at=now, **values))
    if fresh:
        conn.execute(insert(n), fresh)  # one executemany for a notice's new rows


def recorded(conn: Connection, serial: str) -> list[dict[str, Any]]:
    """Every row of one certificate (for ``hsmca notices`` and tests)."""
    n = t.ExpiryNotice
    query = select(n.__table__).where(n.serial == serial).order_by(n.id)
    return [dict(r._mapping) for r in conn.execute(query)]
