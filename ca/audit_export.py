"""Audit export bundles: the chain's events, its signed checkpoints and the audit certificate chain
in one zip file that verifies offline (``ca.audit_bundle_verify``, ``docs/audit-verification.md``).

The bundle is a zip archive (deflate) written as a stream, so exports of millions of events need
neither memory nor temporary files; its members, in this order:

``events.jsonl``       one event per line: ``{seq, time, actor, action, subject, details, prev_hash,
                       hash}`` (canonical JSON, hashes in hex), consecutive ``seq`` values
``checkpoints.jsonl``  the checkpoints from the anchor (``first_seq - 1``) to the range's end,
                       then, when the export has an upper bound (``--to``), the first one after
                       it if any (``Checkpoint.to_json`` as canonical JSON, one per line)
``chain.pem``          every audit certificate, then their CA certificates up to and including
                       the root
``manifest.json``      format, creation time, range, counts, anchor and head hashes, and the
                       SHA-256 of every other member (written last: it describes them)

A range export starts mid-chain: its first event's ``prev_hash`` is the anchor the verification
continues from.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Connection, func, select

from ca.audit import GENESIS_HASH, canonical_json, rfc3339
from ca.audit_key import audit_certificate_rows
from ca.authority import Authority
from ca.checkpoint import Checkpoint
from ca.checkpoints import checkpoint_from_row
from ca.errors import BadRequest
from ca.store import tables as t

FORMAT = "hsmca-audit-export/1"
EVENTS_FILE = "events.jsonl"
CHECKPOINTS_FILE = "checkpoints.jsonl"
CHAIN_FILE = "chain.pem"
MANIFEST_FILE = "manifest.json"
MEMBERS = (EVENTS_FILE, CHECKPOINTS_FILE, CHAIN_FILE, MANIFEST_FILE)
MEDIA_TYPE = "application/zip"
EXPORT_ACTION = "audit.exported"

#: A range bound: a ``seq`` (int) or an aware datetime.
Bound = int | datetime
#: Called with (events written, events in the range) as the export proceeds.
Progress = Callable[[int, int], None]

_BATCH = 5000
# ca.audit.canonical_json's encoding, built once: exports encode a line per event.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
_EVENT_COLUMNS = t.AuditEvent.__table__.c


def parse_bound(text: str, name: str = "bound") -> Bound:
    """A ``--from``/``--to`` value: a positive ``seq`` or an RFC 3339 time with a UTC offset.

    Raises :class:`BadRequest` naming ``name`` for anything else.
    """
    value = text.strip()
    if value.isdigit():
        seq = int(value)
        if not 1 <= seq < 2**63:
            raise BadRequest(f"{name}: seq must be a positive integer")
        return seq
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(
            f"{name}: {text[:64]!r} is neither a seq nor an RFC 3339 time "
            "(e.g. 2026-01-31T12:00:00Z)"
        ) from None
    if moment.tzinfo is None or "T" not in value.upper():
        raise BadRequest(f"{name}: an RFC 3339 time needs a date, a time and a UTC offset or Z")
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise BadRequest(f"{name}: {text[:64]!r} is out of range in UTC") from None


def bound_text(bound: Bound | None) -> str | None:
    """How a bound is recorded in the manifest and the audit event."""
    if bound is None:
        return None
    return str(bound) if isinstance(bound, int) else rfc3339(bound)


@dataclass(frozen=True)
class ExportRange:
    """The inclusive ``seq`` range of an export, resolved from the requested bounds."""

    first_seq: int
    last_seq: int
    requested_from: str | None = None
    requested_to: str | None = None

    @property
    def events(self) -> int:
        return self.last_seq - self.first_seq + 1

    def filename(self) -> str:
        """A download name that says what the bundle holds."""
        return f"hsmca-audit-{self.first_seq}-{self.last_seq}.zip"

    def to_json(self) -> dict[str, Any]:
        return {
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "requested_from": self.requested_from,
            "requested_to": self.requested_to,
        }


def resolve_range(conn: Connection, since: Bound | None, until: Bound | None) -> ExportRange:
    """The ``seq`` range for the bounds, up to the current head.

    A time ``since`` starts at the first event at or after it, a time ``until`` ends at the last
    event at or before it (stored times are fixed-width RFC 3339 UTC, so text order is time order).
    Raises :class:`BadRequest` when the range holds no event.
    """
    head = conn.execute(select(func.max(_EVENT_COLUMNS.seq))).scalar()
    if head is None:
        raise BadRequest("the audit chain is empty: nothing to export")
    first = _seq_at(conn, since, first=True) if since is not None else 1
    last = _seq_at(conn, until, first=False) if until is not None else int(head)
    last = min(last or 0, int(head))
    wanted = f"from {bound_text(since) or 'the start'} to {bound_text(until) or 'the head'}"
    if first is None or first > last:
        raise BadRequest(f"no audit events {wanted} (the chain has events 1 to {head})")
    return ExportRange(first, last, bound_text(since), bound_text(until))


def _seq_at(conn: Connection, bound: Bound, first: bool) -> int | None:
    if isinstance(bound, int):
        return bound
    moment = rfc3339(bound)
    if first:
        query = select(func.min(_EVENT_COLUMNS.seq)).where(_EVENT_COLUMNS.time >= moment)
    else:
        query = select(func.max(_EVENT_COLUMNS.seq)).where(_EVENT_COLUMNS.time <= moment)
    found = conn.execute(query).scalar()
    return None if found is None else int(found)


def record_export(auth: Authority, actor: str, rng: ExportRange, via: str) -> None:
    """Audit an export before it is written: the range it holds and who asked (``via``: cli, api)."""
    auth.audit(
        actor,
        EXPORT_ACTION,
        f"{rng.first_seq}-{rng.last_seq}",
        {
            "first_seq": rng.first_seq,
            "last_seq": rng.last_seq,
            "events": rng.events,
            "from": rng.requested_from,
            "to": rng.requested_to,
            "requester": actor,
            "via": via,
            "format": FORMAT,
        },
    )


@dataclass(frozen=True)
class FileDigest:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` states about a bundle."""

    created: str
    range: ExportRange
    events: int
    checkpoints: int
    certificates: int
    first_prev_hash: str
    last_hash: str
    files: dict[str, FileDigest] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "created": self.created,
            "range": self.range.to_json(),
            "counts": {
                "events": self.events,
                "checkpoints": self.checkpoints,
                "certificates": self.certificates,
            },
            "first_prev_hash": self.first_prev_hash,
            "last_hash": self.last_hash,
            "files": {
                name: {"sha256": d.sha256, "bytes": d.size} for name, d in self.files.items()
            },
        }


