"""CSR parsing and checking: formats, signatures, keys, names, and ignored extensions."""

from __future__ import annotations

import hashlib
import ipaddress
from datetime import UTC, datetime
from typing import Any

import pytest
from asn1crypto import core as asn1_core
from asn1crypto import csr as asn1_csr
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from ca.csr import MAX_CSR_BYTES, check_csr, load_csr
from ca.errors import BadCSR, BadPublicKey

from .conftest import MakeCsr


def _flip_signature_byte(der: bytes) -> bytes:
    signature = x509.load_der_x509_csr(der).signature
    offset = der.rindex(signature) + len(signature) // 2
    assert der.endswith(signature)  # the signature is the last field of the CSR
    return der[:offset] + bytes([der[offset] ^ 0x01]) + der[offset + 1 :]


# --- formats ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "prefix"),
    [(Encoding.DER, b""), (Encoding.PEM, b""), (Encoding.PEM, b"\n  \r\n")],
    ids=["ok/der", "ok/pem", "ok/pem-with-leading-whitespace"],
)
def test_pem_and_der_csrs_are_accepted(
    make_csr: MakeCsr, encoding: Encoding, prefix: bytes
) -> None:
    data = prefix + make_csr(encoding=encoding)
    facts = check_csr(data)
    der = facts.csr.public_bytes(Encoding.DER)
    assert facts.der_sha256 == hashlib.sha256(der).hexdigest()
    assert facts.common_name == "www.example.com"
    assert load_csr(data).public_bytes(Encoding.DER) == der


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"   \n\t",
        b"garbage",
        b"\x30\x03\x02\x01\x01",
        b"-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n",
        b"-----BEGIN CERTIFICATE REQUEST-----\n",
        b"0" * MAX_CSR_BYTES,
    ],
    ids=[
        "fail/empty",
        "fail/whitespace",
        "fail/garbage",
        "fail/wrong-der-structure",
        "fail/pem-with-garbage-body",
        "fail/pem-without-end",
        "fail/garbage-at-size-limit",
    ],
)
def test_unparseable_input_is_refused(data: bytes) -> None:
    with pytest.raises(BadCSR) as info:
        check_csr(data)
    assert type(info.value) is BadCSR
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "keep", [0.99, 0.5, 0.1], ids=["fail/cut-1%", "fail/cut-50%", "fail/cut-90%"]
)
def test_truncated_der_is_refused(make_csr: MakeCsr, keep: float) -> None:
    der = make_csr()
    with pytest.raises(BadCSR, match="could not be parsed"):
        check_csr(der[: int(len(der) * keep)])


def test_oversized_input_is_refused_before_parsing(make_csr: MakeCsr) -> None:
    data = make_csr(encoding=Encoding.PEM) + b"\n" * MAX_CSR_BYTES
    assert len(data) > 64 * 1024
    with pytest.raises(BadCSR, match="limit"):
        load_csr(data)


def test_size_limit_is_64_kib() -> None:
    assert MAX_CSR_BYTES == 64 * 1024
    with pytest.raises(BadCSR, match="limit"):
        check_csr(b"0" * (MAX_CSR_BYTES + 1))


@pytest.mark.parametrize("key_name", ["ec_p256_key", "rsa_2048_key"], ids=["fail/ec", "fail/rsa"])
def test_csr_with_broken_signature_is_refused(
    make_csr: MakeCsr, request: pytest.FixtureRequest, key_name: str
) -> None:
    der = make_csr(request.getfixturevalue(key_name))
    broken = _flip_signature_byte(der)
    assert broken != der and len(broken) == len(der)
    with pytest.raises(BadCSR, match="signature does not verify") as info:
        check_csr(broken)
    assert type(info.value) is BadCSR


def test_csr_with_edited_content_is_refused(make_csr: MakeCsr) -> None:
    der = make_csr(cn="aaa.example.com")
    edited = der.replace(b"aaa.example.com", b"bbb.example.com")
    assert edited != der
    with pytest.raises(BadCSR, match="signature"):
        check_csr(edited)


