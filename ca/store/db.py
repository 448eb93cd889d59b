"""The database: engine set-up (SQLite WAL + synchronous=FULL, or PostgreSQL), write transactions
that serialise audit appends, and the queries the core needs.

Every write transaction takes the writer lock first (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a
transaction-scoped advisory lock), so the audit chain has exactly one writer at a time and can
neither fork nor gap. The state change and its audit event commit together or not at all.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError

from ca import audit
from ca.errors import NotFound, StoreError
from ca.store import tables as t

_AUDIT_LOCK_KEY = 0x6873_6D63_6100  # "hsmca" — the PostgreSQL advisory lock of the writer


def make_engine(url: str, echo: bool = False) -> Engine:
    """An engine for ``url``; SQLite gets WAL, synchronous=FULL, foreign keys and a busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy, not pysqlite, decide when transactions begin (see "begin" below).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            # Writers: IMMEDIATE takes the write lock at BEGIN, so no two writers ever read the same
            # chain head. Readers: a deferred BEGIN, which in WAL mode never waits for a writer.
            if conn.get_execution_options().get("hsmca_write"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=5, max_overflow=5)


@dataclass(frozen=True)
class CertificateRow:
    """A stored certificate as the core sees it."""

    serial: str
    issuer_id: int
    issuer_name: str
    subject: str
    sans: list[str]
    key_type: str
    not_before: datetime
    not_after: datetime
    profile: str
    requester: str
    status: str
    der: bytes
    fingerprint_sha256: str
    created_at: datetime
    id: int = 0
    owner: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    revoked_at: datetime | None = None
    revocation_reason: int | None = None  # RFC 5280 CRLReason code


@dataclass(frozen=True)
class ClientRow:
    """An API client as stored (its token only as a hash)."""

    name: str
    token_sha256: str
    roles: list[str]
    profiles: list[str]
    names: list[str]
    disabled: bool
    created_at: datetime
    created_by: str


@dataclass(frozen=True)
class RequestRow:
    """An enrollment request kept for approval."""

    id: str
    requester: str
    profile: str
    csr_der: bytes
    validity_days: int | None
    meta: dict[str, Any]
    decision: dict[str, Any]
    state: str
    created_at: datetime
    expires_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    reason: str | None
    serial: str | None


@dataclass(frozen=True)
class CertificateFilter:
    """Inventory filters; ``None`` means "any"."""

    status: str | None = None
    profile: str | None = None
    issuer: str | None = None
    name: str | None = None  # substring of any SAN or the subject
    name_exact: str | None = None  # one SAN exactly (dns/ip/uri/email value)
    owner: str | None = None
    requester: str | None = None
    expiring_before: datetime | None = None  # not_after < this (and not yet expired: > now)
    now: datetime | None = None


@dataclass(frozen=True)
class CaRow:
    """A CA of the hierarchy as stored."""

    id: int
    name: str
    parent_id: int | None
    subject: str
    serial: str
    key_token: str
    key_label: str
    key_id: str
    key_type: str
    certificate_der: bytes
    fingerprint_sha256: str
    not_before: datetime
    not_after: datetime
    status: str


# Statements built once: building them per call costs more than running them on SQLite.
_SERIALS_TAKEN = select(t.IssuanceIntent.serial).where(
    t.IssuanceIntent.serial.in_(bindparam("serials", expanding=True))
)


@dataclass(frozen=True)
class _AuditSql:
    head: str
    insert: str


@functools.cache
def _audit_sql(paramstyle: str) -> _AuditSql:
    """The two statements of an append, in the driver's parameter style (sqlite3: qmark,
    psycopg: pyformat)."""
    marker = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(paramstyle)
    if marker is None:
        raise StoreError(f"unsupported database driver parameter style {paramstyle!r}")
    columns = "seq, time, actor, action, subject, details, prev_hash, hash"
    return _AuditSql(
        head="SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
        insert=f"INSERT INTO audit_events ({columns}) VALUES ({', '.join([marker] * 8)})",
    )


