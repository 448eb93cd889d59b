"""Offline verification of an audit export bundle (``ca.audit_export``) against a root certificate.

Nothing here trusts the bundle or hsmca's database: the root certificate the auditor brings is
the only anchor. The checks:

1. Every member's SHA-256 and size against ``manifest.json``; the manifest's counts, range,
   anchor and head hash against what the members hold.
2. The audit certificates in ``chain.pem``: each is an audit certificate (CA:FALSE,
   digitalSignature, extKeyUsage id-kp-documentSigning) whose path through the CA certificates
   of ``chain.pem`` reaches the given root, every signature on the path verifying and every
   issuer a CA (basicConstraints CA:TRUE, keyCertSign, path length); each checkpoint's time must
   lie within the validity of every certificate on its path.
3. The events and checkpoints with :func:`ca.audit_verify.verify_rows_and_checkpoints` — the
   rules the live verification applies — continuing from the first event's ``prev_hash`` (the
   anchor of a range export; genesis for seq 1).
4. Truncation: events must reach the manifest's last seq, and no checkpoint may lie beyond the
   last event except the one first after the exported range. Events after the last checkpoint
   are not covered by any signature: a warning, not an error.

Findings name the first bad ``seq`` where there is one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtensionOID

from ca.audit import AuditRow
from ca.audit_export import (
    CHAIN_FILE,
    CHECKPOINTS_FILE,
    EVENTS_FILE,
    FORMAT,
    MANIFEST_FILE,
    MEMBERS,
)
from ca.audit_key import DOCUMENT_SIGNING
from ca.audit_verify import VerifyReport, checkpoint_problem, verify_rows_and_checkpoints
from ca.checkpoint import Checkpoint

Progress = Callable[[int, int], None]

MAX_PATH = 8
_READ = 1 << 20
_MAX_SMALL_MEMBER = 64 << 20  # manifest, checkpoints and certificates: never this large
_ENCODE = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
_UNSAFE = re.compile(r'[\x00-\x1f"\\]')  # characters a canonical JSON string shows escaped
_CANONICAL_INT = re.compile(r"0|[1-9][0-9]{0,18}")


@dataclass(frozen=True)
class Finding:
    """One problem (``error``) or caveat (``warning``), at a ``seq`` where one applies."""

    severity: str
    what: str
    seq: int | None = None

    def __str__(self) -> str:
        where = f"seq {self.seq}: " if self.seq is not None else ""
        return f"{where}{self.what}"


@dataclass(frozen=True)
class BundleReport:
    """The outcome of :func:`verify_bundle`."""

    findings: tuple[Finding, ...]
    events: int = 0  # events walked before the first problem (all of them when intact)
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0  # checkpoints whose signature and hash verified
    last_checkpoint_seq: int | None = None
    last_checkpoint_time: str | None = None
    audit_certificates: tuple[str, ...] = ()  # serials of the audit certificates trusted

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def first_error(self) -> Finding | None:
        """The error at the lowest seq (errors without a seq, e.g. a file hash, come first)."""
        errors = self.errors
        if not errors:
            return None
        return min(errors, key=lambda f: -1 if f.seq is None else f.seq)

    @property
    def first_bad_seq(self) -> int | None:
        located = [f.seq for f in self.errors if f.seq is not None]
        return min(located) if located else None


class BundleUnreadable(Exception):
    """The file is not a bundle at all (not a zip, no manifest): nothing can be checked."""


# --- the whole check ---------------------------------------------------------------------------


def verify_bundle(
    source: str | Path | IO[bytes],
    roots: Sequence[x509.Certificate],
    progress: Progress | None = None,
) -> BundleReport:
    """Verify the bundle at ``source`` offline, trusting only ``roots`` (self-signed root
    certificates, see :func:`load_roots`).

    Raises :class:`BundleUnreadable` when ``source`` is not a readable zip with a manifest.
    """
    try:
        bundle = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleUnreadable(f"not an hsmca audit bundle (a zip file): {exc}") from None
    with bundle:
        return _verify_open(bundle, roots, progress)


def _verify_open(
    bundle: zipfile.ZipFile, roots: Sequence[x509.Certificate], progress: Progress | None
) -> BundleReport:
    findings: list[Finding] = []
    names = bundle.namelist()
    if MANIFEST_FILE not in names:
        raise BundleUnreadable(f"no {MANIFEST_FILE}: not an hsmca audit bundle")
    manifest = _read_manifest(_small(bundle, MANIFEST_FILE), findings)
    for name in names:
        if name not in MEMBERS:
            findings.append(Finding("warning", f"unexpected file {name!r} in the bundle (ignored)"))
    for name in (EVENTS_FILE, CHECKPOINTS_FILE, CHAIN_FILE):
        if name not in names:
            findings.append(Finding("error", f"{name} is missing from the bundle"))
    digests: dict[str, tuple[str, int]] = {}

    chain_bytes = _small(bundle, CHAIN_FILE, digests, findings) if CHAIN_FILE in names else b""
    certs = _parse_pem(chain_bytes, findings)
    trusted, paths = trusted_audit_certificates(certs, roots, findings)

    raw_checkpoints = (
        _small(bundle, CHECKPOINTS_FILE, digests, findings) if CHECKPOINTS_FILE in names else b""
    )
    checkpoints = parse_checkpoints(raw_checkpoints, findings)
    findings.extend(path_validity_problems(checkpoints, trusted, paths))

    expected = manifest.get("range", {}) if isinstance(manifest.get("range"), dict) else {}
    declared_last = _int_or_none(expected.get("last_seq"))
    # The signed region: events up to the last checkpoint the manifest puts inside the range.
    covered_to = max((c.seq for c in checkpoints if c.seq <= (declared_last or 0)), default=0)
    total = _int_or_none(manifest.get("counts", {}).get("events")) or 0
    walk = _EventWalk(covered_to)
    report: VerifyReport | None = None
    if EVENTS_FILE in names:
        try:
            with bundle.open(EVENTS_FILE) as member:
                rows = walk.rows(member)
                first = next(rows, None)
                report = verify_rows_and_checkpoints(
                    itertools.chain([first] if first is not None else [], rows),
                    checkpoints,
                    trusted,
                    start=anchor_of(first),
                    progress=progress,
                    total=total,
                )
                walk.drain(member)  # the rest of the file still counts for its SHA-256
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            findings.append(Finding("error", f"{EVENTS_FILE} cannot be read: {exc}"))
        digests[EVENTS_FILE] = (walk.sha256.hexdigest(), walk.size)
    findings.extend(walk.findings)
    if report is not None and not report.ok:
        findings.append(Finding("error", report.problem, report.first_bad_seq))
    findings.extend(file_problems(manifest, digests))
    intact = report is not None and report.ok and not walk.findings
    if intact and report is not None:
        findings.extend(range_problems(manifest, walk, len(checkpoints), len(certs)))
        bounded = expected.get("requested_to") is not None
        located = {f.seq for f in findings if f.severity == "error"}
        findings.extend(
            f
            for f in truncation_problems(
                checkpoints, trusted, walk.last_seq, declared_last, bounded
            )
            if f.seq not in located  # one truncation finding per place is enough
        )
    if intact and report is not None and not any(f.severity == "error" for f in findings):
        findings.extend(coverage_warnings(report, walk.first_seq, walk.last_seq, checkpoints))
    return BundleReport(
        findings=tuple(_dedupe(findings)),
        events=report.events if report is not None else 0,
        first_seq=walk.first_seq,
        last_seq=walk.last_seq,
        checkpoints=report.checkpoints if report is not None else 0,
        last_checkpoint_seq=report.last_checkpoint_seq if report is not None else None,
        last_checkpoint_time=report.last_checkpoint_time if report is not None else None,
        audit_certificates=tuple(sorted(trusted)),
    )


# --- members -----------------------------------------------------------------------------------


def _small(
    bundle: zipfile.ZipFile,
    name: str,
    digests: dict[str, tuple[str, int]] | None = None,
    findings: list[Finding] | None = None,
) -> bytes:
    try:
        info = bundle.getinfo(name)
        if info.file_size > _MAX_SMALL_MEMBER:
            raise BundleUnreadable(f"{name} is implausibly large ({info.file_size} bytes)")
        data = bundle.read(name)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        if findings is None:
            raise BundleUnreadable(f"{name} cannot be read: {exc}") from None
        findings.append(Finding("error", f"{name} cannot be read: {exc}"))
        data = b""
    if digests is not None:
        digests[name] = (hashlib.sha256(data).hexdigest(), len(data))
    return data


def _read_manifest(data: bytes, findings: list[Finding]) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleUnreadable(f"{MANIFEST_FILE} is not JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise BundleUnreadable(f"{MANIFEST_FILE} is not a JSON object")
    if manifest.get("format") != FORMAT:
        findings.append(
            Finding("error", f"{MANIFEST_FILE}: format is {manifest.get('format')!r}, not {FORMAT}")
        )
    return manifest


def file_problems(
    manifest: Mapping[str, Any], digests: Mapping[str, tuple[str, int]]
) -> list[Finding]:
    """Each member's SHA-256 and size against the manifest."""
    out: list[Finding] = []
    files = manifest.get("files")
    if not isinstance(files, dict):
        return [Finding("error", f"{MANIFEST_FILE} lists no file hashes")]
    for name in (EVENTS_FILE, CHECKPOINTS_FILE, CHAIN_FILE):
        stated = files.get(name)
        actual = digests.get(name)
        if actual is None:
            continue  # missing or unreadable: already reported
        if not isinstance(stated, dict) or "sha256" not in stated:
            out.append(Finding("error", f"{MANIFEST_FILE} has no SHA-256 for {name}"))
        elif stated.get("sha256") != actual[0] or stated.get("bytes") != actual[1]:
            out.append(
                Finding(
                    "error",
                    f"{name} differs from the manifest (SHA-256 {actual[0][:16]}…, "
                    f"{actual[1]} bytes; the manifest says {str(stated.get('sha256'))[:16]}…, "
                    f"{stated.get('bytes')} bytes): the file was altered",
                )
            )
    return out


