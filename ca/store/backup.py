"""Backup and restore of the database and configuration (never key material).

A backup is one zip file:

* ``manifest.json`` — format and version, hsmca version, Alembic revision, source dialect,
  creation time (RFC 3339 UTC), the audit chain head, and per table its columns (name and kind),
  row count, member name and SHA-256; the SHA-256 of every other member;
* ``hsmca.toml`` — the configuration file (a database password in ``[database] url`` removed);
* ``tables/NN-<table>.jsonl`` — one JSON array per row, in primary-key order, tables in
  foreign-key order. Values are portable: bytes as base64, times as RFC 3339 UTC with
  microseconds, so a SQLite backup restores onto PostgreSQL and back.

Every table is read inside one read snapshot (SQLite: one read transaction; PostgreSQL:
``REPEATABLE READ READ ONLY``), so the dump is consistent while the CA runs. The pure helpers
(value coding, manifest building and checking) are tested on their own; the I/O is
:func:`write_backup`, :func:`open_backup` and :func:`load_backup`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import (
    Boolean,
    Connection,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ca.errors import CAError
from ca.store import tables as t

FORMAT = "hsmca-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CONFIG_MEMBER = "hsmca.toml"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: The zip comment, last in the file: the SHA-256 (hex) of every byte before the digest, so that
#: a change anywhere (zip headers and timestamps included) is refused.
TRAILER = b"hsmca-backup-sha256:"
_TRAILER_LEN = len(TRAILER) + 64
BATCH = 2000

#: Column kinds: how a value is written in the JSON lines.
KINDS = ("int", "str", "bool", "bytes", "datetime")
_MEMBER = re.compile(r"^tables/[0-9]{2,4}-[a-z_][a-z0-9_]{0,62}\.jsonl$")

Progress = Callable[[int, int], None]


class BackupError(CAError):
    """The backup file is unreadable, corrupt, tampered with, or does not fit this hsmca."""

    kind = "backup"


# --- pure: values ------------------------------------------------------------------------------


def column_kind(column_type: Any) -> str:
    """The kind of a column from its SQLAlchemy type (datetime, bytes, bool, int or str)."""
    if isinstance(column_type, t.UtcDateTime | DateTime):
        return "datetime"
    if isinstance(column_type, LargeBinary):
        return "bytes"
    if isinstance(column_type, Boolean):
        return "bool"
    if isinstance(column_type, Integer):
        return "int"
    if isinstance(column_type, String):  # Text is a String
        return "str"
    raise BackupError(f"no backup encoding for column type {column_type!r}")


def encode_value(kind: str, value: Any) -> Any:
    """A column value as JSON: bytes → base64, datetime → RFC 3339 UTC with microseconds."""
    if value is None:
        return None
    if kind == "bytes":
        return base64.b64encode(bytes(value)).decode("ascii")
    if kind == "datetime":
        if value.tzinfo is None:  # a naive value from the database is UTC (UtcDateTime)
            value = value.replace(tzinfo=UTC)
        return str(value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    if kind == "bool":
        return bool(value)
    if kind == "int":
        return int(value)
    return str(value)


def decode_value(kind: str, value: Any) -> Any:
    """The inverse of :func:`encode_value`; datetimes come back naive UTC, as the columns store
    them. Raises ValueError for a value that does not fit its kind."""
    if value is None:
        return None
    if kind == "bytes":
        if not isinstance(value, str):
            raise ValueError("bytes must be base64 text")
        return base64.b64decode(value, validate=True)
    if kind == "datetime":
        if not isinstance(value, str) or not value.endswith("Z"):
            raise ValueError("a time must be RFC 3339 UTC text ending in Z")
        return datetime.fromisoformat(value[:-1] + "+00:00").astimezone(UTC).replace(tzinfo=None)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("expected an integer")
        return value
    if not isinstance(value, str):
        raise ValueError("expected text")
    return value


def row_line(kinds: Sequence[str], row: Sequence[Any]) -> bytes:
    """One row as a JSON Lines line (compact, UTF-8)."""
    values = [encode_value(k, v) for k, v in zip(kinds, row, strict=True)]
    return json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def parse_row(line: bytes, columns: Sequence[TableColumn]) -> dict[str, Any]:
    """A JSON Lines line back to ``{column: value}`` for an insert; ValueError if malformed."""
    values = json.loads(line)
    if not isinstance(values, list) or len(values) != len(columns):
        raise ValueError(f"expected a list of {len(columns)} values")
    return {c.name: decode_value(c.kind, v) for c, v in zip(columns, values, strict=True)}


# --- pure: the manifest --------------------------------------------------------------------------


@dataclass(frozen=True)
class TableColumn:
    name: str
    kind: str


@dataclass(frozen=True)
class TableEntry:
    """One table of a backup."""

    name: str
    member: str
    columns: tuple[TableColumn, ...]
    rows: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` says."""

    hsmca_version: str
    alembic_revision: str
    dialect: str
    created: str  # RFC 3339 UTC
    tables: tuple[TableEntry, ...]
    members: Mapping[str, str]  # member → SHA-256 hex (the tables' and hsmca.toml)
    audit_head: tuple[int, str] | None  # (seq, hash hex) of the newest event
    config_notes: tuple[str, ...] = ()
    format_version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        """The manifest as written into the backup (indented, sorted keys)."""
        doc = {
            "format": FORMAT,
            "format_version": self.format_version,
            "hsmca_version": self.hsmca_version,
            "alembic_revision": self.alembic_revision,
            "dialect": self.dialect,
            "created": self.created,
            "audit_head": (
                None
                if self.audit_head is None
                else {"seq": self.audit_head[0], "hash": self.audit_head[1]}
            ),
            "tables": [
                {
                    "name": e.name,
                    "member": e.member,
                    "columns": [[c.name, c.kind] for c in e.columns],
                    "rows": e.rows,
                    "sha256": e.sha256,
                }
                for e in self.tables
            ],
            "members": dict(sorted(self.members.items())),
            "config_notes": list(self.config_notes),
        }
        return json.dumps(doc, indent=2, sort_keys=True).encode("utf-8") + b"\n"

    @property
    def row_counts(self) -> dict[str, int]:
        return {e.name: e.rows for e in self.tables}

    def table(self, name: str) -> TableEntry | None:
        return next((e for e in self.tables if e.name == name), None)


