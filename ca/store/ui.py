"""Queries of the compliance view (``/ui``) and its users: shared secrets, users, failed
sign-ins, dashboard figures, the audit event browser and a certificate's audit trail.

Read-only queries run on a :meth:`Database.read` connection; writes take a connection from the
caller's :meth:`Database.write` transaction, so every change commits with its audit event.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, case, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ca.store import tables as t
from ca.store.db import Database

# Secrets -----------------------------------------------------------------------------------------

_SECRETS: dict[tuple[str, str], bytes] = {}


def app_secret(db: Database, name: str, size: int = 32) -> bytes:
    """The shared secret ``name``: made once by whichever process comes first, then cached.

    INSERT-or-ignore then SELECT, so concurrent first uses on several nodes agree on one value.
    """
    cached = _SECRETS.get((db.url, name))
    if cached is not None:
        return cached
    query = select(t.AppSecret.value).where(t.AppSecret.name == name)
    with db.read() as conn:
        row = conn.execute(query).first()
    if row is None:
        fresh = base64.urlsafe_b64encode(secrets.token_bytes(size)).decode("ascii")
        values = {"name": name, "value": fresh, "created_at": datetime.now(UTC)}
        stmt = (sqlite_insert if db.is_sqlite else pg_insert)(t.AppSecret).values(values)
        with db.write() as conn:
            conn.execute(stmt.on_conflict_do_nothing())
            row = conn.execute(query).first()
    assert row is not None
    value = base64.urlsafe_b64decode(str(row.value))
    _SECRETS[(db.url, name)] = value
    return value


# Users -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserRow:
    """A user of the compliance view as stored."""

    name: str
    role: str
    password_hash: str
    disabled: bool
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None


def get_user(db: Database, name: str, conn: Connection | None = None) -> UserRow | None:
    """The user called ``name``, or None."""
    query = select(t.UiUser).where(t.UiUser.name == name)
    if conn is not None:
        row = conn.execute(query).first()
    else:
        with db.read() as own:
            row = own.execute(query).first()
    return None if row is None else _user(row)


def list_users(db: Database) -> list[UserRow]:
    """Every user, by name."""
    with db.read() as conn:
        return [_user(r) for r in conn.execute(select(t.UiUser).order_by(t.UiUser.name)).all()]


def add_user(conn: Connection, name: str, role: str, password_hash: str, now: datetime) -> None:
    """Insert a user (the unique name makes a concurrent duplicate fail)."""
    conn.execute(
        insert(t.UiUser),
        [
            {
                "name": name,
                "role": role,
                "password_hash": password_hash,
                "disabled": False,
                "created_at": now,
                "updated_at": now,
            }
        ],
    )


def update_user(conn: Connection, name: str, only_enabled: bool = False, **values: Any) -> bool:
    """Change a user's columns; False if there is no such user (or it is disabled and
    ``only_enabled``)."""
    query = update(t.UiUser).where(t.UiUser.name == name)
    if only_enabled:
        query = query.where(t.UiUser.disabled.is_(False))
    return bool(conn.execute(query.values(**values)).rowcount)


def _user(row: Any) -> UserRow:
    m = row._mapping
    return UserRow(
        name=m["name"],
        role=m["role"],
        password_hash=m["password_hash"],
        disabled=bool(m["disabled"]),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        last_login_at=m["last_login_at"],
    )


# Failed sign-ins -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailureCounts:
    """Failed sign-ins within the window, by the name tried and by the address."""

    by_name: int
    by_address: int
    oldest_name: datetime | None  # the oldest failure counted for the name (when it ages out)
    oldest_address: datetime | None


def count_failures(conn: Connection, name: str, address: str, since: datetime) -> FailureCounts:
    """Failures since ``since`` for ``name`` and for ``address`` (one query)."""
    f = t.UiLoginFailure
    of_name = f.username == name
    of_address = f.address == address
    row = conn.execute(
        select(
            func.count(case((of_name, 1))),
            func.count(case((of_address, 1))),
            func.min(case((of_name, f.at))),
            func.min(case((of_address, f.at))),
        ).where(f.at >= since, or_(of_name, of_address))
    ).one()
    return FailureCounts(int(row[0]), int(row[1]), _aware(row[2]), _aware(row[3]))


def add_failure(conn: Connection, name: str, address: str, at: datetime) -> int:
    """Record a failed (or in-progress) sign-in; returns its id."""
    result = conn.execute(
        insert(t.UiLoginFailure)
        .values(username=name, address=address, at=at)
        .returning(t.UiLoginFailure.id)
    )
    return int(result.scalar_one())


def forget_attempt(conn: Connection, attempt_id: int) -> None:
    """An attempt recorded as a failure turned out right: remove its row."""
    conn.execute(delete(t.UiLoginFailure).where(t.UiLoginFailure.id == attempt_id))


def purge_failures(conn: Connection, before: datetime) -> int:
    """Delete failures older than ``before``; how many went."""
    return int(conn.execute(delete(t.UiLoginFailure).where(t.UiLoginFailure.at < before)).rowcount)


def _aware(value: Any) -> datetime | None:
    # Aggregates bypass the column type: SQLite gives text, PostgreSQL a naive datetime.
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# Dashboard ---------------------------------------------------------------------------------------

EXPIRY_WINDOWS = (7, 14, 30)


@dataclass(frozen=True)
class CertificateCounts:
    """Inventory figures at one moment."""

    total: int  # every certificate stored (issued at some point)
    valid: int  # not revoked, not expired
    revoked: int
    expired: int  # not revoked, past notAfter
    expiring: dict[int, int]  # days → valid certificates whose notAfter is within that many days


def certificate_counts(db: Database, now: datetime) -> CertificateCounts:
    """The dashboard's certificate figures (one aggregate query)."""
    c = t.Certificate
    live = c.status != "revoked"
    columns = [
        func.count(),
        func.count(case((c.status == "revoked", 1))),
        func.count(case(((live) & (c.not_after < now), 1))),
        func.count(case(((live) & (c.not_after >= now), 1))),
    ]
    for days in EXPIRY_WINDOWS:
        end = now + timedelta(days=days)
        columns.append(func.count(case(((live) & (c.not_after >= now) & (c.not_after < end), 1))))
    with db.read() as conn:
        row = conn.execute(select(*columns).select_from(c)).one()
    values = [int(v) for v in row]
    return CertificateCounts(
        total=values[0],
        revoked=values[1],
        expired=values[2],
        valid=values[3],
        expiring=dict(zip(EXPIRY_WINDOWS, values[4:], strict=True)),
    )