def export_bundle(
    auth: Authority,
    out: IO[bytes],
    since: Bound | None = None,
    until: Bound | None = None,
    progress: Progress | None = None,
    rng: ExportRange | None = None,
) -> Manifest:
    """Write the bundle of the events between ``since`` and ``until`` (inclusive) to ``out``.

    ``rng`` is an already resolved range (the bounds are then ignored). Raises
    :class:`BadRequest` for a range without events.
    """
    if rng is None:
        with auth.db.read() as conn:
            rng = resolve_range(conn, since, until)
    writer = write_bundle(auth, rng, out, progress)
    while True:
        try:
            next(writer)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def bundle_chunks(
    auth: Authority, rng: ExportRange, progress: Progress | None = None
) -> Iterator[bytes]:
    """The bundle of ``rng`` as a stream of byte chunks (for HTTP responses)."""
    sink = _Chunks()
    for _ in write_bundle(auth, rng, sink, progress):
        data = sink.take()
        if data:
            yield data
    data = sink.take()
    if data:
        yield data


def write_bundle(
    auth: Authority, rng: ExportRange, out: IO[bytes] | _Chunks, progress: Progress | None = None
) -> Generator[None, None, Manifest]:
    """Write the bundle to ``out``, yielding after each batch of events; returns the manifest."""
    created = rfc3339(auth.now())
    stamp = _zip_time(created)
    files: dict[str, FileDigest] = {}
    sink = cast(IO[bytes], out)  # zipfile needs only write() and flush(): no seeking
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        # events.jsonl: streamed in batches, one read transaction each (events are append-only).
        first_prev, last_hash, written = GENESIS_HASH.hex(), GENESIS_HASH.hex(), 0
        with _member(bundle, EVENTS_FILE, stamp, files) as member:
            for rows in _event_batches(auth, rng):
                if written == 0 and rows:
                    first_prev = rows[0].prev_hash
                member.write(b"".join(event_line(r) for r in rows))
                written += len(rows)
                last_hash = rows[-1].hash
                if progress:
                    progress(written, rng.events)
                yield
        checkpoints = _checkpoints(auth, rng)
        with _member(bundle, CHECKPOINTS_FILE, stamp, files) as member:
            member.write(b"".join(canonical_json(c.to_json()) + b"\n" for c in checkpoints))
        certificates = chain_certificates(auth)
        with _member(bundle, CHAIN_FILE, stamp, files) as member:
            member.write(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates))
        manifest = Manifest(
            created=created,
            range=rng,
            events=written,
            checkpoints=len(checkpoints),
            certificates=len(certificates),
            first_prev_hash=first_prev,
            last_hash=last_hash,
            files=dict(files),
        )
        body = json.dumps(manifest.to_json(), indent=2, sort_keys=True).encode() + b"\n"
        bundle.writestr(_info(MANIFEST_FILE, stamp), body)
    yield
    return manifest


