"""Reads for monitoring: what ``/metrics`` and ``/readyz`` report about the stored state.

Each function is one query (two for the expiry figures), chosen to use an index or a small table,
because scrapes and readiness probes come every few seconds from every worker. Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, case, func, select

from ca.store import tables as t
from ca.store.crls import current_crls
from ca.store.db import Database

#: The windows of ``hsmca_certificates_expiring`` (days).
EXPIRY_WINDOWS = (7, 14, 30)


@dataclass(frozen=True)
class CrlState:
    """The current CRL of one (CA, shard)."""

    ca: str
    shard: int
    this_update: datetime
    next_update: datetime
    size_bytes: int


@dataclass(frozen=True)
class ResponderState:
    """The current OCSP responder certificate of one CA."""

    ca: str
    not_after: datetime


@dataclass(frozen=True)
class ExpiryState:
    """Unrevoked, unexpired certificates of one profile: counts within each window, soonest."""

    profile: str
    within: Mapping[int, int]
    soonest: datetime | None


@dataclass(frozen=True)
class AuditState:
    """The audit chain head and its newest checkpoint."""

    head_seq: int
    checkpoint_seq: int
    #: Time of the newest checkpoint, else of the first event (when a checkpoint became owed).
    since: datetime | None
    interval_seconds: int

    def seconds_since_checkpoint(self, now: datetime) -> float:
        return 0.0 if self.since is None else max(0.0, (now - self.since).total_seconds())


@dataclass(frozen=True)
class CaState:
    """An active, unexpired CA (which must have a current CRL and an OCSP responder)."""

    id: int
    name: str
    not_after: datetime


@dataclass(frozen=True)
class Snapshot:
    """Everything :class:`ca.metrics.DatabaseCollector` reports, read at ``taken_at``."""

    taken_at: datetime
    cas: tuple[CaState, ...] = ()
    crls: tuple[CrlState, ...] = ()
    responders: tuple[ResponderState, ...] = ()
    stale_ocsp_responses: int = 0
    expiry: tuple[ExpiryState, ...] = ()
    acme_orders: Mapping[str, int] = field(default_factory=dict)
    audit: AuditState = AuditState(0, 0, None, 0)


def active_cas(db: Database, now: datetime) -> tuple[CaState, ...]:
    """The CAs that publish CRLs and answer OCSP: active and not expired."""
    ca = t.CertificateAuthority
    query = select(ca.id, ca.name, ca.not_after).where(ca.status == "active").order_by(ca.id)
    with db.read() as conn:
        rows = conn.execute(query).all()
    return tuple(CaState(int(r.id), str(r.name), r.not_after) for r in rows if r.not_after > now)


def crl_states(db: Database, cas: tuple[CaState, ...]) -> tuple[CrlState, ...]:
    """The current CRL of every shard of ``cas``, with its size."""
    names = {c.id: c.name for c in cas}
    current = {k: m for k, m in current_crls(db).items() if k[0] in names}
    if not current:
        return ()
    r = t.CrlRecord
    ids = [m.id for m in current.values()]
    with db.read() as conn:
        query = select(r.id, func.length(r.der)).where(r.id.in_(ids))
        sizes = {int(crl_id): int(size or 0) for crl_id, size in conn.execute(query)}
    return tuple(
        CrlState(names[ca_id], shard, m.this_update, m.next_update, int(sizes.get(m.id, 0)))
        for (ca_id, shard), m in sorted(current.items())
    )


def responder_states(db: Database, cas: tuple[CaState, ...]) -> tuple[ResponderState, ...]:
    """The newest active responder certificate of each of ``cas``."""
    names = {c.id: c.name for c in cas}
    o = t.OcspResponder
    query = (
        select(o.issuer_id, func.max(o.not_after)).where(o.status == "active").group_by(o.issuer_id)
    )
    with db.read() as conn:
        rows = conn.execute(query).all()
    found = {int(issuer): _utc(not_after) for issuer, not_after in rows}
    return tuple(ResponderState(names[ca_id], found[ca_id]) for ca_id in names if ca_id in found)


def stale_ocsp_responses(db: Database, now: datetime, max_age: timedelta | None = None) -> int:
    """Stored responses of unexpired certificates that are past nextUpdate (or, with
    ``max_age``, whose thisUpdate is older than that).

    Without ``max_age`` the query walks the ``next_update`` index over the stale rows only.
    """
    r, c = t.OcspResponse, t.Certificate
    stale = r.next_update <= now
    if max_age is not None:
        stale = stale | (r.this_update < now - max_age)
    query = (
        select(func.count())
        .select_from(r)
        .join(c, and_(c.serial == r.serial, c.issuer_id == r.issuer_id))
        .where(stale, c.not_after > now)
    )
    with db.read() as conn:
        return int(conn.execute(query).scalar_one())


def expiry_states(
    db: Database, now: datetime, profiles: tuple[str, ...]
) -> tuple[ExpiryState, ...]:
    """Per profile (configured, or with certificates expiring within the largest window):
    unrevoked certificates expiring within each of :data:`EXPIRY_WINDOWS` days, and the soonest
    notAfter of all unrevoked, unexpired ones.

    The counts come from one range scan of the ``not_after`` index over the largest window; a
    profile with nothing in it gets its soonest notAfter from an index walk that stops at the
    first row, so no query reads every certificate.
    """
    c = t.Certificate
    horizon = now + timedelta(days=max(EXPIRY_WINDOWS))
    live = and_(c.status == "issued", c.not_after > now)
    counts = [
        func.sum(case((c.not_after <= now + timedelta(days=d), 1), else_=0)) for d in EXPIRY_WINDOWS
    ]
    window = (
        select(c.profile, func.min(c.not_after), *counts)
        .where(live, c.not_after <= horizon)
        .group_by(c.profile)
    )
    with db.read() as conn:
        within: dict[str, list[int]] = {}
        first: dict[str, datetime | None] = {}
        for row in conn.execute(window):
            first[str(row[0])] = _utc(row[1])
            within[str(row[0])] = [int(v or 0) for v in row[2:]]
        for name in profiles:
            if name not in first:
                query = (
                    select(c.not_after)
                    .where(live, c.profile == name)
                    .order_by(c.not_after)
                    .limit(1)
                )
                found = conn.execute(query).scalar()
                first[name] = None if found is None else _utc(found)
    names = list(profiles) + sorted(set(first) - set(profiles))
    zero = [0] * len(EXPIRY_WINDOWS)
    return tuple(
        ExpiryState(
            name,
            dict(zip(EXPIRY_WINDOWS, within.get(name, zero), strict=True)),
            first.get(name),
        )
        for name in names
    )


def acme_order_states(db: Database) -> dict[str, int]:
    """ACME orders counted by status."""
    o = t.AcmeOrder
    with db.read() as conn:
        rows = conn.execute(select(o.status, func.count()).group_by(o.status)).all()
    return {str(status): int(n) for status, n in rows}


def audit_state(db: Database, interval_seconds: int) -> AuditState:
    """The chain head, the newest checkpoint, and when a checkpoint was last made (or owed)."""
    e, k = t.AuditEvent, t.AuditCheckpoint
    with db.read() as conn:
        head = conn.execute(select(func.max(e.seq))).scalar()
        last = conn.execute(select(k.seq, k.time).order_by(k.seq.desc()).limit(1)).first()
        if last is None:
            first = conn.execute(select(e.time).order_by(e.seq).limit(1)).scalar()
            since = _parse(first) if first else None
            checkpoint_seq = 0
        else:
            since = _parse(str(last.time))
            checkpoint_seq = int(last.seq)
    return AuditState(int(head or 0), checkpoint_seq, since, interval_seconds)


def snapshot(
    db: Database, now: datetime, profiles: tuple[str, ...], checkpoint_every_seconds: int
) -> Snapshot:
    """Every figure of the database-derived metrics, read now."""
    cas = active_cas(db, now)
    return Snapshot(
        taken_at=now,
        cas=cas,
        crls=crl_states(db, cas),
        responders=responder_states(db, cas),
        stale_ocsp_responses=stale_ocsp_responses(db, now),
        expiry=expiry_states(db, now, profiles),
        acme_orders=acme_order_states(db),
        audit=audit_state(db, checkpoint_every_seconds),
    )


def _parse(text: str) -> datetime | None:
    try:
        return _utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        return None


def _utc(value: datetime) -> datetime:
    # Aggregates (MIN/MAX) bypass the column type on SQLite and may come back naive or as text.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
