"""Verifying the audit chain with its signed checkpoints and witness (live, or any other source).

:func:`verify_entries_and_checkpoints` is pure: it takes the entries (any iterable in seq order),
the checkpoints, and the audit certificates the caller trusts, and returns a :class:`VerifyReport`
naming the first bad seq and what is wrong. :func:`check_witness` compares a witness file with
the checkpoints. :func:`verify_live` reads them from the database (and the HSM, to anchor the
audit certificates); an offline bundle verifier reuses the pure parts.

The rules, in the order a problem is looked for (the lowest seq is reported):

1. The chain itself (:func:`ca.audit.verify_chain`): seq 1, 2, 3, … without gaps, each
   ``prev_hash`` the previous hash, each hash recomputed — an edited, deleted, inserted or
   reordered event is found and located here.
2. Every checkpoint must be signed by a trusted audit certificate (by ``key_serial``) with its
   algorithm, at a time within that certificate's validity — a checkpoint not signed by the audit
   key fails at its own seq.
3. Its hash must be the chain's hash at its seq — a chain rewritten with recomputed hashes fails
   here; the rewrite lies after the previous good checkpoint, the reported first bad seq.
4. Event ``C + 1`` must be the ``audit.checkpoint`` event of the checkpoint at ``C`` (same seq and
   hash), and every ``audit.checkpoint`` event must have its checkpoint — a deleted or forged
   checkpoint row fails here.
5. A checkpoint whose event ``C + 1`` lies beyond the chain's head means events were deleted
   from the end (truncation) — as does a witnessed checkpoint beyond the head (:func:`check_witness`).

Events after the newest checkpoint are covered by no signature yet; only the witness (and the
next checkpoint) protect them. The report says how many there are.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Generic, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ca.audit import AuditEntry, AuditRow, hex_or_marker, json_or_marker, verify_chain, verify_rows
from ca.audit_key import audit_certificate_rows
from ca.authority import Authority
from ca.checkpoint import Checkpoint, algorithm_of, signature_valid
from ca.errors import AuditChainBroken, HsmKeyNotFound, HsmUnavailable, KeyMismatch
from ca.store.db import CaRow
from ca.witness import WitnessFile, read_witness_file

CHECKPOINT_ACTION = "audit.checkpoint"
BATCH = 5000

Progress = Callable[[int, int], None]
L = TypeVar("L")


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of a verification."""

    ok: bool
    events: int  # events verified (before the first problem)
    checkpoints: int  # checkpoints verified
    head_seq: int  # the last event verified
    last_checkpoint_seq: int | None = None
    last_checkpoint_time: str | None = None
    witnessed: int = 0  # witness file lines that matched a stored checkpoint
    first_bad_seq: int | None = None
    problem: str = ""
    warnings: tuple[str, ...] = ()

    @property
    def unsigned_events(self) -> int:
        """Events after the newest verified checkpoint (its own event not counted)."""
        if self.last_checkpoint_seq is None:
            return self.head_seq
        return max(0, self.head_seq - self.last_checkpoint_seq - 1)


@dataclass(frozen=True)
class _Problem:
    at: int  # where it is detected (orders problems)
    first_bad: int | None
    text: str


def checkpoint_problem(
    checkpoint: Checkpoint, audit_certs: Mapping[str, x509.Certificate]
) -> str | None:
    """Why ``checkpoint`` is not signed by a trusted audit key (None: it is)."""
    cert = audit_certs.get(checkpoint.key_serial)
    if cert is None:
        return (
            f"checkpoint at seq {checkpoint.seq} names audit certificate {checkpoint.key_serial}, "
            "which is not a trusted audit certificate (not signed by the audit key)"
        )
    if checkpoint.algorithm != algorithm_of(cert) or not signature_valid(checkpoint, cert):
        return (
            f"checkpoint at seq {checkpoint.seq}: the signature does not verify with audit "
            f"certificate {checkpoint.key_serial} (not signed by the audit key)"
        )
    try:
        signed_at = datetime.fromisoformat(checkpoint.time.replace("Z", "+00:00"))
    except ValueError:
        return f"checkpoint at seq {checkpoint.seq}: time {checkpoint.time!r} is not RFC 3339"
    if not cert.not_valid_before_utc <= signed_at <= cert.not_valid_after_utc:
        return (
            f"checkpoint at seq {checkpoint.seq}: signed at {checkpoint.time}, outside the "
            f"validity of audit certificate {checkpoint.key_serial}"
        )
    return None