# --- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_name", "key_type"),
    [
        ("ec_p256_key", "ec:P-256"),
        ("ec_p384_key", "ec:P-384"),
        ("ec_p521_key", "ec:P-521"),
        ("rsa_2048_key", "rsa:2048"),
    ],
    ids=["ok/p256", "ok/p384", "ok/p521", "ok/rsa2048"],
)
def test_accepted_keys_report_their_type(
    make_csr: MakeCsr, request: pytest.FixtureRequest, key_name: str, key_type: str
) -> None:
    key = request.getfixturevalue(key_name)
    facts = check_csr(make_csr(key))
    assert facts.key_type == key_type
    assert facts.public_key.public_numbers() == key.public_key().public_numbers()


@pytest.mark.parametrize(
    ("key_name", "reason"),
    [
        ("rsa_1024_key", "too small"),
        ("rsa_e3_key", "exponent"),
        ("ed25519_key", "Ed25519"),
        ("ec_secp256k1_key", "secp256k1"),
    ],
    ids=["fail/rsa1024", "fail/rsa-exponent-3", "fail/ed25519", "fail/secp256k1"],
)
def test_weak_or_unsupported_keys_are_refused(
    make_csr: MakeCsr, request: pytest.FixtureRequest, key_name: str, reason: str
) -> None:
    with pytest.raises(BadPublicKey, match=reason):
        check_csr(make_csr(request.getfixturevalue(key_name)))


def test_bad_public_key_is_a_bad_csr() -> None:
    assert issubclass(BadPublicKey, BadCSR)
    assert BadPublicKey.kind != BadCSR.kind


# --- names ------------------------------------------------------------------------------------


def test_common_name_is_not_added_to_the_sans(make_csr: MakeCsr) -> None:
    # The policy decides about the CN (it must repeat a SAN, or is dropped); facts are the CSR's.
    facts = check_csr(make_csr(cn="www.example.com", dns=["api.example.com"]))
    assert facts.common_name == "www.example.com"
    assert facts.dns_names == ("api.example.com",)
    assert facts.subject_attributes == (("CN", "www.example.com"),)


def test_cn_only_csr_has_no_sans(make_csr: MakeCsr) -> None:
    facts = check_csr(make_csr(cn="www.example.com"))
    assert facts.dns_names == () and facts.ip_addresses == () and facts.san_strings() == []


@pytest.mark.parametrize(
    ("cn", "sans"),
    [("192.0.2.10", []), ("2001:db8::1", []), ("192.0.2.10", ["198.51.100.1"])],
    ids=["ok/ipv4-cn", "ok/ipv6-cn", "ok/ip-cn-plus-other-san"],
)
def test_ip_common_name_is_not_added_to_ip_addresses(
    make_csr: MakeCsr, cn: str, sans: list[str]
) -> None:
    facts = check_csr(make_csr(cn=cn, ips=[ipaddress.ip_address(s) for s in sans]))
    assert facts.common_name == cn
    assert facts.dns_names == ()
    assert facts.ip_addresses == tuple(ipaddress.ip_address(s) for s in sans)


def test_empty_subject_with_san_has_no_common_name(make_csr: MakeCsr) -> None:
    facts = check_csr(
        make_csr(
            cn=None,
            dns=["a.example.com"],
            ips=[ipaddress.ip_address("10.0.0.1")],
            other_names=[
                x509.UniformResourceIdentifier("spiffe://corp.internal/ns/a/sa/b"),
                x509.RFC822Name("ops@example.com"),
            ],
        )
    )
    assert facts.common_name is None
    assert facts.subject_attributes == ()
    assert facts.uris == ("spiffe://corp.internal/ns/a/sa/b",)
    assert facts.emails == ("ops@example.com",)
    assert facts.san_strings() == [
        "dns:a.example.com",
        "ip:10.0.0.1",
        "uri:spiffe://corp.internal/ns/a/sa/b",
        "email:ops@example.com",
    ]