@dataclass(frozen=True)
class CheckpointRow:
    """A stored audit checkpoint."""

    seq: int
    hash: str
    time: str
    key_serial: str
    algorithm: str
    signature: str  # base64


def latest_checkpoint(db: Database) -> CheckpointRow | None:
    """The checkpoint of the highest seq, or None."""
    cp = t.AuditCheckpoint
    with db.read() as conn:
        row = conn.execute(
            select(cp.seq, cp.hash, cp.time, cp.key_serial, cp.algorithm, cp.signature)
            .order_by(cp.seq.desc())
            .limit(1)
        ).first()
    if row is None:
        return None
    return CheckpointRow(
        int(row.seq), row.hash, row.time, row.key_serial, row.algorithm, row.signature
    )


def audit_head(db: Database) -> tuple[int, str] | None:
    """``(seq, hash hex)`` of the newest event, or None for an empty chain."""
    e = t.AuditEvent
    with db.read() as conn:
        row = conn.execute(select(e.seq, e.hash).order_by(e.seq.desc()).limit(1)).first()
    return None if row is None else (int(row[0]), str(row[1]))


# The audit browser ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventRow:
    """An audit event exactly as stored (``details`` is the canonical JSON text)."""

    seq: int
    time: str
    actor: str
    action: str
    subject: str
    details: str
    prev_hash: str
    hash: str

    def details_pretty(self) -> str:
        """``details`` indented for reading (the stored text if it is not JSON)."""
        try:
            return json.dumps(
                json.loads(self.details), indent=2, sort_keys=True, ensure_ascii=False
            )
        except ValueError:
            return self.details


@dataclass(frozen=True)
class EventQuery:
    """Filters of the audit browser; ``None`` means "any".

    ``since``/``until`` are RFC 3339 UTC texts in the stored form (fixed width, so they compare
    as text). ``action`` ending in ``*`` is a prefix. ``subject`` matches a substring.
    """

    since: str | None = None
    until: str | None = None
    actor: str | None = None
    action: str | None = None
    subject: str | None = None


@dataclass(frozen=True)
class EventPage:
    """One page of events, newest first, and whether there are more on either side."""

    events: list[EventRow]
    older: bool
    newer: bool


def find_events(
    db: Database,
    query: EventQuery,
    before_seq: int | None = None,
    after_seq: int | None = None,
    limit: int = 50,
) -> EventPage:
    """A page of matching events, newest first, keyset-paginated by ``seq``.

    ``before_seq``: the page of older events (seq < before_seq); ``after_seq``: the page of newer
    ones (seq > after_seq); neither: the newest page.
    """
    e = t.AuditEvent
    stmt = _matching(query)
    going_newer = after_seq is not None and before_seq is None
    if going_newer:
        assert after_seq is not None
        stmt = stmt.where(e.seq > after_seq).order_by(e.seq.asc())
    else:
        if before_seq is not None:
            stmt = stmt.where(e.seq < before_seq)
        stmt = stmt.order_by(e.seq.desc())
    with db.read() as conn:
        rows = [_event(r) for r in conn.execute(stmt.limit(limit + 1)).all()]
    more = len(rows) > limit
    rows = rows[:limit]
    if going_newer:
        rows.reverse()
        return EventPage(rows, older=True, newer=more)  # the page we came from is older
    return EventPage(rows, older=more, newer=before_seq is not None)


