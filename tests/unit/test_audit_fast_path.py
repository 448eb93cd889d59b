"""The fast audit verifier (bytes assembled from stored text) agrees with the reference one
(parse, re-encode with ``canonical_json``) on every input: tricky text, every kind of tampering,
and values the fast path cannot encode."""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ca.audit import (
    GENESIS_HASH,
    AuditEntry,
    AuditRow,
    StoredDetails,
    canonical_json,
    details_text,
    entry_from_row,
    event_bytes,
    event_dict,
    next_entry,
    verify_chain,
    verify_rows,
)
from ca.errors import AuditChainBroken

TRICKY = [
    "plain",
    "",
    'quote " and backslash \\ and slash /',
    "control \x00 \x01 \x08 \t \n \x0b \x0c \r \x1b \x1f and DEL \x7f",
    "Zürich ✓ 東京 שלום 🔐 \u2028 \u2029 \ufeff",
    "\\u0041 is not A",
    "</script><!--",
]
DETAILS: list[dict[str, Any]] = [
    {},
    {"n": 2**200, "neg": -(2**70), "zero": 0, "t": True, "f": False, "none": None},
    {"nested": {"b": [1, {"z": "ä", "a": ["\x00"]}], "a": {}}, "list": []},
    {text: text for text in TRICKY},
    {"ratio": 0.1, "big": 1e300, "tiny": -5e-324},
]


def reference_bytes(
    seq: int, time: str, actor: str, action: str, subject: str, details: Any
) -> bytes:
    return canonical_json(event_dict(seq, time, actor, action, subject, details))


def reference_verify(rows: list[AuditRow]) -> int:
    """The verifier of docs/audit-chain.md, independent of ca.audit's fast path."""
    prev, expected = GENESIS_HASH, 1
    for seq, time, actor, action, subject, details, prev_hex, hash_hex in rows:
        if seq != expected:
            raise AuditChainBroken(expected, "missing or reordered")
        try:
            parsed = json.loads(details)
        except ValueError:
            parsed = {"__unparseable__": details}
        if not isinstance(parsed, dict):
            parsed = {"__not_an_object__": parsed}
        try:
            digest = hashlib.sha256(
                prev + reference_bytes(seq, time, actor, action, subject, parsed)
            ).digest()
        except ValueError:
            digest = b""
        try:
            if bytes.fromhex(prev_hex) != prev:
                raise AuditChainBroken(seq, "prev_hash")
        except ValueError:
            raise AuditChainBroken(seq, "prev_hash") from None
        try:
            stored = bytes.fromhex(hash_hex)
        except ValueError:
            stored = b"?"
        if digest != stored:
            raise AuditChainBroken(seq, "edited")
        prev, expected = stored, expected + 1
    return expected - 1


def build_rows(n: int = 8) -> list[AuditRow]:
    rows: list[AuditRow] = []
    head = None
    for i in range(1, n + 1):
        text = TRICKY[i % len(TRICKY)]
        e = next_entry(
            head,
            f"2026-01-01T00:00:{i:02d}.000000Z",
            f"actor {text}",
            "certificate.issued",
            f"subject {text}",
            DETAILS[i % len(DETAILS)] | {"i": i},
        )
        rows.append(_row(e))
        head = (e.seq, e.hash)
    return rows


def _row(e: AuditEntry) -> AuditRow:
    return (
        e.seq,
        e.time,
        e.actor,
        e.action,
        e.subject,
        details_text(e.details),
        e.prev_hash.hex(),
        e.hash.hex(),
    )


def outcome(verify: Any, rows: list[AuditRow]) -> tuple[str, int]:
    try:
        return ("ok", verify(rows))
    except AuditChainBroken as exc:
        return ("broken", exc.seq)


def all_outcomes(rows: list[AuditRow]) -> set[tuple[str, int]]:
    """The verdict of the fast row verifier, verify_chain over entries, and the reference."""
    return {
        outcome(verify_rows, rows),
        outcome(lambda r: verify_chain([entry_from_row(x) for x in r]), rows),
        outcome(reference_verify, rows),
    }


# --- the bytes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", TRICKY, ids=range(len(TRICKY)))
@pytest.mark.parametrize("details", DETAILS, ids=range(len(DETAILS)))
def test_assembled_event_bytes_equal_canonical_json(text: str, details: dict[str, Any]) -> None:
    stored = canonical_json(details).decode("utf-8")
    for seq in (1, 2**63 + 7, 10**40):
        assert event_bytes(seq, text, text, text, text, stored) == reference_bytes(
            seq, text, text, text, text, details
        )


@given(
    st.integers(min_value=1, max_value=2**80),
    st.text(),
    st.text(),
    st.text(),
    st.dictionaries(st.text(), st.one_of(st.text(), st.integers(), st.none(), st.booleans())),
)
def test_assembled_event_bytes_equal_canonical_json_for_any_text(
    seq: int, actor: str, subject: str, time: str, details: dict[str, Any]
) -> None:
    try:
        expected = reference_bytes(seq, time, actor, "x.y", subject, details)
    except UnicodeEncodeError:  # lone surrogates: neither way can encode them
        with pytest.raises(UnicodeEncodeError):
            event_bytes(seq, time, actor, "x.y", subject, canonical_json(details).decode())
        return
    assert (
        event_bytes(seq, time, actor, "x.y", subject, canonical_json(details).decode()) == expected
    )