def test_duplicate_san_entries_are_collapsed(make_csr: MakeCsr) -> None:
    ip = ipaddress.ip_address("10.0.0.1")
    uri = x509.UniformResourceIdentifier("urn:example:a")
    facts = check_csr(
        make_csr(
            cn=None, dns=["a.example.com", "a.example.com"], ips=[ip, ip], other_names=[uri, uri]
        )
    )
    assert facts.dns_names == ("a.example.com",)
    assert facts.ip_addresses == (ip,)
    assert facts.uris == ("urn:example:a",)


_RAW_NAMES = [
    ("uppercase", "WWW.example.com"),
    ("trailing-dot", "www.example.com."),
    ("underscore", "under_score.example"),
    ("wildcard-on-tld", "*.com"),
    ("inner-wildcard", "www.*.example.com"),
    ("label-over-63", "a" * 64 + ".example"),
    ("bad-punycode", "xn--a.example"),
]


@pytest.mark.parametrize(
    "name", [n for _, n in _RAW_NAMES], ids=[f"ok/kept-raw/{label}" for label, _ in _RAW_NAMES]
)
def test_dns_name_syntax_is_left_to_the_policy(make_csr: MakeCsr, name: str) -> None:
    # Reported by decide() as dns.syntax / dns.wildcard_invalid together with everything else.
    assert check_csr(make_csr(cn=None, dns=[name])).dns_names == (name,)


def test_u_label_dns_name_is_kept_raw(ec_p256_key: ec.EllipticCurvePrivateKey) -> None:
    # cryptography refuses to build one; a hostile client need not use cryptography.
    name = x509.DNSName._init_without_validation("bücher.example")
    assert check_csr(_csr(ec_p256_key, x509.Name([]), sans=[name])).dns_names == ("bücher.example",)


def test_unicode_common_name_is_kept_for_the_policy(make_csr: MakeCsr) -> None:
    assert check_csr(make_csr(cn="bücher.example")).common_name == "bücher.example"


def test_more_than_one_common_name_is_refused(make_csr: MakeCsr) -> None:
    with pytest.raises(BadCSR, match="more than one common name"):
        check_csr(make_csr(cns=["a.example.com", "b.example.com"]))


@pytest.mark.parametrize(
    "name",
    [
        x509.DirectoryName(x509.Name([])),
        x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), b"\x0c\x01a"),
        x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4")),
    ],
    ids=["fail/dirname", "fail/othername-upn", "fail/registered-id"],
)
def test_unsupported_san_types_are_refused(make_csr: MakeCsr, name: x509.GeneralName) -> None:
    with pytest.raises(BadCSR, match="unsupported subjectAltName") as info:
        check_csr(make_csr(cn=None, dns=["a.example.com"], other_names=[name]))
    assert type(info.value) is BadCSR


@pytest.mark.filterwarnings("ignore:Attribute's length:UserWarning")
def test_common_name_over_64_characters_is_refused_as_bad_csr(make_csr: MakeCsr) -> None:
    # Otherwise build_leaf would fail later with ValueError from x509.NameAttribute.
    cn = "a" * 60 + ".example.com"  # a well-formed DNS name of 72 characters
    with pytest.raises(BadCSR, match="common name") as info:
        check_csr(make_csr(cn=cn))
    assert type(info.value) is BadCSR


def test_common_name_of_64_characters_is_accepted(make_csr: MakeCsr) -> None:
    cn = "a" * 52 + ".example.com"
    assert len(cn) == 64
    assert check_csr(make_csr(cn=cn)).common_name == cn


# --- subject ----------------------------------------------------------------------------------