def range_problems(
    manifest: Mapping[str, Any], walk: _EventWalk, checkpoints: int, certificates: int
) -> list[Finding]:
    """The manifest's range, counts, anchor and head hash against the members (an intact walk)."""
    out: list[Finding] = []
    rng = manifest.get("range") if isinstance(manifest.get("range"), dict) else {}
    counts = manifest.get("counts") if isinstance(manifest.get("counts"), dict) else {}
    assert isinstance(rng, dict) and isinstance(counts, dict)
    first, last = _int_or_none(rng.get("first_seq")), _int_or_none(rng.get("last_seq"))
    if walk.first_seq is None:
        out.append(Finding("error", f"{EVENTS_FILE} holds no events", first))
        return out
    if first is not None and walk.first_seq != first:
        out.append(
            Finding(
                "error",
                f"the events start at seq {walk.first_seq}, but the manifest's range starts at "
                f"seq {first} (events removed from the start, or added before it)",
                min(first, walk.first_seq),
            )
        )
    if last is not None and walk.last_seq is not None and walk.last_seq > last:
        out.append(
            Finding(
                "error",
                f"the events go on to seq {walk.last_seq}, past the manifest's range end {last}",
                last + 1,
            )
        )
    if last is not None and walk.last_seq is not None and walk.last_seq < last:
        out.append(
            Finding(
                "error",
                f"truncated: the events end at seq {walk.last_seq}, but the manifest's range "
                f"ends at seq {last}",
                walk.last_seq + 1,
            )
        )
    stated = {
        "counts.events": (counts.get("events"), walk.count),
        "counts.checkpoints": (counts.get("checkpoints"), checkpoints),
        "counts.certificates": (counts.get("certificates"), certificates),
        "first_prev_hash": (manifest.get("first_prev_hash"), walk.anchor_hex),
        "last_hash": (manifest.get("last_hash"), walk.last_hash_hex),
    }
    for key, (said, found) in stated.items():
        if said != found:
            out.append(
                Finding("error", f"{MANIFEST_FILE}: {key} is {said!r}, the bundle has {found!r}")
            )
    return out