# The columns of a ca.audit.AuditRow, in its order.
_AUDIT_COLUMNS = (
    t.AuditEvent.seq,
    t.AuditEvent.time,
    t.AuditEvent.actor,
    t.AuditEvent.action,
    t.AuditEvent.subject,
    t.AuditEvent.details,
    t.AuditEvent.prev_hash,
    t.AuditEvent.hash,
)
_AUDIT_ROWS = (
    select(*_AUDIT_COLUMNS)
    .where(t.AuditEvent.seq > bindparam("after"))
    .order_by(t.AuditEvent.seq)
    .limit(bindparam("batch"))
)
_COMPLETE_INTENTS = (
    update(t.IssuanceIntent)
    .where(
        t.IssuanceIntent.serial.in_(bindparam("serials", expanding=True)),
        t.IssuanceIntent.state == "pending",
    )
    .values(state="issued", resolved_at=bindparam("now"))
)


def _sqlite_path(url: str) -> str | None:
    path = url.split("sqlite:///", 1)[-1] if "sqlite:///" in url else ""
    return path if path and path != ":memory:" else None


class WriterQueue:
    """Makes SQLite writers of all processes wait their turn in the kernel, not in busy loops.

    SQLite's busy handler polls with sleeps of 1 to 100 ms, which turns every collision between
    two worker processes into a latency spike. An exclusive ``flock`` on a file beside the
    database (plus a thread lock, since flock is per open file) queues writers instead and wakes
    the next one as soon as the lock is released. PostgreSQL needs none of this.
    """

    def __init__(self, db_path: str | None) -> None:
        self.lock_path = f"{db_path}-writer.lock" if db_path else None
        self._pid = 0
        self._fd = -1
        self._thread_lock = threading.Lock()

    _opening = threading.Lock()

    def _lock_for_this_process(self) -> tuple[threading.Lock, int]:
        if self._pid == os.getpid():
            return self._thread_lock, self._fd
        with self._opening:
            if self._pid != os.getpid():
                # After a fork the inherited descriptor shares the parent's lock: open a new one,
                # and a new thread lock (another thread may have held the old one at the fork).
                self._thread_lock = threading.Lock()
                self._fd = os.open(self.lock_path or os.devnull, os.O_RDWR | os.O_CREAT, 0o600)
                self._pid = os.getpid()
        return self._thread_lock, self._fd

    @contextmanager
    def hold(self) -> Iterator[None]:
        if self.lock_path is None:
            yield
            return
        try:
            thread_lock, fd = self._lock_for_this_process()
        except OSError:
            yield  # no lock file possible (read-only directory): SQLite's own locking still holds
            return
        with thread_lock:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)


def _sqlite_pragma(conn: Connection, pragma: str) -> None:
    """Run ``pragma`` on the driver's connection itself: through SQLAlchemy it would begin a
    transaction first, and SQLite refuses to change the safety level inside one."""
    driver = conn.connection.driver_connection
    assert driver is not None
    driver.execute(pragma)


def _restore_full_sync(conn: Connection) -> None:
    """Put a pooled SQLite connection back to ``synchronous=FULL``, or drop it from the pool."""
    try:
        _sqlite_pragma(conn, "PRAGMA synchronous=FULL")
    except Exception:
        conn.invalidate()  # never hand out a connection that may commit unflushed


