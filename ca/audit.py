"""The audit chain (pure): canonical encoding, chaining and verification.

Each event is ``{seq, time, actor, action, subject, details}``. Its hash is
``SHA-256(prev_hash || canonical_json(event))`` where canonical JSON has sorted keys, no
insignificant whitespace and UTF-8 text; the first event's ``prev_hash`` is 32 zero bytes and
``seq`` counts 1, 2, 3, … without gaps. Storage appends events in the transaction of the change
they record (``ca.store.db.Database.append_audit``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ca.errors import AuditChainBroken

GENESIS_HASH = bytes(32)


def rfc3339(moment: datetime) -> str:
    """RFC 3339 UTC text with microseconds and ``Z`` (the form that is hashed)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN; the bytes that are hashed."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


@dataclass(frozen=True)
class AuditEntry:
    """An event with its place in the chain."""

    seq: int
    time: str
    actor: str
    action: str
    subject: str
    details: Mapping[str, Any]
    prev_hash: bytes
    hash: bytes

    def event(self) -> dict[str, Any]:
        """The hashed part of the entry."""
        return event_dict(self.seq, self.time, self.actor, self.action, self.subject, self.details)


def event_dict(
    seq: int, time: str, actor: str, action: str, subject: str, details: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "seq": seq,
        "time": time,
        "actor": actor,
        "action": action,
        "subject": subject,
        "details": dict(details),
    }


def chain_hash(prev_hash: bytes, event: Mapping[str, Any]) -> bytes:
    """``SHA-256(prev_hash || canonical_json(event))``."""
    return hashlib.sha256(prev_hash + canonical_json(event)).digest()


def next_entry(
    prev: tuple[int, bytes] | None,
    time: str,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any],
) -> AuditEntry:
    """The entry that follows ``prev`` (``(seq, hash)`` of the head, or None for the first)."""
    seq, prev_hash = (prev[0] + 1, prev[1]) if prev else (1, GENESIS_HASH)
    # Round-trip details through canonical JSON so what is stored is exactly what was hashed.
    details = json.loads(canonical_json(dict(details)))
    event = event_dict(seq, time, actor, action, subject, details)
    return AuditEntry(
        seq, time, actor, action, subject, details, prev_hash, chain_hash(prev_hash, event)
    )


def verify_chain(entries: Iterable[AuditEntry], start: tuple[int, bytes] | None = None) -> int:
    """Walk ``entries`` in order; return how many verified or raise AuditChainBroken at the first bad one.

    ``start`` is the ``(seq, hash)`` the walk continues from (None: the chain's beginning).
    """
    expected_seq, prev_hash = (start[0] + 1, start[1]) if start else (1, GENESIS_HASH)
    count = 0
    for entry in entries:
        if entry.seq != expected_seq:
            raise AuditChainBroken(
                expected_seq,
                f"expected seq {expected_seq}, found {entry.seq} (missing or reordered)",
            )
        if entry.prev_hash != prev_hash:
            raise AuditChainBroken(entry.seq, "prev_hash does not match the previous event's hash")
        if chain_hash(prev_hash, entry.event()) != entry.hash:
            raise AuditChainBroken(entry.seq, "hash does not match the event (edited)")
        prev_hash = entry.hash
        expected_seq += 1
        count += 1
    return count