def events_after(db: Database, query: EventQuery, after_seq: int, limit: int) -> list[EventRow]:
    """Up to ``limit`` matching events with ``seq > after_seq``, oldest first (for consumers
    that follow the log, such as ``GET /api/v1/audit/events``)."""
    e = t.AuditEvent
    stmt = _matching(query).where(e.seq > after_seq).order_by(e.seq.asc()).limit(limit)
    with db.read() as conn:
        return [_event(r) for r in conn.execute(stmt).all()]


def _matching(query: EventQuery) -> Any:
    """``SELECT`` of the audit events that match ``query`` (unordered)."""
    e = t.AuditEvent
    stmt = select(e.__table__)
    if query.since is not None:
        stmt = stmt.where(e.time >= query.since)
    if query.until is not None:
        stmt = stmt.where(e.time < query.until)
    if query.actor is not None:
        stmt = stmt.where(e.actor == query.actor)
    if query.action is not None:
        if query.action.endswith("*"):
            prefix = _like_escape(query.action[:-1])
            stmt = stmt.where(e.action.like(f"{prefix}%", escape="\\"))
        else:
            stmt = stmt.where(e.action == query.action)
    if query.subject is not None:
        stmt = stmt.where(e.subject.like(f"%{_like_escape(query.subject)}%", escape="\\"))
    return stmt


def distinct_actions(db: Database) -> list[str]:
    """Every action that occurs in the chain (for the browser's filter)."""
    with db.read() as conn:
        rows = conn.execute(select(t.AuditEvent.action).distinct().order_by(t.AuditEvent.action))
        return [str(r[0]) for r in rows]


def event_at(db: Database, seq: int) -> EventRow | None:
    """The event ``seq``, or None."""
    with db.read() as conn:
        row = conn.execute(select(t.AuditEvent.__table__).where(t.AuditEvent.seq == seq)).first()
    return None if row is None else _event(row)


#: Details keys whose values name another subject of the same story (an approval request).
_LINK_KEYS = ("request_id",)
#: Subject prefixes whose events belong to the story of a certificate they mention.
_LINK_SUBJECT_PREFIXES = ("acme-order:",)


def certificate_trail(db: Database, serial: str, limit: int = 1000) -> list[EventRow]:
    """Every event about certificate ``serial``, in chain order.

    That is each event whose subject is the serial or whose details carry it as a JSON string
    (request, issuance, revocation, ACME finalisation, denied revocations), plus the events of
    the subjects those events link to: the approval request (``request_id``: pending, approved,
    rejected) and the ACME order. Both queries scan ``audit_events`` (``subject`` and
    ``details`` have no index), so this is for one certificate's page, not for bulk use.
    """
    e = t.AuditEvent
    needle = f'%"{_like_escape(serial)}"%'
    direct = select(e.__table__).where(
        or_(e.subject == serial, e.details.like(needle, escape="\\"))
    )
    with db.read() as conn:
        found = {r.seq: _event(r) for r in conn.execute(direct.order_by(e.seq).limit(limit))}
        linked = _linked_subjects(found.values()) - {serial}
        if linked:
            more = select(e.__table__).where(e.subject.in_(sorted(linked)))
            for r in conn.execute(more.order_by(e.seq).limit(limit)):
                found.setdefault(int(r.seq), _event(r))
    return [found[seq] for seq in sorted(found)][:limit]


def _linked_subjects(events: Sequence[EventRow] | Any) -> set[str]:
    subjects: set[str] = set()
    for event in events:
        if event.subject.startswith(_LINK_SUBJECT_PREFIXES):
            subjects.add(event.subject)
        try:
            details = json.loads(event.details)
        except ValueError:
            continue
        if isinstance(details, dict):
            for key in _LINK_KEYS:
                value = details.get(key)
                if isinstance(value, str) and value:
                    subjects.add(value)
    return subjects


def _event(row: Any) -> EventRow:
    return EventRow(
        seq=int(row.seq),
        time=str(row.time),
        actor=str(row.actor),
        action=str(row.action),
        subject=str(row.subject),
        details=str(row.details),
        prev_hash=str(row.prev_hash),
        hash=str(row.hash),
    )


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
