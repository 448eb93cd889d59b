"""Serial numbers: random issuance serials and their canonical text form."""

from __future__ import annotations

import secrets

import pytest

from ca.authority import normalize_serial, serial_hex
from ca.errors import NotFound
from ca.issuance import new_serial

DRAWS = 5000


def test_new_serials_are_positive_128_bit_with_at_least_64_bits_visible() -> None:
    serials = [new_serial() for _ in range(DRAWS)]
    assert all(isinstance(s, int) for s in serials)
    assert all(1 << 64 <= s < 1 << 128 for s in serials)
    assert len(set(serials)) == DRAWS
    # Randomness reaches the top bits: with 5000 draws every one of the top 8 bits is seen set.
    assert all(any(s >> bit & 1 for s in serials) for bit in range(120, 128))
    # A positive serial below 2**128 fits the 20-octet limit of RFC 5280 even with a sign octet.
    assert all(len(serial_hex(s)) <= 32 for s in serials)


def test_new_serial_redraws_values_below_2_to_the_64(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([0, 5, (1 << 64) - 1, 1 << 64, 1 << 100])

    def fake_randbits(k: int) -> int:
        assert k == 128
        return next(draws)

    monkeypatch.setattr(secrets, "randbits", fake_randbits)
    assert new_serial() == 1 << 64
    assert new_serial() == 1 << 100


@pytest.mark.parametrize(
    ("serial", "text"),
    [(1, "1"), (255, "ff"), (1 << 64, "1" + "0" * 16), ((1 << 128) - 1, "f" * 32)],
    ids=["ok/one", "ok/ff", "ok/2^64", "ok/max-128"],
)
def test_serial_hex_is_lowercase_without_leading_zeros(serial: int, text: str) -> None:
    assert serial_hex(serial) == text
    assert int(text, 16) == serial


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0a1b", "a1b"),
        ("0A:1B", "a1b"),
        ("0x0a1b", "a1b"),
        ("0X0A1B", "a1b"),
        ("  0a 1b  ", "a1b"),
        ("00:00:ff", "ff"),
        ("ABCDEF", "abcdef"),
        ("f" * 40, "f" * 40),
        ("0", "0"),
    ],
    ids=[
        "ok/plain",
        "ok/colons-uppercase",
        "ok/0x-prefix",
        "ok/0X-prefix",
        "ok/spaces",
        "ok/leading-zeros",
        "ok/uppercase",
        "ok/20-octets",
        "ok/zero",
    ],
)
def test_normalize_serial_accepts_common_spellings(text: str, expected: str) -> None:
    assert normalize_serial(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "0x", ":", "xyz", "12-34", "0a1g", "-1", "1.0", "f" * 41, "0a\t1b"],
    ids=lambda t: f"fail/{t[:12]!r}",
)
def test_normalize_serial_refuses_non_hex_text(text: str) -> None:
    with pytest.raises(NotFound, match="not a certificate serial"):
        normalize_serial(text)


def test_normalize_serial_round_trips_issued_serials() -> None:
    for _ in range(200):
        serial = new_serial()
        canonical = serial_hex(serial)
        spelled = ":".join(f"{b:02X}" for b in serial.to_bytes(17, "big"))  # openssl style
        assert normalize_serial(spelled) == canonical
        assert normalize_serial(canonical) == canonical
        assert normalize_serial(hex(serial)) == canonical
