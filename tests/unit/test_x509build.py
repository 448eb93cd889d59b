"""Certificate builders and profiles, signed with software keys (no HSM needed for pure builders)."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from ca.config import ProfileConfig
from ca.csr import CsrFacts, check_csr
from ca.errors import ConfigError
from ca.policy import Requester, decide
from ca.profiles import Profile
from ca.x509build import (
    ANY_POLICY,
    CaUrls,
    build_intermediate,
    build_leaf,
    build_root,
    ca_subject,
    leaf_validity,
)

from .conftest import MakeCsr

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
ROOT_NOT_AFTER = NOW + timedelta(days=3650)
INTERMEDIATE_NOT_AFTER = NOW + timedelta(days=1000)
URLS = CaUrls.for_issuer("http://pki.example", "root")
LEAF_URLS = CaUrls.for_issuer("http://pki.example/", "issuing")
CABF_TLS_POLICY = x509.ObjectIdentifier("2.23.140.1.2.1")


def _profile(**overrides: object) -> Profile:
    settings: dict[str, object] = {"dns_names": ["."], "ip_ranges": ["0.0.0.0/0", "::/0"]}
    settings.update(overrides)
    return Profile.from_config("server", ProfileConfig(**settings), "issuing")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def root(ec_p384_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    subject = ca_subject("Test Root CA", "Test Org", "CH")
    builder = build_root(subject, ec_p384_key.public_key(), 1 << 70, NOW, ROOT_NOT_AFTER)
    return builder.sign(ec_p384_key, hashes.SHA384())


@pytest.fixture(scope="module")
def intermediate(
    root: x509.Certificate,
    ec_p384_key: ec.EllipticCurvePrivateKey,
    ec_p256_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    subject = ca_subject("Test Issuing CA", "Test Org")
    builder = build_intermediate(
        subject, ec_p256_key.public_key(), root, 1 << 71, NOW, INTERMEDIATE_NOT_AFTER, URLS
    )
    return builder.sign(ec_p384_key, hashes.SHA384())


def _sign_leaf(
    facts: CsrFacts,
    intermediate: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    profile: Profile | None = None,
) -> x509.Certificate:
    profile = profile or _profile()
    decision = decide(facts, profile, Requester.operator("test"), NOW)
    assert decision.allowed, decision.violations
    not_before, not_after = leaf_validity(profile, NOW, intermediate)
    builder = build_leaf(
        facts, decision, profile, intermediate, 1 << 72, not_before, not_after, LEAF_URLS
    )
    return builder.sign(key, hashes.SHA256())


@pytest.fixture(scope="module")
def ec_leaf(
    make_csr: MakeCsr, intermediate: x509.Certificate, ec_p256_key: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    csr = make_csr(
        cn="www.example.com",
        dns=["www.example.com", "api.example.com"],
        ips=[ipaddress.ip_address("192.0.2.7")],
        # Harmless, and still never copied (a CSR asking for cA=true is refused by the policy).
        extensions=[(x509.BasicConstraints(ca=False, path_length=None), False)],
    )
    return _sign_leaf(check_csr(csr), intermediate, ec_p256_key)


def _ext(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.Extension:  # type: ignore[type-arg]
    return cert.extensions.get_extension_for_class(cls)


def _ski(cert: x509.Certificate) -> bytes:
    return _ext(cert, x509.SubjectKeyIdentifier).value.digest


# --- URLs and names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base", ["http://pki.example", "http://pki.example/"], ids=["ok/plain", "ok/trailing-slash"]
)
def test_ca_urls_are_built_from_the_public_base_url(base: str) -> None:
    urls = CaUrls.for_issuer(base, "root")
    assert urls == CaUrls(
        ca_issuers="http://pki.example/ca/root.crt",
        ocsp="http://pki.example/ocsp",
        crl="http://pki.example/crl/root.crl",
    )


def test_ca_subject_is_country_organization_common_name() -> None:
    assert ca_subject("CN X", "Org", "CH").rfc4514_string() == "CN=CN X,O=Org,C=CH"
    assert ca_subject("CN X", "Org").rfc4514_string() == "CN=CN X,O=Org"
    assert ca_subject("CN X", "").rfc4514_string() == "CN=CN X"


# --- root -------------------------------------------------------------------------------------


def test_root_is_self_signed_with_its_own_validity(root: x509.Certificate) -> None:
    assert root.issuer == root.subject
    root.verify_directly_issued_by(root)
    assert root.serial_number == 1 << 70
    assert root.not_valid_before_utc == NOW
    assert root.not_valid_after_utc == ROOT_NOT_AFTER
    assert root.version == x509.Version.v3


def test_root_basic_constraints_are_ca_and_critical(root: x509.Certificate) -> None:
    ext = _ext(root, x509.BasicConstraints)
    assert ext.critical
    assert ext.value.ca is True
    assert ext.value.path_length is None


@pytest.mark.parametrize("which", ["root", "intermediate"])
def test_ca_key_usage_is_cert_and_crl_sign_and_critical(
    request: pytest.FixtureRequest, which: str
) -> None:
    ext = _ext(request.getfixturevalue(which), x509.KeyUsage)
    assert ext.critical
    assert ext.value.key_cert_sign and ext.value.crl_sign
    assert not ext.value.key_encipherment and not ext.value.key_agreement


def test_root_has_a_subject_key_identifier_of_its_key(
    root: x509.Certificate, ec_p384_key: ec.EllipticCurvePrivateKey
) -> None:
    ext = _ext(root, x509.SubjectKeyIdentifier)
    assert not ext.critical
    assert ext.value == x509.SubjectKeyIdentifier.from_public_key(ec_p384_key.public_key())


# --- intermediate -----------------------------------------------------------------------------


def test_intermediate_is_issued_by_the_root(
    root: x509.Certificate, intermediate: x509.Certificate
) -> None:
    intermediate.verify_directly_issued_by(root)
    assert intermediate.issuer == root.subject
    assert intermediate.subject.rfc4514_string() == "CN=Test Issuing CA,O=Test Org"


def test_intermediate_has_path_length_zero(intermediate: x509.Certificate) -> None:
    ext = _ext(intermediate, x509.BasicConstraints)
    assert ext.critical
    assert ext.value.ca is True
    assert ext.value.path_length == 0


def test_intermediate_aki_matches_the_root_ski(
    root: x509.Certificate, intermediate: x509.Certificate
) -> None:
    aki = _ext(intermediate, x509.AuthorityKeyIdentifier)
    assert not aki.critical
    assert aki.value.key_identifier == _ski(root)
    assert _ski(intermediate) != _ski(root)


def test_intermediate_aia_has_ca_issuers_and_ocsp_urls(intermediate: x509.Certificate) -> None:
    aia = _ext(intermediate, x509.AuthorityInformationAccess)
    assert not aia.critical
    found = {(d.access_method, d.access_location.value) for d in aia.value}
    assert found == {
        (AuthorityInformationAccessOID.CA_ISSUERS, "http://pki.example/ca/root.crt"),
        (AuthorityInformationAccessOID.OCSP, "http://pki.example/ocsp"),
    }


def test_intermediate_cdp_points_to_the_root_crl(intermediate: x509.Certificate) -> None:
    cdp = _ext(intermediate, x509.CRLDistributionPoints)
    assert not cdp.critical
    [point] = cdp.value
    assert [n.value for n in point.full_name] == ["http://pki.example/crl/root.crl"]


def test_intermediate_carries_any_policy(intermediate: x509.Certificate) -> None:
    policies = _ext(intermediate, x509.CertificatePolicies).value
    assert [p.policy_identifier for p in policies] == [ANY_POLICY]


def test_intermediate_validity_is_clamped_to_the_root(
    root: x509.Certificate,
    ec_p384_key: ec.EllipticCurvePrivateKey,
    ec_p256_key: ec.EllipticCurvePrivateKey,
) -> None:
    too_long = ROOT_NOT_AFTER + timedelta(days=365)
    builder = build_intermediate(
        ca_subject("Long", "Test Org"), ec_p256_key.public_key(), root, 5 << 64, NOW, too_long, URLS
    )
    cert = builder.sign(ec_p384_key, hashes.SHA384())
    assert cert.not_valid_after_utc == ROOT_NOT_AFTER


# --- leaf -------------------------------------------------------------------------------------


def test_leaf_is_issued_by_the_intermediate(
    ec_leaf: x509.Certificate, intermediate: x509.Certificate
) -> None:
    ec_leaf.verify_directly_issued_by(intermediate)
    assert ec_leaf.subject.rfc4514_string() == "CN=www.example.com"
    assert _ext(ec_leaf, x509.AuthorityKeyIdentifier).value.key_identifier == _ski(intermediate)


def test_leaf_san_lists_the_requested_names(ec_leaf: x509.Certificate) -> None:
    san = _ext(ec_leaf, x509.SubjectAlternativeName)
    assert not san.critical  # the subject is not empty
    assert san.value.get_values_for_type(x509.DNSName) == ["www.example.com", "api.example.com"]
    assert san.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.7")]


def test_leaf_basic_constraints_are_ours_not_the_csrs(ec_leaf: x509.Certificate) -> None:
    ext = _ext(ec_leaf, x509.BasicConstraints)
    assert ext.critical
    assert ext.value.ca is False


def test_leaf_has_server_auth_eku_and_the_tls_policy(ec_leaf: x509.Certificate) -> None:
    eku = _ext(ec_leaf, x509.ExtendedKeyUsage)
    assert not eku.critical
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    policies = _ext(ec_leaf, x509.CertificatePolicies).value
    assert [p.policy_identifier for p in policies] == [CABF_TLS_POLICY]


def test_leaf_points_to_its_issuer_urls(ec_leaf: x509.Certificate) -> None:
    aia = _ext(ec_leaf, x509.AuthorityInformationAccess).value
    assert {d.access_location.value for d in aia} == {
        "http://pki.example/ca/issuing.crt",
        "http://pki.example/ocsp",
    }
    [point] = _ext(ec_leaf, x509.CRLDistributionPoints).value
    assert point.full_name[0].value == "http://pki.example/crl/issuing.crl"


def test_ec_leaf_key_usage_is_digital_signature_only(ec_leaf: x509.Certificate) -> None:
    ext = _ext(ec_leaf, x509.KeyUsage)
    assert ext.critical
    assert ext.value.digital_signature is True
    assert ext.value.key_encipherment is False
    assert ext.value.key_cert_sign is False and ext.value.crl_sign is False


def test_rsa_leaf_key_usage_adds_key_encipherment(
    make_csr: MakeCsr,
    rsa_2048_key: rsa.RSAPrivateKey,
    intermediate: x509.Certificate,
    ec_p256_key: ec.EllipticCurvePrivateKey,
) -> None:
    facts = check_csr(make_csr(rsa_2048_key, cn="rsa.example.com", dns=["rsa.example.com"]))
    cert = _sign_leaf(facts, intermediate, ec_p256_key)
    ku = _ext(cert, x509.KeyUsage).value
    assert ku.digital_signature is True
    assert ku.key_encipherment is True
    assert ku.key_cert_sign is False
    assert isinstance(cert.public_key(), rsa.RSAPublicKey)


def test_leaf_with_empty_subject_has_critical_san(
    make_csr: MakeCsr, intermediate: x509.Certificate, ec_p256_key: ec.EllipticCurvePrivateKey
) -> None:
    facts = check_csr(make_csr(cn=None, dns=["only-san.example.com"]))
    cert = _sign_leaf(facts, intermediate, ec_p256_key)
    assert len(cert.subject) == 0
    san = _ext(cert, x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.DNSName) == ["only-san.example.com"]


def _csr_der(
    key: object, subject: list[tuple[x509.ObjectIdentifier, str]], sans: list[x509.GeneralName]
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(oid, value) for oid, value in subject])
    )
    builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)  # type: ignore[arg-type]


def test_leaf_carries_uri_and_email_sans_from_the_decision(
    intermediate: x509.Certificate, ec_p256_key: ec.EllipticCurvePrivateKey
) -> None:
    spiffe = "spiffe://corp.internal/ns/pay/sa/api"
    facts = check_csr(
        _csr_der(
            ec_p256_key,
            [],
            [x509.UniformResourceIdentifier(spiffe), x509.RFC822Name("ops@corp.internal")],
        )
    )
    profile = _profile(
        uri_patterns=["spiffe://corp.internal/ns/*/sa/*"], email_patterns=["*@corp.internal"]
    )
    cert = _sign_leaf(facts, intermediate, ec_p256_key, profile)
    san = _ext(cert, x509.SubjectAlternativeName)
    assert san.critical  # empty subject
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe]
    assert san.value.get_values_for_type(x509.RFC822Name) == ["ops@corp.internal"]
    assert san.value.get_values_for_type(x509.DNSName) == []


def test_leaf_subject_comes_from_the_decision(
    intermediate: x509.Certificate, ec_p256_key: ec.EllipticCurvePrivateKey
) -> None:
    subject = [
        (NameOID.COUNTRY_NAME, "DE"),
        (NameOID.ORGANIZATION_NAME, "Example GmbH"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "Payments"),
        (NameOID.COMMON_NAME, "api.example.com"),
    ]
    facts = check_csr(_csr_der(ec_p256_key, subject, [x509.DNSName("api.example.com")]))
    kept = _sign_leaf(
        facts, intermediate, ec_p256_key, _profile(subject_attributes=["C", "O", "OU", "CN"])
    )
    assert kept.subject.rfc4514_string() == "CN=api.example.com,OU=Payments,O=Example GmbH,C=DE"
    assert not _ext(kept, x509.SubjectAlternativeName).critical
    dropped = _sign_leaf(
        facts,
        intermediate,
        ec_p256_key,
        _profile(subject_attributes=["C", "O", "OU"], common_name="drop"),
    )
    assert dropped.subject.rfc4514_string() == "OU=Payments,O=Example GmbH,C=DE"


def test_leaf_without_cn_when_the_profile_drops_it_has_critical_san(
    make_csr: MakeCsr, intermediate: x509.Certificate, ec_p256_key: ec.EllipticCurvePrivateKey
) -> None:
    facts = check_csr(make_csr(cn="Payments API", dns=["api.example.com"]))
    cert = _sign_leaf(facts, intermediate, ec_p256_key, _profile(common_name="drop"))
    assert len(cert.subject) == 0
    assert _ext(cert, x509.SubjectAlternativeName).critical


@pytest.mark.parametrize(
    ("key_name", "usages", "expected"),
    [
        ("ec_p256_key", ["digitalSignature", "keyEncipherment"], {"digital_signature"}),
        ("rsa_2048_key", ["digitalSignature", "keyEncipherment"],
         {"digital_signature", "key_encipherment"}),
        ("rsa_2048_key", ["digitalSignature"], {"digital_signature"}),
        ("ec_p256_key", ["digitalSignature", "keyAgreement"], {"digital_signature", "key_agreement"}),
        ("rsa_2048_key", ["digitalSignature", "keyAgreement", "dataEncipherment"],
         {"digital_signature", "data_encipherment"}),
        ("ec_p256_key", ["keyAgreement"], {"key_agreement"}),
        ("rsa_2048_key", ["contentCommitment", "digitalSignature"],
         {"digital_signature", "content_commitment"}),
    ],
    ids=[
        "ok/ec-default-no-key-encipherment",
        "ok/rsa-default",
        "ok/rsa-signature-only",
        "ok/ec-key-agreement",
        "ok/rsa-no-key-agreement",
        "ok/ec-key-agreement-only",
        "ok/content-commitment",
    ],
)  # fmt: skip
def test_leaf_key_usage_follows_the_profile_and_the_key_algorithm(
    make_csr: MakeCsr,
    request: pytest.FixtureRequest,
    intermediate: x509.Certificate,
    ec_p256_key: ec.EllipticCurvePrivateKey,
    key_name: str,
    usages: list[str],
    expected: set[str],
) -> None:
    facts = check_csr(make_csr(request.getfixturevalue(key_name), cn=None, dns=["k.example.com"]))
    cert = _sign_leaf(facts, intermediate, ec_p256_key, _profile(key_usage=usages))
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical
    flags = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign")  # fmt: skip
    assert {f for f in flags if getattr(ku.value, f)} == expected


def test_build_leaf_refuses_a_denied_decision(
    make_csr: MakeCsr, intermediate: x509.Certificate
) -> None:
    facts = check_csr(make_csr(cn=None, dns=["a.example.com"]))
    profile = _profile(dns_names=[".other.example"])
    decision = decide(facts, profile, Requester.operator("test"), NOW)
    assert not decision.allowed
    with pytest.raises(ValueError, match="allowed decision"):
        build_leaf(facts, decision, profile, intermediate, 1 << 72, NOW, NOW, LEAF_URLS)


@pytest.mark.parametrize(
    ("overrides", "eku", "policies"),
    [
        ({"extended_key_usage": ["clientAuth"], "certificate_policies": []},
         [ExtendedKeyUsageOID.CLIENT_AUTH], None),
        ({"extended_key_usage": [], "certificate_policies": ["1.2.3.4"]},
         None, [x509.ObjectIdentifier("1.2.3.4")]),
    ],
    ids=["ok/client-profile-no-policy", "ok/no-eku-custom-policy"],
)  # fmt: skip
def test_leaf_eku_and_policies_follow_the_profile(
    make_csr: MakeCsr,
    intermediate: x509.Certificate,
    ec_p256_key: ec.EllipticCurvePrivateKey,
    overrides: dict[str, list[str]],
    eku: list[x509.ObjectIdentifier] | None,
    policies: list[x509.ObjectIdentifier] | None,
) -> None:
    facts = check_csr(make_csr(dns=["www.example.com"]))
    cert = _sign_leaf(facts, intermediate, ec_p256_key, _profile(**overrides))
    if eku is None:
        with pytest.raises(x509.ExtensionNotFound):
            _ext(cert, x509.ExtendedKeyUsage)
    else:
        assert list(_ext(cert, x509.ExtendedKeyUsage).value) == eku
    if policies is None:
        with pytest.raises(x509.ExtensionNotFound):
            _ext(cert, x509.CertificatePolicies)
    else:
        assert [p.policy_identifier for p in _ext(cert, x509.CertificatePolicies).value] == policies


def test_leaf_aki_falls_back_to_the_issuer_public_key_without_ski(
    make_csr: MakeCsr, ec_p256_key: ec.EllipticCurvePrivateKey
) -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "No SKI CA")])
    issuer = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(ec_p256_key.public_key())
        .serial_number(1 << 64)
        .not_valid_before(NOW)
        .not_valid_after(ROOT_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ec_p256_key, hashes.SHA256())
    )
    cert = _sign_leaf(check_csr(make_csr(dns=["www.example.com"])), issuer, ec_p256_key)
    expected = x509.AuthorityKeyIdentifier.from_issuer_public_key(ec_p256_key.public_key())
    assert _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == expected.key_identifier


# --- validity ---------------------------------------------------------------------------------


def test_leaf_validity_is_backdated_and_spans_exactly_the_profile_days(
    intermediate: x509.Certificate,
) -> None:
    profile = _profile(validity_days=90, backdate_seconds=60)
    now = NOW + timedelta(microseconds=123456)
    not_before, not_after = leaf_validity(profile, now, intermediate)
    assert not_before == NOW - timedelta(seconds=60)
    assert not_before.microsecond == 0
    # Both ends are inclusive, so the span is 90 days to the second.
    assert not_after - not_before + timedelta(seconds=1) == timedelta(days=90)


def test_leaf_validity_uses_an_explicit_span(intermediate: x509.Certificate) -> None:
    not_before, not_after = leaf_validity(_profile(), NOW, intermediate, timedelta(days=7))
    assert not_after - not_before == timedelta(days=7, seconds=-1)


@pytest.mark.parametrize(
    "days_left", [0, 1, 30, 89, 90], ids=lambda d: f"ok/issuer-expires-in-{d}-days"
)
def test_leaf_validity_never_exceeds_the_issuer_not_after(
    root: x509.Certificate,
    ec_p384_key: ec.EllipticCurvePrivateKey,
    ec_p256_key: ec.EllipticCurvePrivateKey,
    days_left: int,
) -> None:
    issuer_end = NOW + timedelta(days=days_left)
    issuer = build_intermediate(
        ca_subject("Ending CA", "Test Org"), ec_p256_key.public_key(), root, 9 << 64,
        NOW - timedelta(days=365), issuer_end, URLS,
    ).sign(ec_p384_key, hashes.SHA384())  # fmt: skip
    profile = _profile(validity_days=90)
    for validity in (None, timedelta(days=397)):
        _, not_after = leaf_validity(profile, NOW, issuer, validity)
        assert not_after <= issuer.not_valid_after_utc
        assert not_after == min(
            issuer_end, NOW - timedelta(seconds=61) + (validity or timedelta(days=90))
        )


# --- profiles ---------------------------------------------------------------------------------


def test_default_profile_is_a_cabf_style_server_profile() -> None:
    profile = _profile()
    assert profile.name == "server"
    assert profile.issuer == "issuing"
    assert profile.validity == timedelta(days=90)
    assert profile.max_validity == timedelta(days=397)
    assert profile.extended_key_usage == (ExtendedKeyUsageOID.SERVER_AUTH,)
    assert profile.certificate_policies == (CABF_TLS_POLICY,)
    assert profile.backdate == timedelta(seconds=60)
    assert "ec:P-256" in profile.key_types and "rsa:2048" in profile.key_types
    assert profile.is_server()


def test_profile_names_its_own_issuer_over_the_default() -> None:
    assert Profile.from_config("x", ProfileConfig(issuer="other"), "issuing").issuer == "other"
    assert not Profile.from_config(
        "c", ProfileConfig(extended_key_usage=["clientAuth"]), "issuing"
    ).is_server()


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"extended_key_usage": ["serverAuth", "anyThing"]}, "profiles.p.extended_key_usage"),
        ({"extended_key_usage": ["serverauth"]}, "profiles.p.extended_key_usage"),
        ({"key_types": ["ec:P-256", "ed25519"]}, "profiles.p.key_types"),
        ({"key_types": ["rsa:1024"]}, "profiles.p.key_types"),
        ({"validity_days": 398}, "profiles.p.validity_days"),
        ({"validity_days": 31, "max_validity_days": 30}, "profiles.p.validity_days"),
        ({"certificate_policies": ["not-an-oid"]}, "profiles.p.certificate_policies"),
        ({"dns_names": ["Example.com"]}, "profiles.p.dns_names: 'Example.com' must be lowercase"),
        ({"dns_names": ["*.*.example"]}, "profiles.p.dns_names: '*.*.example'"),
        ({"dns_names": ["a.*.example"]}, "profiles.p.dns_names"),
        ({"dns_names": [".."]}, "profiles.p.dns_names"),
        ({"dns_names": ["xn--a.example"]}, "IDNA 2008"),
        ({"dns_names": ["bücher.example"]}, "xn--bcher-kva.example"),
        ({"ip_ranges": ["10.0.0.1/8"]}, "profiles.p.ip_ranges: '10.0.0.1/8'"),
        ({"ip_ranges": ["10.0.0.0/33"]}, "profiles.p.ip_ranges"),
        ({"ip_ranges": ["corp.example"]}, "profiles.p.ip_ranges"),
        ({"uri_patterns": ["corp.internal/ns/*"]}, "profiles.p.uri_patterns"),
        ({"uri_patterns": ["spiffe://*.corp.internal/x"]}, "only in the path"),
        ({"uri_patterns": ["spiffe://corp.internal/ns/../*"]}, "'..'"),
        ({"email_patterns": ["nobody"]}, "profiles.p.email_patterns"),
        ({"email_patterns": ["*@"]}, "profiles.p.email_patterns"),
        ({"email_patterns": ["a b@example.com"]}, "profiles.p.email_patterns"),
        ({"key_usage": ["keyCertSign"]}, "profiles.p.key_usage: unknown or CA-only"),
        ({"key_usage": ["digitalsignature"]}, "profiles.p.key_usage"),
        ({"key_usage": []}, "profiles.p.key_usage: a leaf needs"),
        ({"subject_attributes": ["CN", "cn"]}, "profiles.p.subject_attributes: unknown 'cn'"),
        ({"subject_attributes": ["2.5.4.x"]}, "profiles.p.subject_attributes"),
    ],
    ids=[
        "fail/unknown-eku",
        "fail/eku-wrong-case",
        "fail/unknown-key-type",
        "fail/small-rsa",
        "fail/validity-over-default-max",
        "fail/validity-over-custom-max",
        "fail/bad-policy-oid",
        "fail/dns-uppercase",
        "fail/dns-double-wildcard",
        "fail/dns-inner-wildcard",
        "fail/dns-empty-labels",
        "fail/dns-bad-punycode",
        "fail/dns-u-label",
        "fail/cidr-host-bits",
        "fail/cidr-prefix-too-long",
        "fail/cidr-not-an-ip",
        "fail/uri-no-scheme",
        "fail/uri-wildcard-in-host",
        "fail/uri-dot-segment",
        "fail/email-no-at",
        "fail/email-no-domain",
        "fail/email-space",
        "fail/key-usage-ca-only",
        "fail/key-usage-wrong-case",
        "fail/key-usage-empty",
        "fail/subject-attribute-wrong-case",
        "fail/subject-attribute-bad-oid",
    ],
)
def test_profile_from_config_refuses_bad_settings(
    overrides: dict[str, object], needle: str
) -> None:
    cfg = ProfileConfig(**overrides)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        Profile.from_config("p", cfg, "issuing")
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "max_days"),
    [({"validity_days": 397}, 397), ({"validity_days": 30, "max_validity_days": 30}, 30)],
    ids=["ok/validity-at-default-max", "ok/validity-at-custom-max"],
)
def test_profile_accepts_validity_up_to_the_maximum(
    overrides: dict[str, int], max_days: int
) -> None:
    profile = Profile.from_config("p", ProfileConfig(**overrides), "issuing")  # type: ignore[arg-type]
    assert profile.validity <= profile.max_validity == timedelta(days=max_days)
