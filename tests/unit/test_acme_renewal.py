"""ARI (RFC 9773) certIDs and renewal windows, and the revokeCert (RFC 8555 §7.6) rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca.acme.errors import AcmeError
from ca.acme.jws import b64url_encode
from ca.acme.renewal import (
    build_cert_id,
    cert_id_of,
    check_not_replaced,
    parse_cert_id,
    replaced_by_live_order,
    serial_octets,
    suggested_window,
)
from ca.acme.revocation import certificate_identifiers, check_reason, may_revoke

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

# RFC 9773 §4.1's example: AKI keyIdentifier 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:
# DE:01:C8:D4 and serial 0x87654321 (DER content 00:87:65:43:21).
RFC_AKI = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
RFC_CERT_ID = "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


# certID ----------------------------------------------------------------------------------------


def test_rfc_9773_example_builds_and_parses():
    assert build_cert_id(RFC_AKI, 0x87654321) == RFC_CERT_ID
    parsed = parse_cert_id(RFC_CERT_ID)
    assert parsed.key_identifier == RFC_AKI
    assert parsed.serial == 0x87654321
    assert parsed.serial_hex == "87654321"


@pytest.mark.parametrize(
    ("serial", "octets"),
    [
        (0, b"\x00"),
        (0x7F, b"\x7f"),
        (0x80, b"\x00\x80"),
        (0x0102, b"\x01\x02"),
        ((1 << 159) - 1, b"\x7f" + b"\xff" * 19),  # 20 octets
        (1 << 159, b"\x00\x80" + b"\x00" * 19),  # 20 octets + the sign octet
    ],
)
def test_serial_octets_are_der_integer_contents(serial, octets):
    assert serial_octets(serial) == octets


@pytest.mark.parametrize("serial", [1, 0x7F, 0x80, 0xFF, 0x1234, (1 << 127) + 5, (1 << 160) - 1])
def test_cert_id_round_trips(serial):
    aki = bytes(range(20))
    parsed = parse_cert_id(build_cert_id(aki, serial))
    assert (parsed.key_identifier, parsed.serial) == (aki, serial)


def test_cert_id_of_a_certificate_uses_its_aki_and_serial():
    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(leaf_key.public_key())
        .serial_number(0xF00D)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
    )
    assert cert_id_of(builder.sign(ca_key, hashes.SHA256())) is None  # no AKI
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    cert = builder.add_extension(aki, critical=False).sign(ca_key, hashes.SHA256())
    assert aki.key_identifier is not None
    assert cert_id_of(cert) == build_cert_id(aki.key_identifier, 0xF00D)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "nodot",
        ".AIdlQyE",
        "aYhba4dGQEHhs3uEe6CuLN4ByNQ.",
        "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdl.QyE",  # two dots
        "aYhba4dGQEHhs3uEe6CuLN4ByNQ=.AIdlQyE",  # padding
        "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE=",
        "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdl+yE",  # not url-safe
        "aYhba4dGQEHhs3uEe6CuLN4ByNQ.gA",  # 0x80: negative
        "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AAE",  # 00 01: not minimal DER
        "aYhba4dGQEHhs3uEe6CuLN4ByNQ." + b64url_encode(b"\x01" * 22),  # over 20 octets
        "aYhba4dGQEHhs3uEe6CuLN4ByNQ." + b64url_encode(b"\x01" * 21),
        "aYhba4dGQEHhs3uEe6CuLN4ByNQ." + b64url_encode(b"\x00" * 30),  # zeros: not DER
        "aYhba4dGQEHhs3uEe6CuLN4ByNQ.A",  # impossible base64 length
        "é.AIdlQyE",
        "a" * 200 + ".AQ",
        None,
        42,
    ],
)
def test_malformed_cert_ids_are_refused(bad):
    with pytest.raises(AcmeError) as err:
        parse_cert_id(bad)
    assert err.value.kind == "malformed" and err.value.status == 400


# Suggested window ------------------------------------------------------------------------------


def test_window_is_two_thirds_to_three_quarters_of_the_validity():
    start, end = suggested_window(NOW, NOW + timedelta(days=90), False, NOW)
    assert start == NOW + timedelta(days=60)
    assert end == NOW + timedelta(days=67, hours=12)


def test_window_of_a_short_lived_certificate_is_inside_its_validity():
    nb = NOW - timedelta(hours=1)
    start, end = suggested_window(nb, nb + timedelta(hours=24), False, NOW)
    assert nb < start < end < nb + timedelta(hours=24)
    assert (start - nb, end - nb) == (timedelta(hours=16), timedelta(hours=18))


def test_window_is_whole_seconds_and_never_empty():
    nb = NOW + timedelta(microseconds=123)
    start, end = suggested_window(nb, nb + timedelta(seconds=2), False, NOW)
    assert start.microsecond == 0 and end.microsecond == 0
    assert end > start


def test_window_of_a_revoked_certificate_is_in_the_past():
    start, end = suggested_window(NOW, NOW + timedelta(days=90), True, NOW + timedelta(days=3))
    assert start < end < NOW + timedelta(days=3)


# replaces --------------------------------------------------------------------------------------


def test_only_orders_that_may_still_issue_count_as_replacing():
    later, earlier = NOW + timedelta(hours=1), NOW - timedelta(hours=1)
    assert not replaced_by_live_order([], NOW)
    assert not replaced_by_live_order([("invalid", later), ("pending", earlier)], NOW)
    assert not replaced_by_live_order([("ready", earlier)], NOW)
    for status in ("pending", "ready"):
        assert replaced_by_live_order([("invalid", later), (status, later)], NOW)
    for status in ("processing", "valid"):
        assert replaced_by_live_order([(status, earlier)], NOW)


def test_already_replaced_is_its_own_error():
    check_not_replaced([("invalid", NOW)], NOW)
    with pytest.raises(AcmeError) as err:
        check_not_replaced([("valid", NOW)], NOW)
    assert err.value.kind == "alreadyReplaced" and err.value.status == 409


# revokeCert ------------------------------------------------------------------------------------

CERT_IDS = frozenset({("dns", "a.test"), ("ip", "10.0.0.1")})


def decide(**overrides):
    args = {
        "signer_account": None,
        "signer_spki": None,
        "owner_account": 7,
        "cert_spki": b"cert-key",
        "cert_identifiers": CERT_IDS,
        "authorized": frozenset(),
    }
    args.update(overrides)
    return may_revoke(**args)


def test_the_ordering_account_may_revoke():
    assert decide(signer_account=7) == "account"


def test_an_account_authorized_for_every_identifier_may_revoke():
    authorized = CERT_IDS | {("dns", "other.test")}
    assert decide(signer_account=8, authorized=authorized) == "authz"
    assert decide(signer_account=8, owner_account=None, authorized=authorized) == "authz"


def test_an_account_authorized_for_some_identifiers_may_not():
    with pytest.raises(AcmeError) as err:
        decide(signer_account=8, authorized=frozenset({("dns", "a.test")}))
    assert err.value.kind == "unauthorized" and err.value.status == 403
    assert "ip:10.0.0.1" in err.value.detail


def test_a_certificate_without_identifiers_is_not_revocable_by_authorizations():
    with pytest.raises(AcmeError):
        decide(signer_account=8, cert_identifiers=frozenset(), authorized=CERT_IDS)


def test_the_certificate_key_may_revoke():
    assert decide(signer_spki=b"cert-key") == "certkey"
    assert decide(signer_spki=b"cert-key", owner_account=None) == "certkey"


def test_another_jwk_may_not():
    with pytest.raises(AcmeError) as err:
        decide(signer_spki=b"another-key")
    assert err.value.kind == "unauthorized"


def test_an_unrelated_account_may_not_even_if_the_certificate_was_not_ordered_over_acme():
    for owner in (7, None):
        with pytest.raises(AcmeError) as err:
            decide(signer_account=9, owner_account=owner)
        assert err.value.kind == "unauthorized"


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (None, "unspecified"),
        (0, "unspecified"),
        (1, "keyCompromise"),
        (3, "affiliationChanged"),
        (4, "superseded"),
        (5, "cessationOfOperation"),
        (9, "privilegeWithdrawn"),
    ],
)
def test_accepted_reasons(raw, name):
    assert check_reason(raw) == name


@pytest.mark.parametrize("raw", [2, 6, 7, 8, 10, 11, -1, 1000])
def test_refused_reasons_are_bad_revocation_reason(raw):
    with pytest.raises(AcmeError) as err:
        check_reason(raw)
    assert err.value.kind == "badRevocationReason" and err.value.status == 400


@pytest.mark.parametrize("raw", ["1", 1.0, True, [1]])
def test_a_reason_that_is_not_an_integer_is_malformed(raw):
    with pytest.raises(AcmeError) as err:
        check_reason(raw)
    assert err.value.kind == "malformed"


def test_certificate_identifiers_are_the_san_names_and_ips():
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "WWW.A.test")])
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("WWW.A.test"),
            x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(san, critical=False)
        .sign(key, hashes.SHA256())
    )
    assert certificate_identifiers(cert) == {
        ("dns", "www.a.test"),
        ("ip", "2001:db8::1"),
        ("ip", "10.0.0.1"),
    }
