"""What the dashboard says about the audit chain: a quick check of the newest events against
the last checkpoint, the checkpoint's age, and the full verification behind the button."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from ca.audit import verify_chain
from ca.audit_verify import verify_live
from ca.authority import Authority
from ca.errors import AuditChainBroken
from ca.store.ui import CheckpointRow, audit_head, event_at, latest_checkpoint

#: The quick check walks at most this many of the newest events.
QUICK_WINDOW = 2000


@dataclass(frozen=True)
class ChainStatus:
    """The outcome of a chain check, as the pages show it."""

    ok: bool
    summary: str
    head_seq: int = 0
    first_bad_seq: int | None = None
    problem: str | None = None
    events_verified: int = 0
    checkpoints_verified: int | None = None  # None: this check does not verify signatures
    seconds: float = 0.0
    warnings: tuple[str, ...] = ()


def quick_check(auth: Authority, window: int = QUICK_WINDOW) -> ChainStatus:
    """Check that the newest events chain onto each other and onto the last checkpoint.

    From the last checkpoint's event (if no more than ``window`` events ago; else the newest
    ``window`` events) to the head: seq, prev_hash and hash of each, and that the event at the
    checkpoint still has the hash that was signed. Signatures and older events are the full
    verification's job.
    """
    started = time.monotonic()
    head = audit_head(auth.db)
    if head is None:
        return ChainStatus(True, "the audit chain is empty")
    head_seq = head[0]
    checkpoint = latest_checkpoint(auth.db)
    use_checkpoint = checkpoint is not None and head_seq - checkpoint.seq <= window
    start_seq = checkpoint.seq if use_checkpoint and checkpoint else max(1, head_seq - window)
    anchor = event_at(auth.db, start_seq)
    if anchor is None:
        return ChainStatus(
            False, f"event {start_seq} is missing", head_seq, start_seq, "missing event"
        )
    if use_checkpoint and checkpoint and anchor.hash != checkpoint.hash:
        return ChainStatus(
            False,
            f"event {start_seq} no longer has the hash its signed checkpoint states",
            head_seq,
            start_seq,
            "hash differs from the signed checkpoint",
        )
    try:
        count = verify_chain(
            auth.db.audit_entries(after_seq=start_seq),
            start=(start_seq, bytes.fromhex(anchor.hash)),
        )
    except (AuditChainBroken, ValueError) as exc:
        seq = getattr(exc, "seq", start_seq)
        reason = getattr(exc, "reason", str(exc))
        return ChainStatus(False, str(exc), head_seq, seq, reason)
    basis = f"from the checkpoint at seq {start_seq}" if use_checkpoint else f"from seq {start_seq}"
    return ChainStatus(
        True,
        f"quick check OK: {count + 1} newest events ({basis} to {head_seq}) link up",
        head_seq,
        events_verified=count + 1,
        seconds=time.monotonic() - started,
    )


def full_verification(auth: Authority) -> ChainStatus:
    """Verify the whole chain: every event, every checkpoint signature, and the witness file
    if one is configured (:func:`ca.audit_verify.verify_live`, as ``hsmca audit verify``)."""
    started = time.monotonic()
    report = verify_live(auth)
    if report.ok:
        plural = "" if report.checkpoints == 1 else "s"
        summary = f"audit chain OK: {report.events} events, {report.checkpoints} checkpoint{plural}"
        if report.unsigned_events:
            summary += f" ({report.unsigned_events} events after the last checkpoint)"
    else:
        summary = f"audit chain broken at seq {report.first_bad_seq}: {report.problem}"
    return ChainStatus(
        ok=report.ok,
        summary=summary,
        head_seq=report.head_seq,
        first_bad_seq=report.first_bad_seq,
        problem=report.problem or None,
        events_verified=report.events,
        checkpoints_verified=report.checkpoints,
        seconds=time.monotonic() - started,
        warnings=report.warnings,
    )


@dataclass(frozen=True)
class CheckpointStatus:
    """The last checkpoint and how far behind the head it is."""

    checkpoint: CheckpointRow | None
    age_seconds: int | None
    events_since: int


def checkpoint_status(auth: Authority, now: datetime) -> CheckpointStatus:
    """The newest checkpoint, its age and the number of events after it."""
    checkpoint = latest_checkpoint(auth.db)
    head = audit_head(auth.db)
    head_seq = head[0] if head else 0
    if checkpoint is None:
        return CheckpointStatus(None, None, head_seq)
    try:
        signed_at = datetime.fromisoformat(checkpoint.time)
        age: int | None = max(0, int((now - signed_at).total_seconds()))
    except (TypeError, ValueError):
        age = None
    return CheckpointStatus(checkpoint, age, max(0, head_seq - checkpoint.seq))


def duration_text(seconds: int | None) -> str:
    """``3 d 4 h``, ``5 h 12 min``, ``7 min``, ``12 s`` (for ages)."""
    if seconds is None:
        return "unknown"
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if days:
        return f"{days} d {hours % 24} h"
    if hours:
        return f"{hours} h {minutes % 60} min"
    return f"{minutes} min"