@dataclass(frozen=True)
class _Links(Generic[L]):
    """How to read one kind of chain link: :class:`AuditEntry`, or a raw stored :data:`AuditRow`."""

    verify: Callable[[Sequence[L], tuple[int, bytes] | None], int]
    seq: Callable[[L], int]
    hash: Callable[[L], bytes]
    action: Callable[[L], str]
    details: Callable[[L], Mapping[str, Any]]


_ENTRIES: _Links[AuditEntry] = _Links(
    verify_chain, lambda e: e.seq, lambda e: e.hash, lambda e: e.action, lambda e: e.details
)
_ROWS: _Links[AuditRow] = _Links(
    verify_rows,
    lambda r: int(r[0]),
    lambda r: hex_or_marker(r[7]),
    lambda r: r[3],
    lambda r: json_or_marker(r[5]),
)


def verify_entries_and_checkpoints(
    entries: Iterable[AuditEntry],
    checkpoints: Iterable[Checkpoint],
    audit_certs: Mapping[str, x509.Certificate],
    start: tuple[int, bytes] | None = None,
    progress: Progress | None = None,
    total: int = 0,
    head: int | None = None,
) -> VerifyReport:
    """Verify ``entries`` (seq order) and the ``checkpoints`` that fall in their range.

    ``audit_certs`` (serial -> certificate) are the audit certificates the caller trusts (e.g.
    chained to a root it was given). ``start`` is the ``(seq, hash)`` the entries continue from
    (None: seq 1); the checkpoint at that seq, if any, must be among ``checkpoints``. ``head`` is
    the seq of the chain's last event when the entries are the whole rest of the chain (read
    after the checkpoints, so a concurrent checkpoint is never mistaken for truncation); None
    for an excerpt, whose later checkpoints are then ignored. ``progress(done, total)`` is
    called after each batch.
    """
    return _verify(_ENTRIES, entries, checkpoints, audit_certs, start, progress, total, head)


def verify_rows_and_checkpoints(
    rows: Iterable[AuditRow],
    checkpoints: Iterable[Checkpoint],
    audit_certs: Mapping[str, x509.Certificate],
    start: tuple[int, bytes] | None = None,
    progress: Progress | None = None,
    total: int = 0,
    head: int | None = None,
) -> VerifyReport:
    """:func:`verify_entries_and_checkpoints` over raw stored rows (:func:`ca.audit.verify_rows`,
    no JSON parsed per event: the fast path for long chains)."""
    return _verify(_ROWS, rows, checkpoints, audit_certs, start, progress, total, head)


def _verify(
    links: _Links[L],
    items: Iterable[L],
    checkpoints: Iterable[Checkpoint],
    audit_certs: Mapping[str, x509.Certificate],
    start: tuple[int, bytes] | None,
    progress: Progress | None,
    total: int,
    head: int | None,
) -> VerifyReport:
    floor = start[0] if start else 0
    by_seq = {c.seq: c for c in checkpoints}
    ordered = sorted(c for c in by_seq if c > floor)
    state = _Walk(by_seq, audit_certs, floor)
    if start is not None and floor in by_seq:
        state.check_checkpoint(by_seq[floor], start[1].hex())
    prev = start
    done = 0
    position = 0  # index into ``ordered`` of the next checkpoint to check
    for chunk in _batches(items, BATCH):
        expected = (prev[0] if prev else 0) + 1
        broken: AuditChainBroken | None = None
        try:
            links.verify(chunk, prev)
        except AuditChainBroken as exc:
            broken = exc
        good = chunk if broken is None else chunk[: broken.seq - expected]
        if good:
            last_seq = links.seq(good[-1])
            while position < len(ordered) and ordered[position] <= last_seq:
                seq = ordered[position]
                state.check_checkpoint(by_seq[seq], links.hash(good[seq - expected]).hex())
                position += 1
            state.check_events(links, good, expected)
            done += len(good)
            prev = (last_seq, links.hash(good[-1]))
        if broken is not None:
            state.problems.append(_Problem(broken.seq, broken.seq, broken.reason))
        if state.problems:
            return state.report(done, prev[0] if prev else floor)
        if progress is not None:
            progress(done, max(total, done))
    last = prev[0] if prev else floor
    for seq in ordered[position:]:
        state.check_beyond(by_seq[seq], last, head)
    state.check_pending_events(head)
    return state.report(done, last)