# --- the verdicts -------------------------------------------------------------------------------


def test_an_intact_chain_verifies_the_same_every_way() -> None:
    rows = build_rows()
    assert all_outcomes(rows) == {("ok", len(rows))}
    assert all_outcomes([]) == {("ok", 0)}


def _edit(rows: list[AuditRow], index: int, column: int, value: Any) -> list[AuditRow]:
    changed = list(rows)
    row = list(changed[index])
    row[column] = value
    changed[index] = tuple(row)  # type: ignore[assignment]
    return changed


TAMPERING = {
    "actor": lambda r: _edit(r, 3, 2, "mallory"),
    "action": lambda r: _edit(r, 3, 3, "certificate.revoked"),
    "subject": lambda r: _edit(r, 3, 4, "other"),
    "time": lambda r: _edit(r, 3, 1, "2030-01-01T00:00:00.000000Z"),
    "details-value": lambda r: _edit(r, 3, 5, r[3][5].replace('"i":4', '"i":5')),
    "details-not-json": lambda r: _edit(r, 3, 5, r[3][5][:-1]),
    "details-not-an-object": lambda r: _edit(r, 3, 5, "[1,2]"),
    "details-extra-member-outside": lambda r: _edit(r, 3, 5, r[3][5] + ',"x":1'),
    "hash-not-hex": lambda r: _edit(r, 3, 7, "zz" * 32),
    "hash-flipped": lambda r: _edit(r, 3, 7, "00" * 32),
    "prev-hash": lambda r: _edit(r, 3, 6, "11" * 32),
    "prev-hash-not-hex": lambda r: _edit(r, 3, 6, "xyz"),
    "seq": lambda r: _edit(r, 3, 0, 99),
    "seq-not-a-number": lambda r: _edit(r, 3, 0, "four"),
    "deleted": lambda r: r[:3] + r[4:],
    "swapped": lambda r: r[:3] + [r[4], r[3]] + r[5:],
    "lone-surrogate": lambda r: _edit(r, 3, 4, "\udcff"),
    # Not tampering with content: the same JSON written differently, hex in upper case.
    "details-reformatted": lambda r: _edit(r, 3, 5, json.dumps(json.loads(r[3][5]), indent=1)),
    "hash-upper-case": lambda r: _edit(_edit(r, 3, 7, r[3][7].upper()), 4, 6, r[4][6].upper()),
}


@pytest.mark.parametrize("kind", TAMPERING)
def test_every_verifier_gives_the_same_verdict_on_the_same_rows(kind: str) -> None:
    rows = TAMPERING[kind](build_rows())
    verdicts = all_outcomes(rows)
    assert len(verdicts) == 1, verdicts
    (verdict,) = verdicts
    if kind in ("details-reformatted", "hash-upper-case"):
        assert verdict == ("ok", 8)
    else:
        assert verdict == ("broken", 4)


def test_the_fast_verifier_names_the_reason_like_verify_chain() -> None:
    rows = TAMPERING["actor"](build_rows())
    with pytest.raises(AuditChainBroken, match="hash does not match the event"):
        verify_rows(rows)
    with pytest.raises(AuditChainBroken, match="expected seq 4, found 5"):
        verify_rows(TAMPERING["deleted"](build_rows()))
    with pytest.raises(AuditChainBroken, match="prev_hash does not match"):
        verify_rows(TAMPERING["prev-hash"](build_rows()))


def test_verification_can_start_mid_chain() -> None:
    rows = build_rows()
    start = (rows[2][0], bytes.fromhex(rows[2][7]))
    assert (
        verify_rows(rows[3:], start)
        == verify_chain([entry_from_row(r) for r in rows[3:]], start)
        == len(rows) - 3
    )


# --- stored details -----------------------------------------------------------------------------


def test_stored_details_are_a_read_only_dict_that_keeps_its_text() -> None:
    text = canonical_json(DETAILS[2]).decode()
    details = StoredDetails(text)
    assert details == DETAILS[2] and isinstance(details, dict) and details.text == text
    assert json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False) == text
    for change in (
        lambda d: d.__setitem__("x", 1),
        lambda d: d.pop("list"),
        lambda d: d.update(x=1),
        lambda d: d.clear(),
        lambda d: d.setdefault("x", 1),
        lambda d: d.popitem(),
        lambda d: d.__delitem__("list"),
    ):
        with pytest.raises(TypeError):
            change(details)
    assert details == DETAILS[2]
    for clone in (pickle.loads(pickle.dumps(details)), copy.deepcopy(details), copy.copy(details)):
        assert clone == details and clone.text == text


def test_replacing_the_details_of_an_entry_is_seen_despite_the_stored_text() -> None:
    from dataclasses import replace

    rows = build_rows()
    entries = [entry_from_row(r) for r in rows]
    assert isinstance(entries[3].details, StoredDetails)
    entries[3] = replace(entries[3], details={**entries[3].details, "i": 99})
    with pytest.raises(AuditChainBroken) as info:
        verify_chain(entries)
    assert info.value.seq == 4