def event_line(row: Any) -> bytes:
    """One ``events.jsonl`` line of a stored event: canonical JSON of its fields as stored, with
    ``details`` parsed into an object (a stored text that is not JSON stays a string, so
    verification reports the event as edited)."""
    try:
        details: Any = json.loads(row.details)
    except (TypeError, ValueError):
        details = row.details
    line = _CANONICAL(
        {
            "seq": int(row.seq),
            "time": row.time,
            "actor": row.actor,
            "action": row.action,
            "subject": row.subject,
            "details": details,
            "prev_hash": row.prev_hash,
            "hash": row.hash,
        }
    )
    return line.encode("utf-8") + b"\n"


def _event_batches(auth: Authority, rng: ExportRange) -> Iterator[Sequence[Any]]:
    after = rng.first_seq - 1
    while after < rng.last_seq:
        with auth.db.read() as conn:
            rows = conn.execute(
                select(t.AuditEvent.__table__)
                .where(_EVENT_COLUMNS.seq > after, _EVENT_COLUMNS.seq <= rng.last_seq)
                .order_by(_EVENT_COLUMNS.seq)
                .limit(_BATCH)
            ).all()
        if not rows:
            return  # rows missing from the store: the bundle says so by its gap or its end
        yield rows
        after = int(rows[-1].seq)


def _checkpoints(auth: Authority, rng: ExportRange) -> list[Checkpoint]:
    """The checkpoints from the anchor (``first_seq - 1``) to the range's end, then — for a
    range with a requested end — the first one after it.

    The anchor's checkpoint authenticates where a range export starts, and it is the one the
    range's first event may record (``audit.checkpoint`` events follow theirs). An export up to
    the head includes nothing after it (a checkpoint signed while exporting would only look like
    truncation)."""
    c = t.AuditCheckpoint.__table__.c
    with auth.db.read() as conn:
        rows = list(
            conn.execute(
                select(t.AuditCheckpoint.__table__)
                .where(c.seq >= rng.first_seq - 1, c.seq <= rng.last_seq)
                .order_by(c.seq)
            ).all()
        )
        if rng.requested_to is not None:
            rows += conn.execute(
                select(t.AuditCheckpoint.__table__)
                .where(c.seq > rng.last_seq)
                .order_by(c.seq)
                .limit(1)
            ).all()
    return [checkpoint_from_row(r) for r in rows]


def chain_certificates(auth: Authority) -> list[x509.Certificate]:
    """Every audit certificate (oldest first), then their CA certificates up to the root."""
    audit_certs = [x509.load_der_x509_certificate(r.der) for r in audit_certificate_rows(auth.db)]
    cas = [x509.load_der_x509_certificate(r.certificate_der) for r in auth.db.list_cas()]
    out: list[x509.Certificate] = []
    seen: set[bytes] = set()

    def add(cert: x509.Certificate) -> None:
        der = cert.public_bytes(serialization.Encoding.DER)
        if der not in seen:
            seen.add(der)
            out.append(cert)

    for cert in audit_certs:
        add(cert)
    for cert in audit_certs:
        for parent in _issuers_of(cert, cas):
            add(parent)
    return out


def _issuers_of(cert: x509.Certificate, cas: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """``cert``'s issuer, its issuer, … up to a self-issued root (by name and signature)."""
    path: list[x509.Certificate] = []
    current = cert
    for _ in range(8):  # deeper hierarchies than this are not built by hsmca
        parent = next((ca for ca in cas if _issued_by(current, ca)), None)
        if parent is None or parent in path:
            break
        path.append(parent)
        if parent.issuer == parent.subject:
            break
        current = parent
    return path


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# Zip plumbing ------------------------------------------------------------------------------------


class _Chunks:
    """A write-only sink whose bytes are taken out between batches (zipfile needs no seek)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _zip_time(created: str) -> tuple[int, int, int, int, int, int]:
    moment = datetime.fromisoformat(created)
    return (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)


def _info(name: str, stamp: tuple[int, int, int, int, int, int]) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=stamp)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16  # a regular file readable by all once unzipped
    return info


class _member:
    """A member written in pieces, with its SHA-256 and size recorded in ``files`` on close."""

    def __init__(
        self,
        bundle: zipfile.ZipFile,
        name: str,
        stamp: tuple[int, int, int, int, int, int],
        files: dict[str, FileDigest],
    ) -> None:
        self._name, self._files = name, files
        # zip64 from the start: an event stream's size is unknown until its end.
        self._out = bundle.open(_info(name, stamp), "w", force_zip64=True)
        self._hash = hashlib.sha256()
        self._size = 0

    def __enter__(self) -> _member:
        return self

    def write(self, data: bytes) -> None:
        self._out.write(data)
        self._hash.update(data)
        self._size += len(data)

    def __exit__(self, *exc: object) -> None:
        self._out.close()
        self._files[self._name] = FileDigest(self._hash.hexdigest(), self._size)