class _Walk:
    """The checkpoint rules of one walk (see the module docstring), collecting problems."""

    def __init__(
        self,
        by_seq: Mapping[int, Checkpoint],
        audit_certs: Mapping[str, x509.Certificate],
        floor: int,
    ) -> None:
        self.by_seq = by_seq
        self.certs = audit_certs
        self.floor = floor
        self.problems: list[_Problem] = []
        self.verified = 0
        self.last_good: Checkpoint | None = None
        self.awaiting: dict[int, Checkpoint] = {}  # seq C + 1 -> the checkpoint at C

    def check_checkpoint(self, checkpoint: Checkpoint, chain_hash_hex: str) -> None:
        bad_signature = checkpoint_problem(checkpoint, self.certs)
        if bad_signature is not None:
            self.problems.append(_Problem(checkpoint.seq, checkpoint.seq, bad_signature))
            return
        if checkpoint.hash != chain_hash_hex:
            since = self.last_good.seq if self.last_good else self.floor
            self.problems.append(
                _Problem(
                    checkpoint.seq,
                    since + 1,
                    f"the chain's hash at seq {checkpoint.seq} is not the one signed by the "
                    f"checkpoint of {checkpoint.time}: events {since + 1}..{checkpoint.seq} were "
                    "rewritten (the chain was recomputed after them)",
                )
            )
            return
        self.verified += 1
        self.last_good = checkpoint
        self.awaiting[checkpoint.seq + 1] = checkpoint

    def check_events(self, links: _Links[L], good: Sequence[L], expected: int) -> None:
        """Rule 4 over a verified run of links starting at seq ``expected``."""
        last_seq = expected + len(good) - 1
        for seq in [s for s in self.awaiting if s <= last_seq]:
            checkpoint = self.awaiting.pop(seq)
            link = good[seq - expected]
            if not _records(links.action(link), links.details(link), checkpoint):
                self.problems.append(
                    _Problem(
                        seq,
                        seq,
                        f"event {seq} is not the audit.checkpoint event of the checkpoint at "
                        f"seq {checkpoint.seq} (a checkpoint row was forged or the event replaced)",
                    )
                )
        action = links.action
        for link in [x for x in good if action(x) == CHECKPOINT_ACTION]:
            seq, details = links.seq(link), links.details(link)
            recorded = details.get("seq")
            stored = self.by_seq.get(recorded) if isinstance(recorded, int) else None
            if stored is None or recorded != seq - 1 or not _records(action(link), details, stored):
                self.problems.append(
                    _Problem(
                        seq,
                        recorded if isinstance(recorded, int) else seq,
                        f"event {seq} records a checkpoint at seq {recorded} that is missing "
                        "or differs (a checkpoint row was deleted or edited)",
                    )
                )

    def check_beyond(self, checkpoint: Checkpoint, last: int, head: int | None) -> None:
        """A checkpoint after the last entry walked: truncation if the chain's head is before it."""
        if head is None or checkpoint.seq + 1 <= head:
            return  # an excerpt, or a checkpoint made while we walked
        bad_signature = checkpoint_problem(checkpoint, self.certs)
        if bad_signature is not None:
            self.problems.append(_Problem(checkpoint.seq, checkpoint.seq, bad_signature))
            return
        self.problems.append(
            _Problem(
                last + 1,
                last + 1,
                f"events from seq {last + 1} were deleted (truncation): the chain ends at seq "
                f"{last} but a checkpoint of {checkpoint.time} signed seq {checkpoint.seq}",
            )
        )

    def check_pending_events(self, head: int | None) -> None:
        """The last good checkpoint's own event must exist when the chain's head is known."""
        for seq, checkpoint in self.awaiting.items():
            if head is not None and seq > head:
                self.problems.append(
                    _Problem(
                        seq,
                        seq,
                        f"events from seq {seq} were deleted (truncation): the chain ends at the "
                        f"checkpoint of seq {checkpoint.seq}, whose audit.checkpoint event "
                        f"{seq} is missing",
                    )
                )

    def report(self, done: int, last: int) -> VerifyReport:
        good = self.last_good
        base = VerifyReport(
            ok=not self.problems,
            events=done,
            checkpoints=self.verified,
            head_seq=last,
            last_checkpoint_seq=good.seq if good else None,
            last_checkpoint_time=good.time if good else None,
        )
        if not self.problems:
            return base
        first = min(self.problems, key=lambda p: p.at)
        return replace(base, first_bad_seq=first.first_bad, problem=first.text)


