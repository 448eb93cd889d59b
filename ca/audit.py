"""The audit chain (pure): canonical encoding, chaining and verification.

Each event is ``{seq, time, actor, action, subject, details}``. Its hash is
``SHA-256(prev_hash || canonical_json(event))`` where canonical JSON has sorted keys, no
insignificant whitespace and UTF-8 text; the first event's ``prev_hash`` is 32 zero bytes and
``seq`` counts 1, 2, 3, … without gaps. Storage appends events in the transaction of the change
they record (``ca.store.db.Database.append_audit``).

Verification has a fast path. ``details`` is stored as the canonical JSON text that was hashed,
so the hashed bytes of a stored event can be assembled from its columns by string formatting
(:func:`event_bytes`; keys in sorted order, strings escaped by ``json``'s own
``encode_basestring``), with no JSON parsed or encoded per event. A row whose bytes do not match
that way is re-checked the reference way (:func:`chain_hash` over the parsed event), so both ways
give the same verdict on every stored chain with one exception: a row whose ``details`` text is
*not* canonical and whose hash was computed over that very text is accepted by the fast path
and refused by the reference. Producing such a row means recomputing hashes, which rewrites the
chain from that row on; the signed checkpoints are what detect a rewritten chain, and they do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any, NoReturn

from ca.errors import AuditChainBroken

GENESIS_HASH = bytes(32)

#: One stored event as the database returns it:
#: ``(seq, time, actor, action, subject, details_text, prev_hash_hex, hash_hex)``.
AuditRow = tuple[int, str, str, str, str, str, str, str]


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
    stored = StoredDetails(canonical_json(dict(details)).decode("utf-8"))
    digest = hashlib.sha256(
        prev_hash + event_bytes(seq, time, actor, action, subject, stored.text)
    ).digest()
    return AuditEntry(seq, time, actor, action, subject, stored, prev_hash, digest)


def verify_chain(entries: Iterable[AuditEntry], start: tuple[int, bytes] | None = None) -> int:
    """Walk ``entries`` in order; return how many verified or raise AuditChainBroken at the first bad one.

    ``start`` is the ``(seq, hash)`` the walk continues from (None: the chain's beginning).
    Entries read from the database (details as :class:`StoredDetails`) are hashed from their
    stored text, without re-encoding; the verdict is the same as :func:`chain_hash` gives.
    """
    expected_seq, prev_hash = (start[0] + 1, start[1]) if start else (1, GENESIS_HASH)
    count = 0
    for entry in entries:
        if entry.seq != expected_seq:
            _missing(expected_seq, entry.seq)
        if entry.prev_hash != prev_hash:
            _bad_prev(entry.seq)
        try:
            text = details_text(entry.details)
            digest = _fast_hash(
                prev_hash, entry.seq, entry.time, entry.actor, entry.action, entry.subject, text
            )
        except (TypeError, ValueError):
            digest = b""  # not encodable the fast way: the reference decides below
        if digest != entry.hash and _reference_hash(prev_hash, entry.event()) != entry.hash:
            _edited(entry.seq)
        prev_hash = entry.hash
        expected_seq += 1
        count += 1
    return count


def verify_rows(rows: Iterable[AuditRow], start: tuple[int, bytes] | None = None) -> int:
    """:func:`verify_chain` over raw stored rows (see :data:`AuditRow`): the fast path.

    The hashed bytes are put together from the stored text (``details`` is canonical JSON as
    written), so no JSON is parsed or encoded per event. Only a row that does not match that
    way is re-checked the reference way (parsed, re-encoded, hex decoded), so the verdict is
    the reference verdict, and a bad row is named exactly as :func:`verify_chain` names it.
    """
    expected_seq, prev = (start[0] + 1, start[1]) if start else (1, GENESIS_HASH)
    prev_hex = prev.hex()
    count = 0
    sha256, enc = hashlib.sha256, encode_basestring  # locals: this loop runs a million times
    for seq, time, actor, action, subject, details, prev_hash_hex, hash_hex in rows:
        if seq != expected_seq:
            _missing(expected_seq, seq)
        if prev_hash_hex != prev_hex and hex_or_marker(prev_hash_hex) != prev:
            _bad_prev(seq)
        try:
            digest = sha256(
                prev
                + f'{{"action":{enc(action)},"actor":{enc(actor)},"details":{details},'
                f'"seq":{seq},"subject":{enc(subject)},"time":{enc(time)}}}'.encode()
            ).digest()
            digest_hex = digest.hex()
        except (TypeError, ValueError):
            digest, digest_hex = b"", ""
        if digest_hex != hash_hex:
            stored = hex_or_marker(hash_hex)
            if digest != stored:
                event = event_dict(seq, time, actor, action, subject, json_or_marker(details))
                if _reference_hash(prev, event) != stored:
                    _edited(seq)
            digest, digest_hex = stored, stored.hex()
        prev, prev_hex = digest, digest_hex
        expected_seq += 1
        count += 1
    return count


# --- reading stored rows ------------------------------------------------------------------------


class StoredDetails(dict[str, Any]):
    """``details`` as read from the database: the parsed object, read-only, with its stored text.

    :func:`verify_chain` hashes :attr:`text` directly. The mapping refuses changes, so the text
    can never disagree with the parsed value; to tamper in a test, replace the whole field.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        super().__init__(json.loads(text))
        self.text = text

    def __reduce__(self) -> tuple[type[StoredDetails], tuple[str]]:
        return StoredDetails, (self.text,)

    def _read_only(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise TypeError("stored audit details are read-only")

    __setitem__ = __delitem__ = _read_only
    clear = pop = popitem = setdefault = update = __ior__ = _read_only


def entry_from_row(row: AuditRow) -> AuditEntry:
    """An :class:`AuditEntry` from a stored row; unreadable fields become values that fail
    verification at that row (reported as edited) rather than errors."""
    seq, time, actor, action, subject, details, prev_hash_hex, hash_hex = row
    try:
        seq = int(seq)
    except (TypeError, ValueError):
        pass  # not a number (edited): verification reports it as a missing seq
    return AuditEntry(
        seq=seq,
        time=time,
        actor=actor,
        action=action,
        subject=subject,
        details=json_or_marker(details),
        prev_hash=hex_or_marker(prev_hash_hex),
        hash=hex_or_marker(hash_hex),
    )


def json_or_marker(text: str) -> dict[str, Any]:
    """Stored details text as a mapping (a :class:`StoredDetails` when it is a JSON object)."""
    try:
        return StoredDetails(text)
    except (TypeError, ValueError):
        pass  # not JSON, or JSON that is not an object
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {"__unparseable__": str(text)}
    return {"__not_an_object__": value}


def hex_or_marker(value: str) -> bytes:
    """Stored hex as bytes; anything else as 33 bytes, which never equal a SHA-256 digest."""
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError):
        return b"\xff" * 33


# --- helpers ------------------------------------------------------------------------------------


def event_bytes(
    seq: int, time: str, actor: str, action: str, subject: str, details_text: str
) -> bytes:
    """``canonical_json(event)`` assembled from the fields and canonical ``details`` text.

    Keys in sorted order (action, actor, details, seq, subject, time); strings escaped exactly
    as ``json.dumps(..., ensure_ascii=False)`` escapes them.
    """
    enc = encode_basestring
    return (
        f'{{"action":{enc(action)},"actor":{enc(actor)},"details":{details_text},'
        f'"seq":{int(seq)},"subject":{enc(subject)},"time":{enc(time)}}}'
    ).encode()


def _fast_hash(
    prev_hash: bytes, seq: int, time: str, actor: str, action: str, subject: str, text: str
) -> bytes:
    if type(seq) is not int:
        raise TypeError("seq is not an int")  # bool or other: let the reference encode it
    return hashlib.sha256(prev_hash + event_bytes(seq, time, actor, action, subject, text)).digest()


def _reference_hash(prev_hash: bytes, event: Mapping[str, Any]) -> bytes:
    """:func:`chain_hash`, with an unencodable event (lone surrogates) as no hash at all."""
    try:
        return chain_hash(prev_hash, event)
    except (TypeError, ValueError):
        return b""


def _missing(expected_seq: int, found: Any) -> NoReturn:
    raise AuditChainBroken(
        expected_seq, f"expected seq {expected_seq}, found {found} (missing or reordered)"
    )


def _bad_prev(seq: int) -> NoReturn:
    raise AuditChainBroken(seq, "prev_hash does not match the previous event's hash")


def _edited(seq: int) -> NoReturn:
    raise AuditChainBroken(seq, "hash does not match the event (edited)")


def details_text(details: Mapping[str, Any]) -> str:
    """The canonical JSON text of ``details`` as stored (reused when it is already known)."""
    if type(details) is StoredDetails:
        return details.text
    return canonical_json(dict(details)).decode("utf-8")