class Database:
    """The store of one installation. Safe to share between threads; create one per process."""

    def __init__(self, url: str, echo: bool = False) -> None:
        self.url = url
        self.engine = make_engine(url, echo)
        self.is_sqlite = url.startswith("sqlite")
        self._writers = WriterQueue(_sqlite_path(url) if self.is_sqlite else None)

    def dispose(self) -> None:
        self.engine.dispose()

    # Schema ------------------------------------------------------------------------------------

    def upgrade(self) -> str:
        """Apply Alembic migrations up to head; return the revision now current."""
        from ca.store.migrate import upgrade

        return upgrade(self.engine)

    def create_sqlite_parent(self) -> None:
        if self.is_sqlite:
            path = self.url.split("sqlite:///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)

    # Transactions ------------------------------------------------------------------------------

    @contextmanager
    def write(self, flush: bool = True) -> Iterator[Connection]:
        """A write transaction holding the writer lock; commits on success, rolls back on error.

        ``flush=False`` commits without waiting for the disk (SQLite ``synchronous=NORMAL``,
        PostgreSQL ``synchronous_commit=off``): a crash of the process loses nothing, a power
        loss may lose this commit until the next flushed one, which makes it durable too, since
        both stores flush their write-ahead log in order. Only for records nothing durable
        depends on until a later flushed commit (used ACME nonces).

        Database failures (full disk, read-only file, lost server) become :class:`StoreError`.
        """
        try:
            with self._writers.hold(), self.engine.connect() as conn:
                conn.execution_options(hsmca_write=True)
                if not flush and self.is_sqlite:
                    _sqlite_pragma(conn, "PRAGMA synchronous=NORMAL")
                try:
                    with conn.begin():
                        if not self.is_sqlite:
                            conn.execute(
                                text("SELECT pg_advisory_xact_lock(:k)"), {"k": _AUDIT_LOCK_KEY}
                            )
                            if not flush:
                                conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                        yield conn
                finally:
                    if not flush and self.is_sqlite:
                        _restore_full_sync(conn)
        except IntegrityError as exc:
            raise StoreError(f"database refused the change (constraint: {_short(exc)})") from exc
        except OperationalError as exc:
            raise StoreError(f"database unavailable or read-only: {_short(exc)}") from exc
        except DBAPIError as exc:
            raise StoreError(f"database refused the change: {_short(exc)}") from exc

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only connection (no writer lock)."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except OperationalError as exc:
            raise StoreError(f"database unavailable: {_short(exc)}") from exc

    # Audit -------------------------------------------------------------------------------------

    def append_audit(
        self,
        conn: Connection,
        now: datetime,
        actor: str,
        action: str,
        subject: str,
        details: Mapping[str, Any],
    ) -> audit.AuditEntry:
        """Append one event to the chain inside ``conn``'s transaction (which holds the writer lock)."""
        return self.append_audit_many(conn, now, [(actor, action, subject, details)])[-1]

    def append_audit_many(
        self,
        conn: Connection,
        now: datetime,
        events: Sequence[tuple[str, str, str, Mapping[str, Any]]],
    ) -> list[audit.AuditEntry]:
        """Append ``(actor, action, subject, details)`` events in order, in ``conn``'s transaction.

        Every state change runs this, so it talks to the driver's cursor with SQL written once
        per parameter style: SQLAlchemy's statement handling cost more than the rest of an
        append together (and than a tenth of an issuance). Driver errors are raised as
        SQLAlchemy's, which :meth:`write` turns into :class:`StoreError` as for any statement.
        """
        sql = _audit_sql(conn.dialect.paramstyle)
        time = audit.rfc3339(now)
        cursor = conn.connection.cursor()
        dbapi_error = conn.dialect.loaded_dbapi.Error
        try:
            cursor.execute(sql.head)
            head = cursor.fetchone()
            prev = (int(head[0]), bytes.fromhex(head[1])) if head else None
            entries = []
            for actor, action, subject, details in events:
                # Columns are bounded; what a client sent may not be (details keep the value).
                entry = audit.next_entry(prev, time, actor[:128], action, subject[:256], details)
                entries.append(entry)
                prev = (entry.seq, entry.hash)
            rows = [
                (
                    e.seq,
                    e.time,
                    e.actor,
                    e.action,
                    e.subject,
                    audit.details_text(e.details),
                    e.prev_hash.hex(),
                    e.hash.hex(),
                )
                for e in entries
            ]
            if len(rows) == 1:
                cursor.execute(sql.insert, rows[0])
            else:
                cursor.executemany(sql.insert, rows)
        except dbapi_error as exc:
            raise DBAPIError.instance(sql.insert, None, exc, dbapi_error) from exc
        finally:
            cursor.close()
        return entries

    def audit_entries(self, after_seq: int = 0, batch: int = 5000) -> Iterator[audit.AuditEntry]:
        """Every audit entry after ``after_seq`` in order, read in batches."""
        return map(audit.entry_from_row, self.audit_rows(after_seq, batch))

    def audit_rows(self, after_seq: int = 0, batch: int = 20000) -> Iterator[audit.AuditRow]:
        """Every stored event after ``after_seq`` as a raw :data:`ca.audit.AuditRow`, in order.

        Each batch is its own short read, so a long walk never holds a snapshot open."""
        last = after_seq
        while True:
            with self.read() as conn:
                rows = conn.execute(_AUDIT_ROWS, {"after": last, "batch": batch}).all()
            if not rows:
                return
            # Rows unpack like tuples: handing them on as they are saves a copy per event.
            yield from cast("list[audit.AuditRow]", rows)
            last = rows[-1][0]

    def verify_audit_chain(self, start: tuple[int, bytes] | None = None) -> int:
        """Verify the stored chain (after ``start``, a trusted ``(seq, hash)``) the fast way;
        returns the number of events checked or raises :class:`ca.errors.AuditChainBroken`."""
        return audit.verify_rows(self.audit_rows(start[0] if start else 0), start)

    def audit_events(self, action: str | None = None) -> list[audit.AuditEntry]:
        """Audit entries, optionally only one action (for tests and `hsmca audit`)."""
        query = select(*_AUDIT_COLUMNS).order_by(t.AuditEvent.seq)
        if action:
            query = query.where(t.AuditEvent.action == action)
        with self.read() as conn:
            rows = cast("list[audit.AuditRow]", conn.execute(query).all())
        return [audit.entry_from_row(r) for r in rows]

    # CAs ---------------------------------------------------------------------------------------

    def add_ca(self, conn: Connection, row: Mapping[str, Any]) -> int:
        result = conn.execute(
            insert(t.CertificateAuthority).returning(t.CertificateAuthority.id), dict(row)
        )
        return int(result.scalar_one())

    def get_ca(self, name: str) -> CaRow:
        with self.read() as conn:
            row = conn.execute(
                select(t.CertificateAuthority.__table__).where(t.CertificateAuthority.name == name)
            ).first()
        if row is None:
            raise NotFound(f"no CA named {name!r}")
        return _ca_from_row(row)

    def list_cas(self) -> list[CaRow]:
        with self.read() as conn:
            rows = conn.execute(
                select(t.CertificateAuthority.__table__).order_by(t.CertificateAuthority.id)
            ).all()
        return [_ca_from_row(r) for r in rows]

    # Intents and certificates ------------------------------------------------------------------

    def serial_taken(self, conn: Connection, serial: str) -> bool:
        return bool(self.serials_taken(conn, [serial]))

    def serials_taken(self, conn: Connection, serials: Sequence[str]) -> set[str]:
        """Which of ``serials`` are already reserved (one query for a whole batch)."""
        rows = conn.execute(_SERIALS_TAKEN, {"serials": list(serials)}).all()
        return {r[0] for r in rows}

    def add_intents(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        conn.execute(insert(t.IssuanceIntent), [dict(r) for r in rows])

    def complete_intents(self, conn: Connection, serials: Sequence[str], now: datetime) -> int:
        """Mark pending intents issued; returns how many were still pending."""
        result = conn.execute(_COMPLETE_INTENTS, {"serials": list(serials), "now": now})
        return int(result.rowcount)

    def add_certificates(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        conn.execute(insert(t.Certificate), [dict(r) for r in rows])

    def pending_intents(self, older_than: datetime | None = None) -> list[dict[str, Any]]:
        query = select(t.IssuanceIntent.__table__).where(t.IssuanceIntent.state == "pending")
        if older_than is not None:
            query = query.where(t.IssuanceIntent.created_at < older_than)
        with self.read() as conn:
            return [
                dict(r._mapping) for r in conn.execute(query.order_by(t.IssuanceIntent.id)).all()
            ]

    def abandon_intent(self, conn: Connection, serial: str, now: datetime) -> bool:
        """Mark a pending intent abandoned (its serial stays reserved); False if no longer pending."""
        result = conn.execute(
            update(t.IssuanceIntent)
            .where(t.IssuanceIntent.serial == serial, t.IssuanceIntent.state == "pending")
            .values(state="abandoned", resolved_at=now)
        )
        return int(result.rowcount) == 1

    def certificate_exists(self, conn: Connection, serial: str) -> bool:
        return (
            conn.execute(select(t.Certificate.id).where(t.Certificate.serial == serial)).first()
            is not None
        )

    def get_certificate(self, serial: str) -> CertificateRow:
        query = (
            select(t.Certificate.__table__, t.CertificateAuthority.name.label("issuer_name"))
            .join(t.CertificateAuthority, t.Certificate.issuer_id == t.CertificateAuthority.id)
            .where(t.Certificate.serial == serial)
        )
        with self.read() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"no certificate with serial {serial}")
        return _cert_from_row(row)

    def list_certificates(self, limit: int = 1000) -> list[CertificateRow]:
        query = (
            select(t.Certificate.__table__, t.CertificateAuthority.name.label("issuer_name"))
            .join(t.CertificateAuthority, t.Certificate.issuer_id == t.CertificateAuthority.id)
            .order_by(t.Certificate.id)
            .limit(limit)
        )
        with self.read() as conn:
            return [_cert_from_row(r) for r in conn.execute(query).all()]

    def find_certificates(
        self, flt: CertificateFilter, after_id: int = 0, limit: int = 100
    ) -> list[CertificateRow]:
        """Certificates matching ``flt`` with id > ``after_id``, oldest first (keyset pagination)."""
        c = t.Certificate
        query = (
            select(c.__table__, t.CertificateAuthority.name.label("issuer_name"))
            .join(t.CertificateAuthority, c.issuer_id == t.CertificateAuthority.id)
            .where(c.id > after_id)
        )
        if flt.status is not None:
            query = query.where(c.status == flt.status)
        if flt.profile is not None:
            query = query.where(c.profile == flt.profile)
        if flt.issuer is not None:
            query = query.where(t.CertificateAuthority.name == flt.issuer)
        if flt.owner is not None:
            query = query.where(c.owner == flt.owner)
        if flt.requester is not None:
            query = query.where(c.requester == flt.requester)
        if flt.name is not None:
            pattern = f"%{_like_escape(flt.name.lower())}%"
            query = query.where(
                or_(
                    func.lower(c.sans).like(pattern, escape="\\"),
                    func.lower(c.subject).like(pattern, escape="\\"),
                )
            )
        if flt.name_exact is not None:
            # sans is a JSON list of "kind:value" strings; match one element exactly.
            needle = json.dumps(flt.name_exact)[1:-1]
            query = query.where(c.sans.like(f'%:{_like_escape(needle)}"%', escape="\\"))
        if flt.expiring_before is not None:
            query = query.where(c.not_after < flt.expiring_before)
            if flt.now is not None:
                query = query.where(c.not_after >= flt.now)
        query = query.order_by(c.id).limit(limit)
        with self.read() as conn:
            return [_cert_from_row(r) for r in conn.execute(query).all()]

    # API clients -------------------------------------------------------------------------------

    def add_client(self, conn: Connection, row: Mapping[str, Any]) -> None:
        conn.execute(insert(t.ApiClient), [dict(row)])

    def client_by_token_hash(self, token_sha256: str) -> ClientRow | None:
        query = select(t.ApiClient).where(t.ApiClient.token_sha256 == token_sha256)
        with self.read() as conn:
            row = conn.execute(query).first()
        return None if row is None else _client_from_row(row)

    def get_client(self, name: str) -> ClientRow | None:
        query = select(t.ApiClient).where(t.ApiClient.name == name)
        with self.read() as conn:
            row = conn.execute(query).first()
        return None if row is None else _client_from_row(row)

    def list_clients(self) -> list[ClientRow]:
        with self.read() as conn:
            rows = conn.execute(select(t.ApiClient).order_by(t.ApiClient.name)).all()
        return [_client_from_row(r) for r in rows]

    def disable_client(self, conn: Connection, name: str, now: datetime) -> bool:
        result = conn.execute(
            update(t.ApiClient)
            .where(t.ApiClient.name == name, t.ApiClient.disabled.is_(False))
            .values(disabled=True, disabled_at=now)
        )
        return bool(result.rowcount)

    def set_client_token(
        self, conn: Connection, name: str, old_sha256: str, new_sha256: str
    ) -> bool:
        """Replace an enabled client's token hash, only if it is still ``old_sha256``."""
        result = conn.execute(
            update(t.ApiClient)
            .where(
                t.ApiClient.name == name,
                t.ApiClient.token_sha256 == old_sha256,
                t.ApiClient.disabled.is_(False),
            )
            .values(token_sha256=new_sha256)
        )
        return bool(result.rowcount)

    # Enrollment requests -----------------------------------------------------------------------

    def add_request(self, conn: Connection, row: Mapping[str, Any]) -> None:
        conn.execute(insert(t.EnrollmentRequest), [dict(row)])

    def get_request(self, request_id: str, conn: Connection | None = None) -> RequestRow:
        query = select(t.EnrollmentRequest).where(t.EnrollmentRequest.id == request_id)
        if conn is not None:
            row = conn.execute(query).first()
        else:
            with self.read() as own:
                row = own.execute(query).first()
        if row is None:
            raise NotFound(f"no enrollment request {request_id}")
        return _request_from_row(row)

    def move_request(
        self,
        conn: Connection,
        request_id: str,
        from_states: Sequence[str],
        to_state: str,
        **values: Any,
    ) -> bool:
        """Change a request's state only if it is in one of ``from_states`` (no lost updates)."""
        result = conn.execute(
            update(t.EnrollmentRequest)
            .where(
                t.EnrollmentRequest.id == request_id,
                t.EnrollmentRequest.state.in_(list(from_states)),
            )
            .values(state=to_state, **values)
        )
        return bool(result.rowcount)

    def requests_in_state(
        self,
        state: str | None,
        expiring_before: datetime | None = None,
        requester: str | None = None,
        limit: int | None = None,
    ) -> list[RequestRow]:
        """Requests (oldest first), optionally in one state, of one requester, or expiring."""
        r = t.EnrollmentRequest
        query = select(r)
        if state is not None:
            query = query.where(r.state == state)
        if expiring_before is not None:
            query = query.where(r.expires_at < expiring_before)
        if requester is not None:
            query = query.where(r.requester == requester)
        query = query.order_by(r.created_at, r.id)
        if limit is not None:
            query = query.limit(limit)
        with self.read() as conn:
            rows = conn.execute(query).all()
        return [_request_from_row(row) for row in rows]

    def count(self, table: type[t.Base]) -> int:
        with self.read() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _ca_from_row(row: Any) -> CaRow:
    m = row._mapping
    return CaRow(**{f: m[f] for f in CaRow.__dataclass_fields__})


def _cert_from_row(row: Any) -> CertificateRow:
    cert = row
    m = row._mapping
    return CertificateRow(
        id=m.get("id", 0),
        owner=m.get("owner"),
        meta=json.loads(m["meta"]) if m.get("meta") else {},
        revoked_at=m.get("revoked_at"),
        revocation_reason=m.get("revocation_reason"),
        serial=cert.serial,
        issuer_id=cert.issuer_id,
        issuer_name=row.issuer_name,
        subject=cert.subject,
        sans=json.loads(cert.sans),
        key_type=cert.key_type,
        not_before=cert.not_before,
        not_after=cert.not_after,
        profile=cert.profile,
        requester=cert.requester,
        status=cert.status,
        der=cert.der,
        fingerprint_sha256=cert.fingerprint_sha256,
        created_at=cert.created_at,
    )


def _client_from_row(row: Any) -> ClientRow:
    m = row._mapping
    return ClientRow(
        name=m["name"],
        token_sha256=m["token_sha256"],
        roles=json.loads(m["roles"]),
        profiles=json.loads(m["profiles"]),
        names=json.loads(m["names"]),
        disabled=bool(m["disabled"]),
        created_at=m["created_at"],
        created_by=m["created_by"],
    )


def _request_from_row(row: Any) -> RequestRow:
    m = row._mapping
    values = {f: m[f] for f in RequestRow.__dataclass_fields__}
    values["meta"] = json.loads(m["meta"])
    values["decision"] = json.loads(m["decision"])
    return RequestRow(**values)


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _short(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return (str(orig) if orig is not None else str(exc)).splitlines()[0][:200]