# --- events ------------------------------------------------------------------------------------


class _EventWalk:
    """Reads ``events.jsonl`` once: hashes the file, parses lines into rows, notes bad lines.

    Lines up to ``covered_to`` (the last checkpoint inside the range) are parsed the fast way
    (:func:`fast_row`): their hash is checked over the line's own bytes, and the checkpoint that
    signs them proves those bytes are the original canonical ones. Later lines, which no
    signature covers, are decoded and re-encoded (:func:`decoded_row`) exactly as the format
    document says.
    """

    def __init__(self, covered_to: int) -> None:
        self.covered_to = covered_to
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.count = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.anchor_hex: str | None = None
        self.last_hash_hex: str | None = None
        self.findings: list[Finding] = []

    def _chunks(self, member: IO[bytes]) -> Iterator[bytes]:
        while chunk := member.read(_READ):
            self.sha256.update(chunk)
            self.size += len(chunk)
            yield chunk

    def _lines(self, member: IO[bytes]) -> Iterator[tuple[int, bytes]]:
        rest = b""
        number = 0
        for chunk in self._chunks(member):
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                number += 1
                yield number, line
        if rest:
            number += 1
            yield number, rest

    def rows(self, member: IO[bytes]) -> Iterator[AuditRow]:
        """The rows of the file in order; stops at the first line that is not an event."""
        for number, line in self._lines(member):
            expected = self.last_seq + 1 if self.last_seq is not None else None
            row = fast_row(line)
            if row is None or row[0] > self.covered_to:
                decoded = decoded_row(line)
                if isinstance(decoded, str):
                    where = f"seq {expected}" if expected is not None else "the first event"
                    self.findings.append(
                        Finding(
                            "error",
                            f"{EVENTS_FILE} line {number} ({where}) is not an event: {decoded}",
                            expected if expected is not None else None,
                        )
                    )
                    return
                row = decoded
            seq = row[0] if type(row[0]) is int else None
            if self.first_seq is None:
                self.first_seq = seq
                self.anchor_hex = row[6]
            if seq is not None:
                self.last_seq = seq
            self.last_hash_hex = row[7]
            self.count += 1
            yield row

    def drain(self, member: IO[bytes]) -> None:
        """Read what the walk left (it stops at the first problem) into the file's hash."""
        for _ in self._chunks(member):
            pass


