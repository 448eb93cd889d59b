"""The audit chain: canonical encoding, chaining, and locating every kind of tampering."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from ca.audit import (
    GENESIS_HASH,
    AuditEntry,
    canonical_json,
    chain_hash,
    next_entry,
    rfc3339,
    verify_chain,
)
from ca.errors import AuditChainBroken

CHAIN_LENGTH = 6


def _build_chain(length: int = CHAIN_LENGTH) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    head: tuple[int, bytes] | None = None
    for i in range(1, length + 1):
        entry = next_entry(
            head,
            f"2025-01-01T00:00:{i:02d}.000000Z",
            f"actor-{i}",
            "certificate.issued",
            f"serial-{i:x}",
            {"n": i, "sans": [f"dns:host{i}.example"], "note": "Zürich ✓"},
        )
        entries.append(entry)
        head = (entry.seq, entry.hash)
    return entries


@pytest.fixture
def chain() -> list[AuditEntry]:
    return _build_chain()


def _broken_at(entries: list[AuditEntry], start: tuple[int, bytes] | None = None) -> int:
    with pytest.raises(AuditChainBroken) as info:
        verify_chain(entries, start=start)
    assert f"seq {info.value.seq}" in str(info.value)
    assert info.value.kind == "auditChainBroken"
    return info.value.seq


# --- canonical JSON ---------------------------------------------------------------------------


def test_canonical_json_sorts_keys_at_every_level_and_has_no_whitespace() -> None:
    value = {"b": 1, "a": {"z": [1, 2], "y": None}, "c": True}
    assert canonical_json(value) == b'{"a":{"y":null,"z":[1,2]},"b":1,"c":true}'


def test_canonical_json_does_not_depend_on_insertion_order() -> None:
    assert canonical_json({"x": 1, "y": 2}) == canonical_json({"y": 2, "x": 1})


def test_canonical_json_keeps_non_ascii_as_utf8() -> None:
    encoded = canonical_json({"name": "Zürich ✓ 東京"})
    assert encoded == '{"name":"Zürich ✓ 東京"}'.encode()
    assert b"\\u" not in encoded


@pytest.mark.parametrize(
    "number",
    [float("nan"), float("inf"), float("-inf")],
    ids=["fail/nan", "fail/inf", "fail/-inf"],
)
def test_canonical_json_refuses_non_finite_numbers(number: float) -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": number})


def test_chain_hash_is_sha256_of_prev_hash_then_canonical_json() -> None:
    prev = bytes(range(32))
    event = {"seq": 7, "action": "x"}
    expected = hashlib.sha256(prev + b'{"action":"x","seq":7}').digest()
    assert chain_hash(prev, event) == expected


# --- building the chain -----------------------------------------------------------------------


def test_genesis_prev_hash_is_32_zero_bytes() -> None:
    first = next_entry(None, "2025-01-01T00:00:00.000000Z", "a", "ca.created", "root", {})
    assert GENESIS_HASH == b"\x00" * 32
    assert first.seq == 1
    assert first.prev_hash == b"\x00" * 32
    assert first.hash == hashlib.sha256(b"\x00" * 32 + canonical_json(first.event())).digest()


def test_next_entry_links_to_the_head_and_counts_up(chain: list[AuditEntry]) -> None:
    assert [e.seq for e in chain] == list(range(1, CHAIN_LENGTH + 1))
    for prev, entry in zip(chain, chain[1:], strict=False):
        assert entry.prev_hash == prev.hash
        assert entry.hash == chain_hash(prev.hash, entry.event())
    assert len({e.hash for e in chain}) == CHAIN_LENGTH


def test_event_holds_exactly_the_hashed_fields(chain: list[AuditEntry]) -> None:
    assert set(chain[0].event()) == {"seq", "time", "actor", "action", "subject", "details"}


def test_stored_details_are_what_was_hashed() -> None:
    details = {"tuple": (1, 2), "nested": {"b": 1, "a": 2}, "ints": {3: "int key"}}
    entry = next_entry(None, "t", "a", "x", "s", details)
    assert entry.details == {"tuple": [1, 2], "nested": {"a": 2, "b": 1}, "ints": {"3": "int key"}}
    details["nested"]["a"] = 99  # the caller's object is not shared with the entry
    assert entry.details["nested"]["a"] == 2
    assert verify_chain([entry]) == 1


def test_next_entry_refuses_nan_in_details() -> None:
    with pytest.raises(ValueError):
        next_entry(None, "t", "a", "x", "s", {"ratio": float("nan")})


# --- verification -----------------------------------------------------------------------------


def test_intact_chain_verifies_and_counts_its_events(chain: list[AuditEntry]) -> None:
    assert verify_chain(chain) == CHAIN_LENGTH
    assert verify_chain(iter(chain)) == CHAIN_LENGTH


def test_empty_chain_verifies_with_zero_events() -> None:
    assert verify_chain([]) == 0


@pytest.mark.parametrize(
    "seq", [1, 3, CHAIN_LENGTH], ids=["fail/first", "fail/middle", "fail/last"]
)
@pytest.mark.parametrize(
    "change",
    [
        {"actor": "mallory"},
        {"action": "certificate.revoked"},
        {"subject": "serial-ff"},
        {"time": "2030-01-01T00:00:00.000000Z"},
        {"details": {"n": 0}},
    ],
    ids=["actor", "action", "subject", "time", "details"],
)
def test_edited_event_is_located_by_seq(
    chain: list[AuditEntry], seq: int, change: dict[str, object]
) -> None:
    chain[seq - 1] = replace(chain[seq - 1], **change)
    assert _broken_at(chain) == seq


def test_edited_event_with_recomputed_hash_is_located_at_the_next_seq(
    chain: list[AuditEntry],
) -> None:
    edited = replace(chain[2], details={"n": 0})
    chain[2] = replace(edited, hash=chain_hash(edited.prev_hash, edited.event()))
    assert _broken_at(chain) == 4


@pytest.mark.parametrize("seq", [1, 2, 4, CHAIN_LENGTH - 1], ids=lambda s: f"fail/delete-{s}")
def test_deleted_event_is_located_by_the_missing_seq(chain: list[AuditEntry], seq: int) -> None:
    del chain[seq - 1]
    assert _broken_at(chain) == seq


def test_deleting_the_last_event_shows_only_in_the_count(chain: list[AuditEntry]) -> None:
    # The walk alone cannot see a cut tail; checkpoints (signed heads) are what catch it.
    assert verify_chain(chain[:-1]) == CHAIN_LENGTH - 1


@pytest.mark.parametrize("first", [1, 3, CHAIN_LENGTH - 1], ids=lambda s: f"fail/swap-{s}-{s + 1}")
def test_reordered_pair_is_located_at_the_first_swapped_seq(
    chain: list[AuditEntry], first: int
) -> None:
    chain[first - 1], chain[first] = chain[first], chain[first - 1]
    assert _broken_at(chain) == first


def test_duplicated_event_is_located_at_the_seq_after_it(chain: list[AuditEntry]) -> None:
    chain.insert(3, chain[2])
    assert _broken_at(chain) == 4


@pytest.mark.parametrize("seq", [1, 3, CHAIN_LENGTH], ids=lambda s: f"fail/hash-{s}")
def test_modified_hash_is_located_by_seq(chain: list[AuditEntry], seq: int) -> None:
    original = chain[seq - 1].hash
    chain[seq - 1] = replace(chain[seq - 1], hash=bytes(b ^ 0xFF for b in original))
    assert _broken_at(chain) == seq


@pytest.mark.parametrize("seq", [1, 4], ids=lambda s: f"fail/prev-hash-{s}")
def test_modified_prev_hash_is_located_by_seq(chain: list[AuditEntry], seq: int) -> None:
    chain[seq - 1] = replace(chain[seq - 1], prev_hash=b"\x01" * 32)
    assert _broken_at(chain) == seq


def test_truncated_chain_continues_from_start(chain: list[AuditEntry]) -> None:
    start = (chain[2].seq, chain[2].hash)
    assert verify_chain(chain[3:], start=start) == CHAIN_LENGTH - 3


def test_truncated_chain_without_start_is_located_at_seq_1(chain: list[AuditEntry]) -> None:
    assert _broken_at(chain[3:]) == 1


def test_truncated_chain_with_wrong_start_hash_is_located_at_its_first_event(
    chain: list[AuditEntry],
) -> None:
    assert _broken_at(chain[3:], start=(3, chain[1].hash)) == 4


def test_truncated_chain_with_a_gap_after_start_is_located_at_the_missing_seq(
    chain: list[AuditEntry],
) -> None:
    assert _broken_at(chain[3:], start=(2, chain[1].hash)) == 3


def test_verification_stops_at_the_first_bad_event(chain: list[AuditEntry]) -> None:
    chain[1] = replace(chain[1], actor="mallory")
    chain[4] = replace(chain[4], actor="mallory")
    assert _broken_at(chain) == 2


def test_exported_json_round_trip_still_verifies(chain: list[AuditEntry]) -> None:
    lines = [
        json.dumps({**e.event(), "prev_hash": e.prev_hash.hex(), "hash": e.hash.hex()})
        for e in chain
    ]
    reloaded = []
    for line in lines:
        d = json.loads(line)
        reloaded.append(
            AuditEntry(
                d["seq"],
                d["time"],
                d["actor"],
                d["action"],
                d["subject"],
                d["details"],
                bytes.fromhex(d["prev_hash"]),
                bytes.fromhex(d["hash"]),
            )
        )
    assert verify_chain(reloaded) == CHAIN_LENGTH


# --- time text --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2025, 3, 4, 5, 6, 7, 89, tzinfo=UTC), "2025-03-04T05:06:07.000089Z"),
        (
            datetime(2025, 3, 4, 7, 6, 7, tzinfo=timezone(timedelta(hours=2))),
            "2025-03-04T05:06:07.000000Z",
        ),
    ],
    ids=["ok/utc", "ok/offset-converted-to-utc"],
)
def test_rfc3339_is_utc_with_microseconds_and_z(moment: datetime, text: str) -> None:
    assert rfc3339(moment) == text


def test_rfc3339_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError):
        rfc3339(datetime(2025, 1, 1))