def _need(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise BackupError(f"manifest: {key!r} is missing or malformed")
    return value


def parse_manifest(data: bytes) -> Manifest:
    """Parse and check ``manifest.json``; BackupError naming what is wrong."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BackupError("manifest.json is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BackupError("not an hsmca backup (manifest.json has no format 'hsmca-backup')")
    version = _need(doc, "format_version", int)
    if version != FORMAT_VERSION:
        raise BackupError(
            f"backup format version {version} is not supported (this hsmca reads {FORMAT_VERSION})"
        )
    members = _need(doc, "members", dict)
    if not all(isinstance(k, str) and _is_hex64(v) for k, v in members.items()):
        raise BackupError("manifest: 'members' must map names to SHA-256 hex digests")
    tables = []
    for item in _need(doc, "tables", list):
        if not isinstance(item, dict):
            raise BackupError("manifest: a table entry is not an object")
        name, member = _need(item, "name", str), _need(item, "member", str)
        columns_raw = _need(item, "columns", list)
        rows = _need(item, "rows", int)
        digest = _need(item, "sha256", str)
        if not _MEMBER.match(member) or not _is_hex64(digest) or rows < 0:
            raise BackupError(f"manifest: table {name!r}: bad member name, digest or row count")
        if members.get(member) != digest:
            raise BackupError(f"manifest: table {name!r}: digest differs from its member's")
        columns = []
        for col in columns_raw:
            if (
                not isinstance(col, list)
                or len(col) != 2
                or not isinstance(col[0], str)
                or col[1] not in KINDS
            ):
                raise BackupError(f"manifest: table {name!r}: bad column {col!r}")
            columns.append(TableColumn(col[0], col[1]))
        tables.append(TableEntry(name, member, tuple(columns), rows, digest))
    if len({e.name for e in tables}) != len(tables):
        raise BackupError("manifest: a table is listed twice")
    if set(members) != {CONFIG_MEMBER} | {e.member for e in tables}:
        raise BackupError("manifest: 'members' must be hsmca.toml and the tables' members")
    head_raw = doc.get("audit_head")
    head: tuple[int, str] | None = None
    if head_raw is not None:
        if not isinstance(head_raw, dict):
            raise BackupError("manifest: 'audit_head' is malformed")
        head = (_need(head_raw, "seq", int), _need(head_raw, "hash", str))
    created = _need(doc, "created", str)
    try:
        datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        raise BackupError("manifest: 'created' is not an RFC 3339 time") from None
    notes = doc.get("config_notes", [])
    return Manifest(
        hsmca_version=_need(doc, "hsmca_version", str),
        alembic_revision=_need(doc, "alembic_revision", str),
        dialect=_need(doc, "dialect", str),
        created=created,
        tables=tuple(tables),
        members=dict(members),
        audit_head=head,
        config_notes=tuple(str(n) for n in notes) if isinstance(notes, list) else (),
        format_version=version,
    )


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def created_time(manifest: Manifest) -> datetime:
    """When the backup's snapshot was taken (aware UTC)."""
    return datetime.fromisoformat(manifest.created.replace("Z", "+00:00")).astimezone(UTC)


def redact_database_password(config_text: str) -> tuple[str, tuple[str, ...]]:
    """The config text with any password removed from ``[database] url`` (it is a secret, and
    the restored CA gets it from ``HSMCA_DATABASE_URL`` or ``~/.pgpass``), and notes saying so."""
    import tomllib

    try:
        raw = tomllib.loads(config_text)
    except tomllib.TOMLDecodeError as exc:
        raise BackupError(f"hsmca.toml is not valid TOML: {exc}") from None
    url = raw.get("database", {}).get("url", "") if isinstance(raw.get("database"), dict) else ""
    if not isinstance(url, str) or not url:
        return config_text, ()
    try:
        parsed = make_url(url)
    except ArgumentError:
        return config_text, ()
    if parsed.password is None:
        return config_text, ()
    # URL.set() takes None as "unchanged"; the named tuple's _replace really clears it.
    bare = parsed._replace(password=None).render_as_string(hide_password=False)
    replaced = config_text.replace(json.dumps(url), json.dumps(bare))
    if replaced == config_text:
        replaced = config_text.replace(url, bare)
    check = tomllib.loads(replaced).get("database", {}).get("url")
    if check != bare:
        raise BackupError(
            "hsmca.toml: could not remove the password from [database] url; "
            "put the password in HSMCA_DATABASE_URL or ~/.pgpass instead"
        )
    return replaced, ("password removed from [database] url",)


# --- I/O: writing --------------------------------------------------------------------------------


def _ordered_tables() -> list[Table]:
    """Every table of the schema, parents before children."""
    return list(t.Base.metadata.sorted_tables)


def _primary_order(table: Table) -> list[Any]:
    return list(table.primary_key.columns)


@contextlib.contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    """One read transaction that every table is read in (a consistent dump)."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        with conn.begin():
            yield conn


def write_backup(
    engine: Engine,
    out: Path,
    *,
    config_text: str,
    hsmca_version: str,
    alembic_revision: str,
    now: datetime,
    progress: Progress | None = None,
) -> tuple[Manifest, str]:
    """Dump every table and the config into ``out`` (mode 0600, temp file + rename).

    Returns the manifest and the SHA-256 of the whole file.
    """
    config_text, notes = redact_database_password(config_text)
    directory = out.parent if str(out.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=directory)
    try:
        os.fchmod(fd, 0o600)  # the dump holds password hashes and shared secrets
        with os.fdopen(fd, "w+b") as fh:
            manifest = _write_zip(
                engine, fh, config_text, notes, hsmca_version, alembic_revision, now, progress
            )
            fh.flush()
            size = fh.seek(0, os.SEEK_END)
            fh.seek(0)
            digest = _stream_sha256(fh, size - 64)
            fh.seek(size - 64)
            fh.write(digest.encode("ascii"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return manifest, _file_sha256(out)


def _write_zip(
    engine: Engine,
    fh: IO[bytes],
    config_text: str,
    notes: tuple[str, ...],
    hsmca_version: str,
    alembic_revision: str,
    now: datetime,
    progress: Progress | None,
) -> Manifest:
    members: dict[str, str] = {}
    entries: list[TableEntry] = []
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        config_bytes = config_text.encode("utf-8")
        zf.writestr(CONFIG_MEMBER, config_bytes)
        members[CONFIG_MEMBER] = hashlib.sha256(config_bytes).hexdigest()
        with _snapshot(engine) as conn:
            tables = _ordered_tables()
            counts = {
                tb.name: int(conn.execute(select(func.count()).select_from(tb)).scalar_one())
                for tb in tables
            }
            total, done = sum(counts.values()), 0
            head_row = conn.execute(
                select(t.AuditEvent.seq, t.AuditEvent.hash)
                .order_by(t.AuditEvent.seq.desc())
                .limit(1)
            ).first()
            for index, table in enumerate(tables):
                columns = tuple(TableColumn(c.name, column_kind(c.type)) for c in table.columns)
                kinds = [c.kind for c in columns]
                member = f"tables/{index:02d}-{table.name}.jsonl"
                digest = hashlib.sha256()
                rows = 0
                query = select(table).order_by(*_primary_order(table))
                info = zipfile.ZipInfo(member, date_time=now.astimezone(UTC).timetuple()[:6])
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o600 << 16
                with zf.open(info, "w", force_zip64=True) as dest:
                    result = conn.execute(query.execution_options(yield_per=BATCH))
                    for part in result.partitions():
                        chunk = b"".join(row_line(kinds, r) for r in part)
                        dest.write(chunk)
                        digest.update(chunk)
                        rows += len(part)
                        done += len(part)
                        if progress is not None:
                            progress(done, total)
                members[member] = digest.hexdigest()
                entries.append(TableEntry(table.name, member, columns, rows, digest.hexdigest()))
        manifest = Manifest(
            hsmca_version=hsmca_version,
            alembic_revision=alembic_revision,
            dialect=engine.dialect.name,
            created=now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            tables=tuple(entries),
            members=members,
            audit_head=None if head_row is None else (int(head_row[0]), str(head_row[1])),
            config_notes=notes,
        )
        zf.writestr(MANIFEST, manifest.to_json())
        zf.comment = TRAILER + b"0" * 64  # the digest is written once the file is complete
    if progress is not None:
        progress(total, total)
    return manifest


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return _stream_sha256(fh, None)


def _stream_sha256(fh: IO[bytes], size: int | None) -> str:
    """SHA-256 hex of the next ``size`` bytes of ``fh`` (None: to the end)."""
    digest = hashlib.sha256()
    left = size
    while left is None or left > 0:
        block = fh.read(1 << 20 if left is None else min(1 << 20, left))
        if not block:
            break
        digest.update(block)
        if left is not None:
            left -= len(block)
    return digest.hexdigest()


def check_trailer(path: Path) -> None:
    """Refuse a file whose closing digest is missing (not a backup, or truncated) or wrong."""
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size < _TRAILER_LEN:
            raise BackupError(f"{path}: not an hsmca backup (too short, or truncated)")
        fh.seek(size - _TRAILER_LEN)
        tail = fh.read(_TRAILER_LEN)
        if not tail.startswith(TRAILER):
            raise BackupError(f"{path}: not an hsmca backup (not one, or truncated)")
        fh.seek(0)
        if _stream_sha256(fh, size - 64).encode("ascii") != tail[len(TRAILER) :]:
            raise BackupError(f"{path}: the file was altered (its SHA-256 trailer does not match)")


# --- I/O: reading and checking -----------------------------------------------------------------


@dataclass
class BackupFile:
    """An opened backup whose every member has been checked against the manifest."""

    path: Path
    manifest: Manifest
    config_text: str
    sha256: str
    _zip: zipfile.ZipFile = field(repr=False)

    def lines(self, entry: TableEntry) -> Iterator[bytes]:
        """The JSON lines of one table (already verified; read again from the file)."""
        try:
            with self._zip.open(entry.member) as src:
                yield from src
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise BackupError(f"{self.path}: {entry.member} became unreadable: {exc}") from None

    def close(self) -> None:
        self._zip.close()


def open_backup(path: Path, progress: Progress | None = None) -> BackupFile:
    """Open ``path`` and verify it completely before anything is changed: the manifest, the
    SHA-256 and row count of every member, and the audit head. BackupError says what is wrong."""
    try:
        check_trailer(path)
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise BackupError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BackupError(f"{path}: is a directory") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError):
        raise BackupError(f"{path}: not an hsmca backup (not a zip file, or truncated)") from None
    try:
        manifest = _read_manifest(zf, path)
        config_text = _check_members(zf, path, manifest, progress)
    except BaseException:
        zf.close()
        raise
    return BackupFile(path, manifest, config_text, _file_sha256(path), zf)


def _read_manifest(zf: zipfile.ZipFile, path: Path) -> Manifest:
    try:
        info = zf.getinfo(MANIFEST)
    except KeyError:
        raise BackupError(f"{path}: not an hsmca backup (no manifest.json)") from None
    if info.file_size > MAX_MANIFEST_BYTES:
        raise BackupError(f"{path}: manifest.json is implausibly large")
    try:
        data = zf.read(MANIFEST)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise BackupError(f"{path}: manifest.json is corrupt ({exc})") from None
    return parse_manifest(data)


def _check_members(
    zf: zipfile.ZipFile, path: Path, manifest: Manifest, progress: Progress | None
) -> str:
    names = set(zf.namelist())
    expected = set(manifest.members) | {MANIFEST}
    if names != expected:
        extra = sorted(names - expected)
        missing = sorted(expected - names)
        raise BackupError(
            f"{path}: members differ from the manifest"
            + (f"; unexpected: {', '.join(extra)}" if extra else "")
            + (f"; missing: {', '.join(missing)}" if missing else "")
        )
    if CONFIG_MEMBER not in manifest.members:
        raise BackupError(f"{path}: the manifest lists no hsmca.toml")
    total = sum(e.rows for e in manifest.tables)
    done = 0
    config_text = ""
    for name, want in manifest.members.items():
        entry = next((e for e in manifest.tables if e.member == name), None)
        digest = hashlib.sha256()
        lines = 0
        last = b""
        try:
            with zf.open(name) as src:
                if entry is None:
                    data = src.read()
                    digest.update(data)
                    if name == CONFIG_MEMBER:
                        config_text = data.decode("utf-8")
                else:
                    for line in src:
                        digest.update(line)
                        lines += 1
                        last = line
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise BackupError(f"{path}: {name} is corrupt ({exc})") from None
        except UnicodeDecodeError:
            raise BackupError(f"{path}: hsmca.toml is not UTF-8") from None
        if digest.hexdigest() != want:
            raise BackupError(f"{path}: {name} does not match its SHA-256 in the manifest")
        if entry is None:
            continue
        if lines != entry.rows or (last and not last.endswith(b"\n")):
            raise BackupError(f"{path}: {name} holds {lines} rows, the manifest says {entry.rows}")
        done += lines
        if progress is not None:
            progress(done, total)
        if entry.name == t.AuditEvent.__tablename__ and lines:
            _check_head(path, manifest, entry, last)
    events = manifest.table(t.AuditEvent.__tablename__)
    if manifest.audit_head is not None and (events is None or events.rows == 0):
        raise BackupError(f"{path}: the manifest names an audit head but holds no events")
    return config_text


def _check_head(path: Path, manifest: Manifest, entry: TableEntry, last_line: bytes) -> None:
    try:
        row = parse_row(last_line, entry.columns)
    except ValueError:
        raise BackupError(f"{path}: the last audit event is malformed") from None
    if manifest.audit_head != (row.get("seq"), row.get("hash")):
        raise BackupError(
            f"{path}: the audit head in the manifest is not the last event of the backup"
        )


# --- I/O: restoring ----------------------------------------------------------------------------


def reflect(engine: Engine) -> MetaData:
    """The tables the database has now."""
    meta = MetaData()
    meta.reflect(bind=engine)
    return meta


def existing_rows(engine: Engine) -> dict[str, int]:
    """Row counts of the non-empty tables of the database (Alembic's own table left out)."""
    meta = reflect(engine)
    out = {}
    with engine.connect() as conn:
        for name, table in sorted(meta.tables.items()):
            if name == "alembic_version":
                continue
            n = int(conn.execute(select(func.count()).select_from(table)).scalar_one())
            if n:
                out[name] = n
    return out


def drop_everything(engine: Engine) -> None:
    """Drop every table (and Alembic's version table) of the database."""
    meta = reflect(engine)
    meta.drop_all(bind=engine)


def load_rows(
    conn: Connection, backup: BackupFile, progress: Progress | None = None
) -> dict[str, int]:
    """Insert every row of ``backup`` through ``conn`` (one transaction, the caller's), then
    move each PostgreSQL sequence past the restored ids. Returns rows per table."""
    meta = MetaData()
    meta.reflect(bind=conn)
    total = sum(e.rows for e in backup.manifest.tables)
    done = 0
    loaded: dict[str, int] = {}
    for entry in backup.manifest.tables:
        table = meta.tables.get(entry.name)
        if table is None:
            raise BackupError(
                f"table {entry.name!r} of the backup does not exist at revision "
                f"{backup.manifest.alembic_revision}"
            )
        have = {c.name for c in table.columns}
        want = {c.name for c in entry.columns}
        if have != want:
            raise BackupError(
                f"table {entry.name!r}: columns differ from the schema at revision "
                f"{backup.manifest.alembic_revision} (backup: {sorted(want - have)} not in the "
                f"schema; schema: {sorted(have - want)} not in the backup)"
            )
        batch: list[dict[str, Any]] = []
        count = 0
        for number, line in enumerate(backup.lines(entry), start=1):
            try:
                batch.append(parse_row(line, entry.columns))
            except (ValueError, UnicodeDecodeError) as exc:
                raise BackupError(f"{entry.member} line {number}: {exc}") from None
            if len(batch) >= BATCH:
                conn.execute(insert(table), batch)
                count += len(batch)
                done += len(batch)
                batch = []
                if progress is not None:
                    progress(done, total)
        if batch:
            conn.execute(insert(table), batch)
            count += len(batch)
            done += len(batch)
            if progress is not None:
                progress(done, total)
        loaded[entry.name] = count
    if conn.dialect.name == "postgresql":
        advance_sequences(conn, meta)
    return loaded


def advance_sequences(conn: Connection, meta: MetaData) -> None:
    """Set every serial column's sequence past the largest id (else the next insert collides)."""
    for table in meta.tables.values():
        pk = list(table.primary_key.columns)
        if len(pk) != 1 or not isinstance(pk[0].type, Integer):
            continue
        seq = conn.execute(
            text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": pk[0].name}
        ).scalar_one()
        if seq is None:
            continue
        conn.execute(
            text(
                f'SELECT setval(:s, COALESCE((SELECT MAX("{pk[0].name}") FROM "{table.name}"), 0) + 1, false)'
            ),
            {"s": seq},
        )


def audit_head(conn: Connection) -> tuple[int, str] | None:
    """The newest audit event's (seq, hash) as seen by ``conn``."""
    row = conn.execute(
        select(t.AuditEvent.seq, t.AuditEvent.hash).order_by(t.AuditEvent.seq.desc()).limit(1)
    ).first()
    return None if row is None else (int(row[0]), str(row[1]))


def crl_number_skip(created: datetime, now: datetime, min_interval_seconds: int = 5) -> int:
    """How far to advance each CRL number after a restore so none published after the backup is
    reused: one per ``min_interval_seconds`` since the backup (the scheduler's fastest pace)
    plus 100 for CRLs published by hand."""
    elapsed = max(0.0, (now - created).total_seconds())
    return int(elapsed // min_interval_seconds) + 100