def _csr(
    key: Any,
    subject: x509.Name,
    sans: list[x509.GeneralName] | None = None,
    extensions: list[tuple[x509.ExtensionType, bool]] | None = None,
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    for ext, critical in extensions or []:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


def _attr(oid: x509.ObjectIdentifier, value: str) -> x509.NameAttribute[str]:
    return x509.NameAttribute(oid, value, _validate=False)


def test_subject_attributes_are_listed_by_short_name_in_csr_order(
    ec_p256_key: ec.EllipticCurvePrivateKey,
) -> None:
    subject = x509.Name(
        [
            _attr(NameOID.COUNTRY_NAME, "DE"),
            _attr(NameOID.STATE_OR_PROVINCE_NAME, "Berlin"),
            _attr(NameOID.LOCALITY_NAME, "Berlin"),
            _attr(NameOID.ORGANIZATION_NAME, "Example GmbH"),
            _attr(NameOID.ORGANIZATIONAL_UNIT_NAME, "Payments"),
            _attr(NameOID.ORGANIZATIONAL_UNIT_NAME, "Ops"),
            _attr(NameOID.SERIAL_NUMBER, "42"),
            _attr(NameOID.DOMAIN_COMPONENT, "example"),
            _attr(NameOID.COMMON_NAME, "api.example.com"),
        ]
    )
    facts = check_csr(_csr(ec_p256_key, subject))
    assert facts.subject_attributes == (
        ("C", "DE"),
        ("ST", "Berlin"),
        ("L", "Berlin"),
        ("O", "Example GmbH"),
        ("OU", "Payments"),
        ("OU", "Ops"),
        ("serialNumber", "42"),
        ("0.9.2342.19200300.100.1.25", "example"),
        ("CN", "api.example.com"),
    )
    assert facts.common_name == "api.example.com"


@pytest.mark.filterwarnings("ignore:Attribute's length:UserWarning")
@pytest.mark.parametrize(
    ("oid", "value", "reason"),
    [
        (NameOID.ORGANIZATION_NAME, "", "subject attribute O is empty"),
        (NameOID.ORGANIZATION_NAME, "o" * 65, "subject attribute O is 65 octets"),
        (NameOID.LOCALITY_NAME, "l" * 129, "subject attribute L is 129 octets"),
        (NameOID.COMMON_NAME, "ü" * 33, "common name is 66 octets"),
        (NameOID.COUNTRY_NAME, "de", "two-letter country code"),
        (NameOID.COUNTRY_NAME, "DEU", "two-letter country code"),
        (NameOID.SERIAL_NUMBER, "a*b", "PrintableString"),
        (NameOID.EMAIL_ADDRESS, "ü@example.com", "IA5String"),
    ],
    ids=[
        "fail/empty-o",
        "fail/o-over-64",
        "fail/l-over-128",
        "fail/cn-over-64-octets",
        "fail/lowercase-country",
        "fail/three-letter-country",
        "fail/serial-number-not-printable",
        "fail/email-address-not-ascii",
    ],
)
def test_subject_values_that_cannot_be_reencoded_are_refused(
    ec_p256_key: ec.EllipticCurvePrivateKey, oid: x509.ObjectIdentifier, value: str, reason: str
) -> None:
    # UTF8String in the CSR: what we would re-encode as PrintableString / IA5String must fit.
    attribute = x509.NameAttribute(oid, value, _type=_ASN1Type.UTF8String, _validate=False)
    with pytest.raises(BadCSR, match=reason) as info:
        check_csr(_csr(ec_p256_key, x509.Name([attribute])))
    assert type(info.value) is BadCSR


def test_multi_valued_rdn_is_refused(ec_p256_key: ec.EllipticCurvePrivateKey) -> None:
    rdn = x509.RelativeDistinguishedName(
        [_attr(NameOID.COMMON_NAME, "a.example.com"), _attr(NameOID.ORGANIZATION_NAME, "X")]
    )
    with pytest.raises(BadCSR, match="multi-valued RDN"):
        check_csr(_csr(ec_p256_key, x509.Name([rdn])))


def test_non_string_subject_value_is_refused(ec_p256_key: ec.EllipticCurvePrivateKey) -> None:
    unique_id = x509.NameAttribute(
        NameOID.X500_UNIQUE_IDENTIFIER, b"\x00\x01", _type=_ASN1Type.BitString
    )
    with pytest.raises(BadCSR, match="not a string"):
        check_csr(_csr(ec_p256_key, x509.Name([unique_id])))


# --- extensions -------------------------------------------------------------------------------


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


_POLICIES = x509.CertificatePolicies(
    [
        x509.PolicyInformation(x509.ObjectIdentifier("2.23.140.1.2.1"), None),
        x509.PolicyInformation(x509.ObjectIdentifier("1.3.6.1.4.1.99999.7"), None),
    ]
)


@pytest.mark.parametrize(
    ("extensions", "expected", "ca", "constraints", "policies"),
    [
        ([], (), False, False, ()),
        ([(x509.BasicConstraints(ca=True, path_length=None), True)], ("basicConstraints",),
         True, False, ()),
        ([(x509.BasicConstraints(ca=False, path_length=None), True)], ("basicConstraints",),
         False, False, ()),
        (
            [
                (x509.BasicConstraints(ca=True, path_length=0), True),
                (_ca_key_usage(), True),
                (x509.NameConstraints([x509.DNSName("example.com")], None), True),
                (_POLICIES, False),
            ],
            ("basicConstraints", "keyUsage", "nameConstraints", "certificatePolicies"),
            True, True, ("2.23.140.1.2.1", "1.3.6.1.4.1.99999.7"),
        ),
    ],
    ids=["ok/san-only", "ok/ca-true-noted", "ok/ca-false-harmless", "ok/several-noted"],
)  # fmt: skip
def test_requested_extensions_are_noted_and_never_taken(
    make_csr: MakeCsr,
    extensions: list[tuple[Any, bool]],
    expected: tuple[str, ...],
    ca: bool,
    constraints: bool,
    policies: tuple[str, ...],
) -> None:
    facts = check_csr(make_csr(dns=["a.example.com"], extensions=extensions))
    assert facts.ignored_extensions == expected
    assert "subjectAltName" not in facts.ignored_extensions
    assert facts.dns_names == ("a.example.com",)
    assert facts.requests_ca is ca
    assert facts.requested_name_constraints is constraints
    assert facts.requested_policies == policies


def test_unknown_requested_extension_is_listed_by_dotted_oid(make_csr: MakeCsr) -> None:
    oid = x509.ObjectIdentifier("1.3.6.1.4.1.99999.1")
    facts = check_csr(make_csr(extensions=[(x509.UnrecognizedExtension(oid, b"\x05\x00"), False)]))
    assert facts.ignored_extensions == ("1.3.6.1.4.1.99999.1",)


def test_duplicate_extensions_are_refused(ec_p256_key: ec.EllipticCurvePrivateKey) -> None:
    # cryptography will not build such a CSR: build two extensions that differ in one OID byte,
    # make them equal, and sign the edited request info again.
    first, second = (x509.ObjectIdentifier(f"1.3.6.1.4.1.99999.{i}") for i in (1, 2))
    der = _csr(
        ec_p256_key,
        x509.Name([]),
        sans=[x509.DNSName("a.example.com")],
        extensions=[
            (x509.UnrecognizedExtension(first, b"\x05\x00"), False),
            (x509.UnrecognizedExtension(second, b"\x05\x00"), False),
        ],
    )
    request = asn1_csr.CertificationRequest.load(der)
    info = request["certification_request_info"].dump()
    oid_der = {oid: asn1_core.ObjectIdentifier(oid.dotted_string).dump() for oid in (first, second)}
    assert info.count(oid_der[second]) == 1
    info = info.replace(oid_der[second], oid_der[first])
    signature = ec_p256_key.sign(info, ec.ECDSA(hashes.SHA256()))
    duplicate = asn1_csr.CertificationRequest(
        {
            "certification_request_info": asn1_csr.CertificationRequestInfo.load(info),
            "signature_algorithm": request["signature_algorithm"],
            "signature": signature,
        }
    ).dump()
    with pytest.raises(BadCSR, match="duplicate extension") as info_:
        check_csr(duplicate)
    assert type(info_.value) is BadCSR


def test_a_certificate_is_not_a_csr(ec_p256_key: ec.EllipticCurvePrivateKey) -> None:
    name = x509.Name([_attr(NameOID.COMMON_NAME, "not.a.csr")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec_p256_key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2025, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2026, 1, 1, tzinfo=UTC))
        .sign(ec_p256_key, hashes.SHA256())
    )
    for encoding in (Encoding.DER, Encoding.PEM):
        with pytest.raises(BadCSR, match="could not be parsed"):
            check_csr(cert.public_bytes(encoding))