def anchor_of(first: AuditRow | None) -> tuple[int, bytes] | None:
    """The ``(seq, hash)`` a walk starting at row ``first`` continues from: genesis (None) for
    seq 1, else the seq before it with the first row's ``prev_hash`` (a range export's anchor)."""
    if first is None or type(first[0]) is not int or first[0] <= 1:
        return None
    try:
        anchor = bytes.fromhex(first[6])
    except (TypeError, ValueError):
        anchor = b"\xff" * 33  # never a hash: the first event's prev_hash fails at once
    return (first[0] - 1, anchor)


def fast_row(line: bytes) -> AuditRow | None:
    """The row of a line in exactly the exported layout (canonical JSON, keys sorted)::

        {"action":"A","actor":"B","details":{…},"hash":"H","prev_hash":"P","seq":N,"subject":"S","time":"T"}

    or None when the line is not exactly that (then :func:`decoded_row` reads it). Strings with
    escapes are left to the decoder, so each string here is its own JSON text. ``details`` is
    taken as it stands: :func:`ca.audit.verify_rows` hashes these bytes (without the hashes),
    i.e. the line itself, and falls back to re-encoding when that does not match.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.startswith('{"action":"') or not text.endswith('"}'):
        return None
    try:
        a_end = text.index('"', 11)
        if not text.startswith('","actor":"', a_end):
            return None
        b_end = text.index('"', a_end + 11)
        if not text.startswith('","details":', b_end):
            return None
        seq_at = text.rfind(',"seq":')  # the last one: subject and time are plain strings
        seg = seq_at - 153  # ,"hash":"<64>","prev_hash":"<64>"
        if (
            seg <= b_end + 12
            or not text.startswith(',"hash":"', seg)
            or not text.startswith('","prev_hash":"', seg + 73)
            or text[seq_at - 1] != '"'
        ):
            return None
        s_at = text.index(',"subject":"', seq_at + 7)
        t_at = text.index('","time":"', s_at + 12)
    except ValueError:
        return None
    number = text[seq_at + 7 : s_at]
    action, actor = text[11:a_end], text[a_end + 11 : b_end]
    subject, time = text[s_at + 12 : t_at], text[t_at + 10 : -2]
    if _UNSAFE.search(action + actor + subject + time) or not _CANONICAL_INT.fullmatch(number):
        return None
    return (
        int(number),
        time,
        actor,
        action,
        subject,
        text[b_end + 12 : seg],
        text[seg + 88 : seg + 152],
        text[seg + 9 : seg + 73],
    )


def decoded_row(line: bytes) -> AuditRow | str:
    """The row of any line that is a JSON object, by decoding it and re-encoding ``details``
    canonically (the format document's definition); otherwise why it is not an event.

    Fields of the wrong type are passed on as they are: the chain check reports them (a seq
    that is not an integer as missing, anything else as an edited event).
    """
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return f"not JSON ({str(exc)[:80]})"
    if not isinstance(value, dict):
        return "not a JSON object"
    details = value.get("details")
    try:
        # Not an object: stays visibly not one, and the chain check reports the event edited.
        text = _ENCODE(details) if isinstance(details, dict) else json.dumps([details])
    except (TypeError, ValueError):
        text = "null"
    return (
        value.get("seq"),  # type: ignore[return-value]  # checked by the walk
        value.get("time"),
        value.get("actor"),
        value.get("action"),
        value.get("subject"),
        text,
        value.get("prev_hash") if isinstance(value.get("prev_hash"), str) else "",
        value.get("hash") if isinstance(value.get("hash"), str) else "",
    )


# --- checkpoints -------------------------------------------------------------------------------


def parse_checkpoints(data: bytes, findings: list[Finding]) -> list[Checkpoint]:
    """The checkpoints of ``checkpoints.jsonl``; a bad line is an error (and is skipped)."""
    out: list[Checkpoint] = []
    seen: set[int] = set()
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            checkpoint = Checkpoint.from_json(json.loads(line))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            findings.append(
                Finding("error", f"{CHECKPOINTS_FILE} line {number} is not a checkpoint: {exc}")
            )
            continue
        if checkpoint.seq in seen:
            findings.append(
                Finding(
                    "error",
                    f"{CHECKPOINTS_FILE} has two checkpoints at seq {checkpoint.seq}",
                    checkpoint.seq,
                )
            )
            continue
        seen.add(checkpoint.seq)
        out.append(checkpoint)
    return sorted(out, key=lambda c: c.seq)


def truncation_problems(
    checkpoints: Sequence[Checkpoint],
    trusted: Mapping[str, x509.Certificate],
    last_seq: int | None,
    declared_last: int | None,
    bounded: bool,
) -> list[Finding]:
    """Checkpoints beyond the last event mean events were cut off the end — except the single
    one first after the range of an export with a requested end (``bounded``), which is
    included to show the range was not the chain's end. Each must still be validly signed.
    """
    if last_seq is None:
        return []
    beyond = [c for c in checkpoints if c.seq > last_seq]
    out: list[Finding] = []
    for index, checkpoint in enumerate(beyond):
        bad = checkpoint_problem(checkpoint, trusted)
        if bad is not None:
            out.append(Finding("error", bad, checkpoint.seq))
            continue
        after_range = bounded and declared_last is not None and checkpoint.seq > declared_last
        if index == 0 and after_range:
            continue  # signed; nothing in the bundle to compare it with
        if not any(f.seq == last_seq + 1 for f in out):
            out.append(
                Finding(
                    "error",
                    f"truncated: events after seq {last_seq} are missing, but a checkpoint of "
                    f"{checkpoint.time} signed the chain at seq {checkpoint.seq}",
                    last_seq + 1,
                )
            )
    return out


def coverage_warnings(
    report: VerifyReport,
    first_seq: int | None,
    last_seq: int | None,
    checkpoints: Sequence[Checkpoint],
) -> list[Finding]:
    """Events no checkpoint signs (their own ``audit.checkpoint`` events count as covered)."""
    if first_seq is None or last_seq is None:
        return []
    out: list[Finding] = []
    before = [c for c in checkpoints if c.seq < first_seq - 1]
    if before:
        out.append(
            Finding(
                "warning",
                f"{len(before)} checkpoint(s) before the exported range were not checked",
            )
        )
    signed = report.last_checkpoint_seq
    if signed is None:
        out.append(
            Finding(
                "warning",
                f"no checkpoint covers events {first_seq} to {last_seq}: they are consistent, "
                "but nothing signed shows they are the CA's own (compare the head hash with a "
                "witness or a later export)",
            )
        )
        return out
    first_uncovered = max(signed + 2, first_seq)
    if first_uncovered <= last_seq:
        out.append(
            Finding(
                "warning",
                f"events {first_uncovered} to {last_seq} ({last_seq - first_uncovered + 1}) are "
                f"not covered by a checkpoint (the last signs seq {signed} at "
                f"{report.last_checkpoint_time})",
            )
        )
    return out


# --- certificates ------------------------------------------------------------------------------


def _parse_pem(data: bytes, findings: list[Finding]) -> list[x509.Certificate]:
    if not data.strip():
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        findings.append(Finding("error", f"{CHAIN_FILE} is not PEM certificates: {exc}"))
        return []


def serial_text(cert: x509.Certificate) -> str:
    """A certificate's serial as checkpoints name it (lowercase hex, no leading zeros)."""
    return format(cert.serial_number, "x")


def trusted_audit_certificates(
    certs: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    findings: list[Finding],
) -> tuple[dict[str, x509.Certificate], dict[str, list[x509.Certificate]]]:
    """The audit certificates among ``certs`` that chain to ``roots``: serial -> certificate,
    and serial -> its path (audit certificate first, root last). Others are reported."""
    trusted: dict[str, x509.Certificate] = {}
    paths: dict[str, list[x509.Certificate]] = {}
    for cert in certs:
        if not _is_audit_certificate(cert):
            continue
        serial = serial_text(cert)
        try:
            path = audit_path(cert, certs, roots)
        except PathError as exc:
            findings.append(Finding("error", f"audit certificate {serial} is not trusted: {exc}"))
            continue
        if serial in trusted:
            findings.append(Finding("error", f"two audit certificates with serial {serial}"))
            continue
        trusted[serial] = cert
        paths[serial] = path
    if not trusted and not any(f.what.startswith("audit certificate") for f in findings):
        findings.append(Finding("warning", f"{CHAIN_FILE} holds no audit certificate"))
    return trusted, paths


class PathError(Exception):
    """The certificate does not chain to the root (the message says where and why)."""


def _is_audit_certificate(cert: x509.Certificate) -> bool:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return DOCUMENT_SIGNING in eku


def audit_path(
    leaf: x509.Certificate,
    pool: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
) -> list[x509.Certificate]:
    """The path from the audit certificate ``leaf`` to one of ``roots`` through ``pool``.

    Checked: the leaf is an end-entity audit certificate (CA:FALSE, digitalSignature,
    id-kp-documentSigning); every signature on the path; every issuer a CA allowed to sign
    certificates, within its path length. Validity in time is checked per checkpoint
    (:func:`path_validity_problems`). Raises :class:`PathError`.
    """
    _check_leaf(leaf)
    path = [leaf]
    current = leaf
    for _ in range(MAX_PATH):
        anchor = next((r for r in roots if _signed_by(current, r)), None)
        if anchor is not None:
            path.append(anchor)
            _check_issuers(path)
            return path
        issuer = next(
            (
                c
                for c in pool
                if c not in path and c.subject == current.issuer and _signed_by(current, c)
            ),
            None,
        )
        if issuer is None:
            raise PathError(
                f"no issuer of {current.subject.rfc4514_string()!r} among the given root and "
                f"the CAs in {CHAIN_FILE}: it does not chain to the given root"
            )
        path.append(issuer)
        current = issuer
    raise PathError(f"no path to the root within {MAX_PATH} certificates")


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_leaf(leaf: x509.Certificate) -> None:
    exts = leaf.extensions
    try:
        if exts.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise PathError("the audit certificate is a CA certificate")
    except x509.ExtensionNotFound:
        pass
    try:
        if not exts.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            raise PathError("the audit certificate's keyUsage lacks digitalSignature")
    except x509.ExtensionNotFound:
        pass
    if not _is_audit_certificate(leaf):
        raise PathError("the certificate lacks extKeyUsage id-kp-documentSigning")


def _check_issuers(path: Sequence[x509.Certificate]) -> None:
    """Every issuer on ``path`` (index 1 on) is a CA that may sign certificates this deep."""
    for depth, issuer in enumerate(path[1:], start=1):
        name = issuer.subject.rfc4514_string()
        try:
            constraints = issuer.extensions.get_extension_for_oid(
                ExtensionOID.BASIC_CONSTRAINTS
            ).value
        except x509.ExtensionNotFound:
            raise PathError(f"{name!r} has no basicConstraints: not a CA") from None
        assert isinstance(constraints, x509.BasicConstraints)
        if not constraints.ca:
            raise PathError(f"{name!r} is not a CA (basicConstraints CA:FALSE)")
        below = depth - 1  # CA certificates between this issuer and the audit certificate
        if constraints.path_length is not None and below > constraints.path_length:
            raise PathError(
                f"{name!r} allows {constraints.path_length} CA(s) below it, not {below}"
            )
        try:
            usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            continue
        if not usage.key_cert_sign:
            raise PathError(f"{name!r} may not sign certificates (keyUsage lacks keyCertSign)")


def path_validity_problems(
    checkpoints: Sequence[Checkpoint],
    trusted: Mapping[str, x509.Certificate],
    paths: Mapping[str, Sequence[x509.Certificate]],
) -> list[Finding]:
    """Each checkpoint's time within the validity of every CA certificate on its path (the
    audit certificate's own validity is part of the chain check)."""
    out: list[Finding] = []
    for checkpoint in checkpoints:
        path = paths.get(checkpoint.key_serial)
        if path is None:
            continue  # untrusted or unknown: the chain check reports it at this seq
        try:
            signed_at = datetime.fromisoformat(checkpoint.time)
        except ValueError:
            continue  # reported by the chain check
        for cert in path[1:]:
            if not cert.not_valid_before_utc <= signed_at <= cert.not_valid_after_utc:
                out.append(
                    Finding(
                        "error",
                        f"checkpoint at seq {checkpoint.seq}: signed at {checkpoint.time}, "
                        f"outside the validity of CA {cert.subject.rfc4514_string()!r}",
                        checkpoint.seq,
                    )
                )
                break
    return out


def load_roots(data: bytes) -> list[x509.Certificate]:
    """The trusted root certificate(s) from PEM: self-signed CA certificates only (as
    ``openssl verify -CAfile`` trusts them); ValueError otherwise."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError("not a PEM certificate") from None
    roots = [c for c in certs if c.subject == c.issuer and _signed_by(c, c)]
    if not roots:
        raise ValueError("holds no self-signed root certificate")
    return roots


# --- helpers -----------------------------------------------------------------------------------


def _int_or_none(value: Any) -> int | None:
    return value if type(value) is int else None


def _dedupe(findings: Sequence[Finding]) -> list[Finding]:
    seen: set[tuple[str, str, int | None]] = set()
    out: list[Finding] = []
    for f in findings:
        key = (f.severity, f.what, f.seq)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out
