"""The CRL fast path (hand-written entries) against cryptography's builder: the same bytes."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from crl import der
from crl.build import CrlSpec, build_crl, revoked_certificate

NOW = datetime(2031, 5, 17, 8, 9, 10, tzinfo=UTC)


def _issuer(key) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hsmca tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Unit CA"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _entries(count: int) -> list[der.Entry]:
    codes = sorted(der.REASON_CODES)
    base = int(NOW.timestamp())
    out = [
        (secrets.randbits(128) | 1 << 64, base - secrets.randbelow(400 * 86400), codes[i % 10])
        for i in range(count)
    ]
    out += [
        (1, base, 1),  # the smallest serial
        (0x80, base, 0),  # a leading zero octet
        ((1 << 159) - 1, base, 4),  # 20 octets, the RFC 5280 maximum
        (5, int(datetime(2051, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()), 5),  # GeneralizedTime
        (6, int(datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()), 9),
    ]
    return out


KEYS = {
    "ec:P-256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ec:P-384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "rsa:2048": lambda: rsa.generate_private_key(65537, 2048),
}


@pytest.mark.parametrize("kind", sorted(KEYS))
@pytest.mark.parametrize("partition", [None, "http://pki.hsmca.test/crl/issuing/2.crl"])
@pytest.mark.parametrize("count", [0, 1, 300])
def test_fast_path_makes_the_same_tbs_as_the_builder(kind, partition, count):
    key = KEYS[kind]()
    digest = hashes.SHA384() if kind == "ec:P-384" else hashes.SHA256()
    spec = CrlSpec(_issuer(key), 42, NOW, NOW + timedelta(days=7), partition)
    entries = _entries(count) if count else []
    slow = x509.load_der_x509_crl(build_crl(key, digest, spec, entries, fast=False))
    fast = x509.load_der_x509_crl(build_crl(key, digest, spec, entries, fast=True))
    assert fast.tbs_certlist_bytes == slow.tbs_certlist_bytes
    assert fast.signature_algorithm_oid == slow.signature_algorithm_oid
    assert fast.is_signature_valid(key.public_key())
    assert len(fast) == len(entries)
    if entries:
        listed = fast.get_revoked_certificate_by_serial_number(entries[-1][0])
        assert listed is not None and listed.revocation_date_utc.year == 1999


def test_unspecified_has_no_reason_code_and_others_have_theirs():
    key = KEYS["ec:P-256"]()
    base = int(NOW.timestamp())
    entries = [(10 + code, base, code) for code in sorted(der.REASON_CODES)]
    crl = x509.load_der_x509_crl(
        build_crl(
            key,
            hashes.SHA256(),
            CrlSpec(_issuer(key), 1, NOW, NOW + timedelta(hours=1)),
            entries,
            fast=True,
        )
    )
    for serial, _, code in entries:
        entry = crl.get_revoked_certificate_by_serial_number(serial)
        assert entry is not None
        if code == 0:
            assert len(entry.extensions) == 0
        else:
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
            assert reason == revoked_certificate((serial, base, code)).extensions[0].value.reason


@pytest.mark.parametrize(
    "entry",
    [(0, 0, 0), (-5, 0, 0), (1 << 159, 0, 0), (5, 0, 7), (5, 0, 11), (5, -700_000_000, 0)],
    ids=["zero", "negative", "21-octets", "reason-7", "reason-11", "before-1950"],
)
def test_entries_that_cannot_be_listed_are_refused(entry):
    with pytest.raises(ValueError):
        der.encode_entries([entry])


def test_splice_refuses_a_template_that_lists_entries():
    key = KEYS["ec:P-256"]()
    spec = CrlSpec(_issuer(key), 1, NOW, NOW + timedelta(hours=1))
    listed = build_crl(key, hashes.SHA256(), spec, [(5, int(NOW.timestamp()), 1)], fast=False)
    with pytest.raises(ValueError, match="no revoked"):
        der.splice_entries(listed, b"")


def test_long_lengths_use_the_definite_long_form():
    assert der.header(0x30, 0x7F) == b"\x30\x7f"
    assert der.header(0x30, 0x80) == b"\x30\x81\x80"
    assert der.header(0x30, 50_000_000) == b"\x30\x84" + (50_000_000).to_bytes(4, "big")
    assert der.read_tlv(der.header(0x30, 300) + b"\x00" * 300, 0) == (0x30, 4, 304)
