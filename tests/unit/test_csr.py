"""CSR parsing and checking: formats, signatures, keys, names, and ignored extensions."""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

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


def test_cn_missing_from_san_is_added_to_dns_names_first(make_csr: MakeCsr) -> None:
    facts = check_csr(make_csr(cn="www.example.com", dns=["api.example.com"]))
    assert facts.dns_names == ("www.example.com", "api.example.com")
    assert facts.ip_addresses == ()


def test_cn_already_in_san_is_not_repeated(make_csr: MakeCsr) -> None:
    facts = check_csr(make_csr(cn="api.example.com", dns=["www.example.com", "api.example.com"]))
    assert facts.dns_names == ("www.example.com", "api.example.com")


@pytest.mark.parametrize(
    ("cn", "sans", "expected"),
    [
        ("192.0.2.10", [], ["192.0.2.10"]),
        ("2001:db8::1", [], ["2001:db8::1"]),
        ("192.0.2.10", ["198.51.100.1"], ["192.0.2.10", "198.51.100.1"]),
        ("192.0.2.10", ["192.0.2.10"], ["192.0.2.10"]),
    ],
    ids=["ok/ipv4-cn", "ok/ipv6-cn", "ok/ip-cn-plus-san", "ok/ip-cn-already-in-san"],
)
def test_ip_common_name_goes_to_ip_addresses(
    make_csr: MakeCsr, cn: str, sans: list[str], expected: list[str]
) -> None:
    facts = check_csr(make_csr(cn=cn, ips=[ipaddress.ip_address(s) for s in sans]))
    assert facts.dns_names == ()
    assert facts.ip_addresses == tuple(ipaddress.ip_address(s) for s in expected)
    assert facts.san_strings() == [f"ip:{s}" for s in expected]


def test_empty_subject_with_san_has_no_common_name(make_csr: MakeCsr) -> None:
    facts = check_csr(
        make_csr(cn=None, dns=["a.example.com"], ips=[ipaddress.ip_address("10.0.0.1")])
    )
    assert facts.common_name is None
    assert facts.san_strings() == ["dns:a.example.com", "ip:10.0.0.1"]


def test_duplicate_san_entries_are_collapsed(make_csr: MakeCsr) -> None:
    ip = ipaddress.ip_address("10.0.0.1")
    facts = check_csr(make_csr(cn=None, dns=["a.example.com", "a.example.com"], ips=[ip, ip]))
    assert facts.dns_names == ("a.example.com",)
    assert facts.ip_addresses == (ip,)


@pytest.mark.parametrize(
    "name",
    ["www.example.com", "*.example.com", "xn--bcher-kva.example", "a-b.c0.example", "localhost"],
    ids=["ok/plain", "ok/wildcard", "ok/a-label", "ok/hyphen-digit", "ok/single-label"],
)
def test_well_formed_dns_names_are_accepted(make_csr: MakeCsr, name: str) -> None:
    assert check_csr(make_csr(cn=None, dns=[name])).dns_names == (name,)


_MALFORMED_DNS = [
    ("uppercase", "WWW.example.com", "lowercase"),
    ("trailing-dot", "www.example.com.", "dot"),
    ("underscore", "under_score.example", "a-z"),
    ("leading-hyphen", "-lead.example", "'-'"),
    ("trailing-hyphen", "trail-.example", "'-'"),
    ("empty-label", "a..example", "empty"),
    ("wildcard-on-tld", "*.com", "a-z"),
    ("inner-wildcard", "www.*.example.com", "a-z"),
    ("label-over-63", "a" * 64 + ".example", "over-long"),
    ("name-over-253", ".".join(["a" * 60] * 5), "1..253"),
]


@pytest.mark.parametrize(
    ("where", "name", "reason"),
    [
        pytest.param(where, name, reason, id=f"fail/{where}/{label}")
        for where in ("san", "cn")
        for label, name, reason in _MALFORMED_DNS
        if where == "san" or len(name) <= 64  # a common name is at most 64 characters
    ],
)
def test_malformed_dns_names_are_refused(
    make_csr: MakeCsr, where: str, name: str, reason: str
) -> None:
    data = make_csr(cn=None, dns=[name]) if where == "san" else make_csr(cn=name)
    with pytest.raises(BadCSR, match=reason) as info:
        check_csr(data)
    assert type(info.value) is BadCSR
    assert repr(name) in str(info.value)


def test_unicode_common_name_is_refused(make_csr: MakeCsr) -> None:
    with pytest.raises(BadCSR, match="A-labels"):
        check_csr(make_csr(cn="bücher.example"))


def test_more_than_one_common_name_is_refused(make_csr: MakeCsr) -> None:
    with pytest.raises(BadCSR, match="more than one common name"):
        check_csr(make_csr(cns=["a.example.com", "b.example.com"]))


@pytest.mark.parametrize(
    "name",
    [
        x509.RFC822Name("ops@example.com"),
        x509.UniformResourceIdentifier("https://example.com/"),
        x509.DirectoryName(x509.Name([])),
    ],
    ids=["fail/email", "fail/uri", "fail/dirname"],
)
def test_unsupported_san_types_are_refused(make_csr: MakeCsr, name: x509.GeneralName) -> None:
    with pytest.raises(BadCSR, match="unsupported subjectAltName"):
        check_csr(make_csr(cn=None, dns=["a.example.com"], other_names=[name]))


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
    assert check_csr(make_csr(cn=cn)).dns_names == (cn,)


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


@pytest.mark.parametrize(
    ("extensions", "expected"),
    [
        ([], ()),
        ([(x509.BasicConstraints(ca=True, path_length=None), True)], ("basicConstraints",)),
        (
            [
                (x509.BasicConstraints(ca=True, path_length=0), True),
                (_ca_key_usage(), True),
                (x509.NameConstraints([x509.DNSName("example.com")], None), True),
            ],
            ("basicConstraints", "keyUsage", "nameConstraints"),
        ),
    ],
    ids=["ok/san-only", "ok/ca-true-ignored", "ok/several-ignored"],
)  # fmt: skip
def test_requested_extensions_other_than_san_are_listed_as_ignored(
    make_csr: MakeCsr, extensions: list[tuple[Any, bool]], expected: tuple[str, ...]
) -> None:
    facts = check_csr(make_csr(dns=["a.example.com"], extensions=extensions))
    assert facts.ignored_extensions == expected
    assert "subjectAltName" not in facts.ignored_extensions
    assert facts.dns_names == ("www.example.com", "a.example.com")


def test_unknown_requested_extension_is_listed_by_dotted_oid(make_csr: MakeCsr) -> None:
    oid = x509.ObjectIdentifier("1.3.6.1.4.1.99999.1")
    facts = check_csr(make_csr(extensions=[(x509.UnrecognizedExtension(oid, b"\x05\x00"), False)]))
    assert facts.ignored_extensions == ("1.3.6.1.4.1.99999.1",)