def _records(action: str, details: Mapping[str, Any], checkpoint: Checkpoint) -> bool:
    return (
        action == CHECKPOINT_ACTION
        and details.get("seq") == checkpoint.seq
        and details.get("hash") == checkpoint.hash
        and details.get("time") == checkpoint.time
    )


def _batches(items: Iterable[L], size: int) -> Iterator[list[L]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def check_witness(
    report: VerifyReport, witnessed: WitnessFile, stored: Mapping[int, Checkpoint], head: int
) -> VerifyReport:
    """Compare a witness file with the stored checkpoints and the chain's ``head`` seq.

    Every witnessed checkpoint must be stored, identical; one beyond the head means the database
    was rolled back or truncated. A line that is not a checkpoint (e.g. a write cut short by a
    crash) is a warning.
    """
    problems: list[_Problem] = []
    warnings: list[str] = []
    matched = 0
    for line in witnessed.lines:
        checkpoint = line.checkpoint
        if checkpoint is None:
            # Proves nothing about the chain (e.g. the rest of a write cut short by a crash).
            warnings.append(f"witness file line {line.number} is not a checkpoint: {line.error}")
            continue
        if checkpoint.seq >= head:
            problems.append(
                _Problem(
                    min(checkpoint.seq, head + 1),
                    head + 1,
                    f"the database was rolled back or truncated: the witness (line {line.number}) "
                    f"has a checkpoint of {checkpoint.time} at seq {checkpoint.seq}, but the "
                    f"chain ends at seq {head}",
                )
            )
            continue
        mine = stored.get(checkpoint.seq)
        if mine is None:
            problems.append(
                _Problem(
                    checkpoint.seq,
                    checkpoint.seq,
                    f"the checkpoint at seq {checkpoint.seq} (witness file line {line.number}) "
                    "is missing from the database",
                )
            )
        elif mine != checkpoint:
            problems.append(
                _Problem(
                    checkpoint.seq,
                    checkpoint.seq,
                    f"the checkpoint at seq {checkpoint.seq} differs from the witness file "
                    f"(line {line.number})",
                )
            )
        else:
            matched += 1
    merged = replace(report, witnessed=matched, warnings=report.warnings + tuple(warnings))
    if not problems or not report.ok:
        return merged
    first = min(problems, key=lambda p: p.at)
    return replace(merged, ok=False, first_bad_seq=first.first_bad, problem=first.text)


# --- the live database ------------------------------------------------------------------------


def trusted_audit_certs(auth: Authority) -> tuple[dict[str, x509.Certificate], list[str]]:
    """The audit certificates of the inventory that chain to the CA hierarchy: serial -> cert.

    Each must be signed by a CA stored in the database whose chain verifies up to the root, and
    that CA's certificate must match its key in the HSM (when the CA is active). The HSM is the
    anchor: a certificate or CA hierarchy forged in the database alone is not trusted. Returns
    the trusted certificates and warnings about the others.
    """
    cas = {c.id: c for c in auth.db.list_cas()}
    trusted: dict[str, x509.Certificate] = {}
    warnings: list[str] = []
    anchored: dict[int, str | None] = {}  # CA id -> why it is not trusted (None: trusted)
    for row in audit_certificate_rows(auth.db):
        ca = cas.get(row.issuer_id)
        if ca is None:
            warnings.append(f"audit certificate {row.serial}: its issuing CA is not stored")
            continue
        if ca.id not in anchored:
            anchored[ca.id] = _ca_untrusted(auth, ca, cas, warnings)
        why = anchored[ca.id]
        if why is None:
            cert = x509.load_der_x509_certificate(row.der)
            try:
                cert.verify_directly_issued_by(x509.load_der_x509_certificate(ca.certificate_der))
            except (ValueError, TypeError, InvalidSignature):
                why = f"not signed by CA {ca.name!r}"
            else:
                trusted[row.serial] = cert
                continue
        warnings.append(f"audit certificate {row.serial} is not trusted: {why}")
    return trusted, warnings


def _ca_untrusted(
    auth: Authority, ca: CaRow, cas: Mapping[int, CaRow], warnings: list[str]
) -> str | None:
    """Why CA ``ca`` cannot anchor audit certificates (None: it can).

    Without the HSM (unreachable, or the CA's key gone from the token) the CA certificates in
    the database are the only anchor: that is said in ``warnings``, not treated as a failure.
    """
    cert = x509.load_der_x509_certificate(ca.certificate_der)
    node, node_cert = ca, cert
    for _ in range(len(cas) + 1):
        parent = cas.get(node.parent_id) if node.parent_id is not None else node
        if parent is None:
            return f"CA {node.name!r} has no stored parent"
        parent_cert = x509.load_der_x509_certificate(parent.certificate_der)
        try:
            node_cert.verify_directly_issued_by(parent_cert)
        except (ValueError, TypeError, InvalidSignature):
            return f"CA {node.name!r} is not signed by {parent.name!r}"
        if parent is node:
            break
        node, node_cert = parent, parent_cert
    if ca.status == "active":
        try:
            auth.issuer(ca.name)  # loads the key from the HSM and compares it with the certificate
        except KeyMismatch:
            return f"the certificate of CA {ca.name!r} does not match its key in the HSM"
        except (HsmUnavailable, HsmKeyNotFound) as exc:
            warnings.append(
                f"CA {ca.name!r} not checked against the HSM ({exc}): audit certificates are "
                "anchored in the CA certificates of the database only"
            )
    return None


def verify_live(auth: Authority, progress: Progress | None = None) -> VerifyReport:
    """Verify the database's chain, checkpoints and (if configured) witness file.

    Safe while the CA runs: the walk stops at the head read first; checkpoints and the witness
    file are read before the head that truncation is judged against, so nothing signed meanwhile
    counts as a problem.
    """
    from ca.checkpoints import head_seq, stored_checkpoints

    certs, warnings = trusted_audit_certs(auth)
    walk_to = head_seq(auth.db)
    cfg = auth.config.audit
    witness_path = auth.config.path(cfg.witness_file) if cfg.witness_file else None
    witnessed = read_witness_file(witness_path) if witness_path else None
    checkpoints = stored_checkpoints(auth.db)
    head = head_seq(auth.db)
    rows = itertools.takewhile(lambda r: r[0] <= walk_to, auth.db.audit_rows())
    report = verify_rows_and_checkpoints(
        rows, checkpoints, certs, progress=progress, total=walk_to, head=head
    )
    if witness_path is not None and witnessed is not None:
        if not witnessed.lines and not witness_path.exists():
            warnings.append(f"witness file {witness_path} does not exist yet")
        report = check_witness(report, witnessed, {c.seq: c for c in checkpoints}, head)
    if not checkpoints:
        warnings.append(
            "no checkpoints: truncation and a rewritten chain cannot be detected "
            "(hsmca audit key create, then hsmca audit checkpoint)"
        )
    return replace(report, warnings=tuple(warnings) + report.warnings)
