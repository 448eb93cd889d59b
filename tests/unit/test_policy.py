"""The issuance policy (ca.policy.decide): every rule, every violation at once, profile hashes."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ca.config import ProfileConfig
from ca.csr import CsrFacts, check_csr
from ca.errors import ConfigError
from ca.policy import (
    ROLES,
    Decision,
    Requester,
    Violation,
    decide,
    name_constraints_of,
    violations_text,
)
from ca.profiles import Profile, profile_sha256

from .conftest import MakeCsr

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
OPERATOR = Requester.operator("alice")
PAYMENTS = Requester(
    "payments-ci",
    roles=frozenset({"enroll"}),
    names=("*.payments.internal", "spiffe://corp.internal/ns/payments/sa/*", "10.20.0.0/16"),
)


def _config(**overrides: Any) -> ProfileConfig:
    settings: dict[str, Any] = {"dns_names": ["."], "ip_ranges": ["0.0.0.0/0", "::/0"]}
    settings.update(overrides)
    return ProfileConfig(**settings)


def _profile(name: str = "web", **overrides: Any) -> Profile:
    return Profile.from_config(name, _config(**overrides), "issuing")


@pytest.fixture(scope="module")
def ec_facts(make_csr: MakeCsr) -> CsrFacts:
    """A real EC P-256 CSR's facts with every name cleared; tests put in the names they need."""
    return _clear(check_csr(make_csr(cn=None, dns=["placeholder.example"])))


@pytest.fixture(scope="module")
def rsa_facts(make_csr: MakeCsr, rsa_2048_key: rsa.RSAPrivateKey) -> CsrFacts:
    return _clear(check_csr(make_csr(rsa_2048_key, cn=None, dns=["placeholder.example"])))


def _clear(facts: CsrFacts) -> CsrFacts:
    return dataclasses.replace(
        facts, dns_names=(), ip_addresses=(), uris=(), emails=(), common_name=None
    )


def _with(
    facts: CsrFacts,
    *,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    uris: tuple[str, ...] = (),
    emails: tuple[str, ...] = (),
    subject: tuple[tuple[str, str], ...] = (),
    **changes: Any,
) -> CsrFacts:
    cn = next((v for n, v in subject if n == "CN"), None)
    return dataclasses.replace(
        facts,
        dns_names=dns,
        ip_addresses=tuple(ipaddress.ip_address(ip) for ip in ips),
        uris=uris,
        emails=emails,
        subject_attributes=subject,
        common_name=cn,
        **changes,
    )


def _decide(
    facts: CsrFacts,
    profile: Profile | None = None,
    requester: Requester = OPERATOR,
    **kwargs: Any,
) -> Decision:
    return decide(facts, profile or _profile(), requester, NOW, **kwargs)


def _rules(decision: Decision) -> list[str]:
    return [v.rule for v in decision.violations]


# --- an allowed decision ----------------------------------------------------------------------


def test_allowed_decision_carries_names_subject_validity_and_reasons(ec_facts: CsrFacts) -> None:
    profile = _profile()
    facts = _with(
        ec_facts,
        dns=("www.example.com", "api.example.com"),
        ips=("192.0.2.7", "2001:db8:0:0::1"),
        subject=(("CN", "www.example.com"),),
    )
    decision = _decide(facts, profile)
    assert decision.allowed and decision.violations == ()
    assert decision.profile == "web" and decision.profile_sha256 == profile.sha256
    assert decision.dns_names == ("www.example.com", "api.example.com")
    assert decision.ip_addresses == ("192.0.2.7", "2001:db8::1")
    assert decision.subject == (("CN", "www.example.com"),)
    assert decision.common_name == "www.example.com"
    assert decision.validity == timedelta(days=90)
    assert decision.key_usage == ("digitalSignature",)  # no keyEncipherment for EC
    assert decision.needs_approval is False
    assert decision.matched == (
        "key:ec:P-256 allowed by profile",
        "validity:90 days (profile default)",
        "dns:www.example.com allowed by profile rule .",
        "dns:api.example.com allowed by profile rule .",
        "ip:192.0.2.7 allowed by profile rule 0.0.0.0/0",
        "ip:2001:db8::1 allowed by profile rule ::/0",
        "cn:www.example.com repeats a SAN",
    )
    assert decision.san_strings() == [
        "dns:www.example.com",
        "dns:api.example.com",
        "ip:192.0.2.7",
        "ip:2001:db8::1",
    ]


def test_rsa_keys_keep_key_encipherment(rsa_facts: CsrFacts) -> None:
    decision = _decide(_with(rsa_facts, dns=("rsa.example.com",)))
    assert decision.allowed
    assert decision.key_usage == ("digitalSignature", "keyEncipherment")


def test_decision_audit_details_and_texts(ec_facts: CsrFacts) -> None:
    denied = _decide(_with(ec_facts, dns=("a.example.com", "B.example.com")), validity_days=0)
    assert denied.audit_details() == {
        "profile": "web",
        "profile_sha256": _profile().sha256,
        "allowed": False,
        "violations": [v.as_dict() for v in denied.violations],
        "matched": list(denied.matched),
    }
    assert denied.violations[0].as_dict() == {
        "rule": "validity.too_short",
        "detail": "validity_days must be at least 1",
        "value": "0",
    }
    assert Violation("x.y", "no value").as_dict() == {"rule": "x.y", "detail": "no value"}
    assert violations_text(denied.violations) == "; ".join(v.detail for v in denied.violations)
    json.dumps(denied.audit_details())  # JSON-serialisable as the audit chain needs


def test_the_decision_does_not_depend_on_now(ec_facts: CsrFacts) -> None:
    facts = _with(ec_facts, dns=("a.example.com",))
    profile = _profile()
    assert decide(facts, profile, OPERATOR, NOW) == decide(
        facts, profile, OPERATOR, NOW + timedelta(days=3650)
    )


# --- requester --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requester", "rules"),
    [
        (Requester("bot", roles=frozenset({"read", "revoke"})), ["requester.role_missing"]),
        (Requester("bot"), ["requester.role_missing"]),
        (Requester("boss", roles=frozenset({"admin"})), []),
        (Requester("ci", roles=frozenset({"enroll"}), profiles=frozenset({"client"})),
         ["profile.not_permitted_for_requester"]),
        (Requester("ci", roles=frozenset({"enroll"}), profiles=frozenset({"web", "client"})), []),
        (Requester("x", roles=frozenset({"read"}), profiles=frozenset({"client"})),
         ["requester.role_missing", "profile.not_permitted_for_requester"]),
        (OPERATOR, []),
    ],
    ids=[
        "fail/no-enroll-role", "fail/no-roles", "ok/admin", "fail/profile-not-listed",
        "ok/profile-listed", "fail/both", "ok/operator",
    ],
)  # fmt: skip
def test_requester_roles_and_profiles(
    ec_facts: CsrFacts, requester: Requester, rules: list[str]
) -> None:
    decision = _decide(_with(ec_facts, dns=("a.example.com",)), requester=requester)
    assert _rules(decision) == rules


def test_operator_has_every_role() -> None:
    assert OPERATOR.roles == frozenset(ROLES)
    assert all(OPERATOR.has_role(r) for r in ROLES)
    assert not OPERATOR.rules


@pytest.mark.parametrize(
    "rule",
    ["Payments.internal", "*.*.internal", "10.0.0.1/8", "spiffe://*.corp/x", "a@b@c", ".."],
    ids=["fail/uppercase", "fail/double-wildcard", "fail/cidr-host-bits", "fail/uri-host-star",
         "fail/email", "fail/empty-labels"],
)  # fmt: skip
def test_a_requester_with_a_bad_name_rule_cannot_be_made(rule: str) -> None:
    with pytest.raises(ConfigError, match=r"requester 'ci': name rule"):
        Requester("ci", roles=frozenset({"enroll"}), names=("ok.example", rule))


# --- key --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "overrides", "rules"),
    [
        ("ec", {"key_types": ["rsa:2048", "rsa:3072"]}, ["key.type_not_allowed"]),
        ("rsa", {"key_types": ["ec:P-256"]}, ["key.type_not_allowed"]),
        ("ec", {"key_types": ["ec:P-384"]}, ["key.type_not_allowed"]),
        ("ec", {"key_usage": ["keyEncipherment"]}, ["key.usage_not_applicable"]),
        ("rsa", {"key_usage": ["keyAgreement"]}, ["key.usage_not_applicable"]),
        ("rsa", {"key_usage": ["keyEncipherment"]}, []),
        ("ec", {"key_usage": ["keyAgreement"]}, []),
    ],
    ids=["fail/ec-in-rsa-profile", "fail/rsa-in-ec-profile", "fail/wrong-curve",
         "fail/ec-key-encipherment-only", "fail/rsa-key-agreement-only",
         "ok/rsa-key-encipherment-only", "ok/ec-key-agreement-only"],
)  # fmt: skip
def test_key_rules(
    ec_facts: CsrFacts,
    rsa_facts: CsrFacts,
    which: str,
    overrides: dict[str, Any],
    rules: list[str],
) -> None:
    facts = _with(ec_facts if which == "ec" else rsa_facts, dns=("k.example.com",))
    decision = _decide(facts, _profile(**overrides))
    assert _rules(decision) == rules
    if rules:
        assert decision.violations[0].value == facts.key_type


def test_key_type_violation_names_the_accepted_types(ec_facts: CsrFacts) -> None:
    decision = _decide(_with(ec_facts, dns=("k.example.com",)), _profile(key_types=["rsa:2048"]))
    assert decision.violations[0].detail == (
        "profile 'web' does not accept ec:P-256 keys (accepted: rsa:2048)"
    )


# --- validity ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "rules", "validity"),
    [
        (None, [], timedelta(days=90)),
        (1, [], timedelta(days=1)),
        (30, [], timedelta(days=30)),
        (200, [], timedelta(days=200)),
        (201, ["validity.too_long"], None),
        (4000, ["validity.too_long"], None),
        (0, ["validity.too_short"], None),
        (-5, ["validity.too_short"], None),
    ],
    ids=["ok/default", "ok/one-day", "ok/shorter", "ok/at-maximum", "fail/one-over-maximum",
         "fail/far-over-maximum", "fail/zero", "fail/negative"],
)  # fmt: skip
def test_validity(
    ec_facts: CsrFacts, days: int | None, rules: list[str], validity: timedelta | None
) -> None:
    profile = _profile(validity_days=90, max_validity_days=200)
    decision = _decide(_with(ec_facts, dns=("v.example.com",)), profile, validity_days=days)
    assert _rules(decision) == rules
    assert decision.validity == validity
    if rules == ["validity.too_long"]:
        assert decision.violations[0].detail == (
            f"validity of {days} days exceeds profile 'web' maximum of 200 days"
        )


# --- requested extensions (real CSRs) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("extension", "rule", "value"),
    [
        (x509.BasicConstraints(ca=True, path_length=None), "extension.ca_requested",
         "basicConstraints"),
        (x509.BasicConstraints(ca=True, path_length=0), "extension.ca_requested",
         "basicConstraints"),
        (x509.NameConstraints([x509.DNSName("example.com")], None),
         "extension.name_constraints_requested", "nameConstraints"),
        (x509.CertificatePolicies([x509.PolicyInformation(x509.ObjectIdentifier("1.2.3.4"), None)]),
         "extension.policies_requested", "1.2.3.4"),
        (x509.CertificatePolicies(
            [x509.PolicyInformation(x509.ObjectIdentifier("2.5.29.32.0"), None)]),
         "extension.policies_requested", "2.5.29.32.0"),
    ],
    ids=["fail/ca-true", "fail/ca-true-pathlen-0", "fail/name-constraints", "fail/policy-oid",
         "fail/any-policy"],
)  # fmt: skip
def test_requested_authority_extensions_are_refused(
    make_csr: MakeCsr, extension: x509.ExtensionType, rule: str, value: str
) -> None:
    facts = check_csr(
        make_csr(cn="a.example.com", dns=["a.example.com"], extensions=[(extension, True)])
    )
    decision = _decide(facts)
    assert _rules(decision) == [rule]
    assert decision.violations[0].value == value


@pytest.mark.parametrize(
    "extension",
    [
        x509.BasicConstraints(ca=False, path_length=None),
        x509.KeyUsage(True, False, True, False, False, False, False, False, False),
        x509.ExtendedKeyUsage([x509.ObjectIdentifier("1.3.6.1.5.5.7.3.3")]),
        x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"),
    ],
    ids=["ok/ca-false", "ok/key-usage", "ok/eku-code-signing", "ok/unknown"],
)
def test_other_requested_extensions_are_ignored_not_refused(
    make_csr: MakeCsr, extension: x509.ExtensionType
) -> None:
    facts = check_csr(make_csr(cn=None, dns=["a.example.com"], extensions=[(extension, False)]))
    assert _decide(facts).allowed
    assert facts.ignored_extensions


# --- DNS names --------------------------------------------------------------------------------

_DNS_SYNTAX = [
    ("u-label", "bücher.example", "dns.syntax", "xn--bcher-kva.example"),
    ("fullwidth-dot", "www\uff0eexample.com", "dns.syntax", "U+FF0E"),
    ("homoglyph", "p\u0430ypal.com", "dns.syntax", "xn--"),
    ("mixed-case", "Www.Example.com", "dns.syntax", "must be lowercase"),
    ("trailing-dot", "www.example.com.", "dns.syntax", "must not end with a dot"),
    ("empty-label", "www..example.com", "dns.syntax", "empty label"),
    ("label-64", "a" * 64 + ".example.com", "dns.syntax", "at most 63"),
    ("name-254", ".".join(["a" * 63] * 3 + ["b" * 62]), "dns.syntax", "at most 253"),
    ("invalid-punycode", "xn--a.example.com", "dns.syntax", "IDNA 2008"),
    ("disallowed-punycode", "xn--ls8h.example.com", "dns.syntax", "IDNA 2008"),
    ("underscore", "_dmarc.example.com", "dns.syntax", "underscore"),
    ("hyphens", "ab--cd.example.com", "dns.syntax", "positions 3-4"),
    ("numeric-tld", "host.42", "dns.syntax", "all digits"),
    ("ip-as-dns", "10.0.0.1", "dns.syntax", "all digits"),
    ("wildcard-tld", "*.com", "dns.wildcard_invalid", "two labels"),
    ("wildcard-inner", "a.*.b", "dns.wildcard_invalid", "leftmost"),
    ("wildcard-alone", "*", "dns.wildcard_invalid", "alone"),
    ("wildcard-double", "**.a.b", "dns.wildcard_invalid", "whole leftmost label"),
    ("wildcard-partial", "*a.b.c", "dns.wildcard_invalid", "whole leftmost label"),
]


@pytest.mark.parametrize(
    ("name", "rule", "reason"),
    [pytest.param(n, r, why, id=f"fail/{i}") for i, n, r, why in _DNS_SYNTAX],
)
def test_dns_name_syntax_violations(ec_facts: CsrFacts, name: str, rule: str, reason: str) -> None:
    decision = _decide(_with(ec_facts, dns=(name,)), _profile(allow_wildcards=True))
    assert _rules(decision) == [rule]
    [violation] = decision.violations
    assert violation.value == name
    assert violation.detail.startswith(f"DNS name {name!r} ")
    assert reason in violation.detail
    assert "\n" not in violation.detail
    assert decision.dns_names == ()


def test_u_label_smuggled_into_a_real_csr_is_refused(
    ec_p256_key: ec.EllipticCurvePrivateKey,
) -> None:
    san = x509.SubjectAlternativeName([x509.DNSName._init_without_validation("bücher.example")])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(san, critical=False)
        .sign(ec_p256_key, hashes.SHA256())
    )
    decision = _decide(check_csr(csr.public_bytes(Encoding.DER)))
    assert _rules(decision) == ["dns.syntax"]
    assert "write 'xn--bcher-kva.example'" in decision.violations[0].detail


@pytest.mark.parametrize(
    ("allow", "name", "rules"),
    [
        (False, "*.example.com", ["dns.wildcard_not_allowed"]),
        (True, "*.example.com", []),
        (True, "*.a.b.example.com", []),
        (False, "*.com", ["dns.wildcard_invalid"]),
        (True, "*.com", ["dns.wildcard_invalid"]),
        (False, "www.example.com", []),
    ],
    ids=["fail/wildcard-not-allowed", "ok/wildcard-allowed", "ok/deep-wildcard",
         "fail/tld-wildcard", "fail/tld-wildcard-even-if-allowed", "ok/plain"],
)  # fmt: skip
def test_wildcards_need_the_profile(
    ec_facts: CsrFacts, allow: bool, name: str, rules: list[str]
) -> None:
    decision = _decide(_with(ec_facts, dns=(name,)), _profile(allow_wildcards=allow))
    assert _rules(decision) == rules


_PROFILE_DNS = [".svc.cluster.local", "*.corp.example", "api.example.com"]


@pytest.mark.parametrize(
    ("name", "allowed", "rule"),
    [
        ("web.default.svc.cluster.local", True, ".svc.cluster.local"),
        ("svc.cluster.local", False, None),
        ("evilsvc.cluster.local", False, None),
        ("app.corp.example", True, "*.corp.example"),
        ("*.corp.example", True, "*.corp.example"),
        ("a.app.corp.example", False, None),
        ("corp.example", False, None),
        ("api.example.com", True, "api.example.com"),
        ("www.example.com", False, None),
        ("api.example.com.evil", False, None),
    ],
    ids=["ok/suffix-deep", "fail/suffix-itself", "fail/suffix-lookalike", "ok/one-label",
         "ok/one-label-wildcard", "fail/one-label-too-deep", "fail/one-label-base", "ok/exact",
         "fail/exact-other", "fail/exact-prefix"],
)  # fmt: skip
def test_profile_dns_rules(ec_facts: CsrFacts, name: str, allowed: bool, rule: str | None) -> None:
    profile = _profile(dns_names=_PROFILE_DNS, allow_wildcards=True)
    decision = _decide(_with(ec_facts, dns=(name,)), profile)
    if allowed:
        assert decision.allowed
        assert f"dns:{name} allowed by profile rule {rule}" in decision.matched
    else:
        assert _rules(decision) == ["dns.not_allowed"]
        assert decision.violations[0].detail == (
            f"DNS name {name!r} is not allowed by profile 'web' "
            "(allowed: .svc.cluster.local, *.corp.example, api.example.com)"
        )


def test_profile_without_dns_rules_allows_no_dns_names(ec_facts: CsrFacts) -> None:
    decision = _decide(_with(ec_facts, dns=("a.example.com",)), _profile(dns_names=[]))
    assert _rules(decision) == ["dns.not_allowed"]
    assert "(allowed: none)" in decision.violations[0].detail


# --- requester restrictions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dns", "ips", "rules"),
    [
        (("api.payments.internal",), (), []),
        (("*.payments.internal",), (), []),
        (("a.b.payments.internal",), (), ["dns.requester_not_allowed"]),
        (("x.orders.internal",), (), ["dns.requester_not_allowed"]),
        (("payments.internal",), (), ["dns.requester_not_allowed"]),
        (("api.payments.internal",), ("10.20.1.2",), []),
        (("api.payments.internal",), ("10.30.1.2",), ["ip.requester_not_allowed"]),
        (("api.payments.internal", "x.orders.internal"), ("10.30.1.2",),
         ["dns.requester_not_allowed", "ip.requester_not_allowed"]),
    ],
    ids=["ok/one-label", "ok/wildcard", "fail/two-labels", "fail/other-team",
         "fail/base-name", "ok/own-ip", "fail/other-ip", "fail/several"],
)  # fmt: skip
def test_payments_team_restrictions(
    ec_facts: CsrFacts, dns: tuple[str, ...], ips: tuple[str, ...], rules: list[str]
) -> None:
    decision = _decide(
        _with(ec_facts, dns=dns, ips=ips), _profile(allow_wildcards=True), requester=PAYMENTS
    )
    assert _rules(decision) == rules
    for violation in decision.violations:
        assert violation.detail.startswith("requester 'payments-ci' may not have ")


def test_matched_records_name_the_profile_and_requester_rules(ec_facts: CsrFacts) -> None:
    requester = Requester("svc", roles=frozenset({"enroll"}), names=("*.svc.local",))
    profile = _profile(dns_names=[".svc.local"])
    decision = _decide(_with(ec_facts, dns=("a.svc.local",)), profile, requester)
    assert decision.allowed
    assert "dns:a.svc.local allowed by profile rule .svc.local; requester rule *.svc.local" in (
        decision.matched
    )


def test_requester_with_only_dns_rules_gets_no_other_sans(ec_facts: CsrFacts) -> None:
    requester = Requester("web", roles=frozenset({"enroll"}), names=(".web.internal",))
    profile = _profile(uri_patterns=["urn:example:*"], email_patterns=["*@example.com"])
    facts = _with(
        ec_facts,
        dns=("a.web.internal",),
        ips=("10.0.0.1",),
        uris=("urn:example:x",),
        emails=("ops@example.com",),
    )
    assert _rules(_decide(facts, profile, requester)) == [
        "ip.requester_not_allowed",
        "uri.requester_not_allowed",
        "email.requester_not_allowed",
    ]


def test_profile_and_requester_are_both_reported(ec_facts: CsrFacts) -> None:
    profile = _profile(dns_names=[".corp.example"])
    decision = _decide(_with(ec_facts, dns=("x.orders.internal",)), profile, PAYMENTS)
    assert _rules(decision) == ["dns.not_allowed", "dns.requester_not_allowed"]


# --- IP addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "allowed"),
    [
        ("10.1.2.3", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("192.0.2.1", False),
        ("2001:db8::1", True),
        ("2001:db8:ffff:ffff::1", True),
        ("2001:db9::1", False),
        ("::ffff:10.1.2.3", False),
        ("fe80::1", False),
    ],
    ids=["ok/v4", "ok/v4-edge", "fail/v4-outside", "fail/v4-other", "ok/v6", "ok/v6-edge",
         "fail/v6-outside", "fail/v4-mapped", "fail/link-local"],
)  # fmt: skip
def test_ip_ranges_v4_and_v6(ec_facts: CsrFacts, ip: str, allowed: bool) -> None:
    profile = _profile(ip_ranges=["10.0.0.0/8", "2001:db8::/32"])
    decision = _decide(_with(ec_facts, ips=(ip,)), profile)
    assert _rules(decision) == ([] if allowed else ["ip.not_allowed"])
    assert decision.ip_addresses == (str(ipaddress.ip_address(ip)),)


def test_profile_without_ip_ranges_allows_no_ip_addresses(ec_facts: CsrFacts) -> None:
    decision = _decide(_with(ec_facts, ips=("10.0.0.1",)), _profile(ip_ranges=[]))
    assert _rules(decision) == ["ip.not_allowed"]


# --- URIs (SPIFFE) and email addresses --------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "rules"),
    [
        ("spiffe://corp.internal/ns/payments/sa/api", []),
        ("spiffe://corp.internal/ns/orders/sa/api", ["uri.requester_not_allowed"]),
        ("spiffe://corp.internal/ns/payments/sa/api/x",
         ["uri.not_allowed", "uri.requester_not_allowed"]),
        ("spiffe://other.internal/ns/payments/sa/api",
         ["uri.not_allowed", "uri.requester_not_allowed"]),
        ("spiffe://corp.internal/ns/payments/sa/../x", ["uri.syntax"]),
        ("spiffe://corp.internal/ns/pay%2Fments/sa/x", ["uri.syntax"]),
        ("corp.internal/ns/payments/sa/api", ["uri.syntax"]),
    ],
    ids=["ok/own-namespace", "fail/other-namespace", "fail/extra-segment",
         "fail/other-trust-domain", "fail/dot-dot", "fail/encoded-slash", "fail/no-scheme"],
)  # fmt: skip
def test_spiffe_uri_patterns(ec_facts: CsrFacts, uri: str, rules: list[str]) -> None:
    profile = _profile(uri_patterns=["spiffe://corp.internal/ns/*/sa/*"], require_san=True)
    decision = _decide(_with(ec_facts, uris=(uri,)), profile, PAYMENTS)
    assert _rules(decision) == rules
    if not rules:
        assert decision.uris == (uri,)
        assert decision.matched[-1] == (
            f"uri:{uri} allowed by profile rule spiffe://corp.internal/ns/*/sa/*; "
            "requester rule spiffe://corp.internal/ns/payments/sa/*"
        )


@pytest.mark.parametrize(
    ("email", "rules"),
    [
        ("ops@corp.example", []),
        ("dev@eu.corp.example", []),
        ("boss@partner.example", []),
        ("other@partner.example", ["email.not_allowed"]),
        ("x@evilcorp.example", ["email.not_allowed"]),
        ("x@Corp.example", ["email.syntax"]),
        ("jörg@corp.example", ["email.syntax"]),
        ("no-at-sign", ["email.syntax"]),
    ],
    ids=["ok/domain", "ok/subdomain", "ok/exact", "fail/exact-other", "fail/lookalike",
         "fail/uppercase-domain", "fail/utf8-local", "fail/no-at"],
)  # fmt: skip
def test_email_patterns(ec_facts: CsrFacts, email: str, rules: list[str]) -> None:
    profile = _profile(email_patterns=["*@corp.example", "*@.corp.example", "boss@partner.example"])
    assert _rules(_decide(_with(ec_facts, emails=(email,)), profile)) == rules


def test_profile_without_patterns_allows_no_uris_or_emails(ec_facts: CsrFacts) -> None:
    facts = _with(ec_facts, uris=("urn:example:a",), emails=("a@example.com",))
    assert _rules(_decide(facts)) == ["uri.not_allowed", "email.not_allowed"]


# --- common name and subject ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cn", "dns", "ips", "rules", "hint"),
    [
        ("www.example.com", ("www.example.com",), (), [], None),
        ("192.0.2.10", (), ("192.0.2.10",), [], None),
        ("2001:db8::1", (), ("2001:db8::1",), [], None),
        ("www.example.com", ("api.example.com",), (), ["cn.not_a_san"], None),
        ("Payments API", ("api.example.com",), (), ["cn.not_a_san"], None),
        ("WWW.example.com", ("www.example.com",), (), ["cn.not_a_san"], None),
        ("2001:DB8::1", (), ("2001:db8::1",), ["cn.not_a_san"], "write the IP address as '2001:db8::1'"),
        ("bücher.example", ("xn--bcher-kva.example",), (), ["cn.not_a_san"],
         "write 'xn--bcher-kva.example'"),
        ("www.example.com", (), (), ["cn.not_a_san", "san.missing"], None),
    ],
    ids=["ok/cn-is-dns-san", "ok/cn-is-ipv4-san", "ok/cn-is-ipv6-san", "fail/cn-other-name",
         "fail/cn-free-text", "fail/cn-case-differs", "fail/cn-ipv6-not-canonical",
         "fail/cn-u-label", "fail/cn-only"],
)  # fmt: skip
def test_common_name_must_repeat_a_san(
    ec_facts: CsrFacts,
    cn: str,
    dns: tuple[str, ...],
    ips: tuple[str, ...],
    rules: list[str],
    hint: str | None,
) -> None:
    decision = _decide(_with(ec_facts, dns=dns, ips=ips, subject=(("CN", cn),)))
    assert _rules(decision) == rules
    if "cn.not_a_san" in rules:
        violation = decision.violations[0]
        assert violation.value == cn
        assert "add it as a SAN or leave the CN out" in violation.detail
        if hint:
            assert hint in violation.detail
    else:
        assert decision.subject == (("CN", cn),)


def test_common_name_may_repeat_a_uri_san(ec_facts: CsrFacts) -> None:
    uri = "spiffe://corp.internal/ns/a/sa/b"
    profile = _profile(uri_patterns=["spiffe://corp.internal/ns/*/sa/*"])
    decision = _decide(_with(ec_facts, uris=(uri,), subject=(("CN", uri),)), profile)
    assert decision.allowed and decision.common_name == uri


def test_profile_may_drop_the_common_name(ec_facts: CsrFacts) -> None:
    profile = _profile(common_name="drop", subject_attributes=["O"])
    facts = _with(
        ec_facts, dns=("api.example.com",), subject=(("O", "Example"), ("CN", "Payments API"))
    )
    decision = _decide(facts, profile)
    assert decision.allowed
    assert decision.subject == (("O", "Example"),)
    assert decision.common_name is None
    assert "cn:Payments API dropped from the subject by profile" in decision.matched


@pytest.mark.parametrize(
    ("require_san", "subject", "rules"),
    [
        (True, (), ["san.missing"]),
        (True, (("CN", "x"),), ["cn.not_a_san", "san.missing"]),
        (False, (), ["san.missing"]),
        (False, (("O", "Example"),), []),
    ],
    ids=["fail/nothing", "fail/cn-only", "fail/names-nobody", "ok/subject-only-if-no-san-needed"],
)
def test_a_certificate_needs_a_name(
    ec_facts: CsrFacts, require_san: bool, subject: tuple[tuple[str, str], ...], rules: list[str]
) -> None:
    profile = _profile(require_san=require_san, subject_attributes=["CN", "O"])
    assert _rules(_decide(_with(ec_facts, subject=subject), profile)) == rules


def test_subject_attributes_outside_the_profile_are_refused(ec_facts: CsrFacts) -> None:
    subject = (
        ("C", "DE"),
        ("O", "Example"),
        ("OU", "Payments"),
        ("0.9.2342.19200300.100.1.25", "example"),
        ("CN", "api.example.com"),
    )
    facts = _with(ec_facts, dns=("api.example.com",), subject=subject)
    decision = _decide(facts, _profile(subject_attributes=["CN", "O"]))
    assert _rules(decision) == ["subject.attribute_not_allowed"] * 3
    assert [v.value for v in decision.violations] == ["C", "OU", "0.9.2342.19200300.100.1.25"]
    assert decision.violations[0].detail == (
        "subject attribute C='DE' is not allowed by profile 'web' (allowed: CN, O)"
    )
    allowed = _decide(
        facts, _profile(subject_attributes=["C", "O", "OU", "CN", "0.9.2342.19200300.100.1.25"])
    )
    assert allowed.allowed and allowed.subject == subject


# --- issuer name constraints ------------------------------------------------------------------


_ANY_URI = ["spiffe://x.corp.internal/*", "spiffe://corp.internal/*", "urn:example:*"]


@pytest.fixture(scope="module")
def constrained_ca(ec_p384_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Corp Constrained CA")])
    constraints = x509.NameConstraints(
        permitted_subtrees=[
            x509.DNSName("corp.example"),
            x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")),
            x509.UniformResourceIdentifier(".corp.internal"),
        ],
        excluded_subtrees=[x509.DNSName("secret.corp.example")],
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec_p384_key.public_key())
        .serial_number(1 << 64)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(constraints, critical=True)
        .sign(ec_p384_key, hashes.SHA384())
    )


@pytest.mark.parametrize(
    ("dns", "ips", "uris", "rules"),
    [
        (("a.corp.example",), ("10.1.1.1",), ("spiffe://x.corp.internal/a",), []),
        (("corp.example",), (), (), []),
        (("a.other.example",), (), (), ["name_constraints.not_permitted"]),
        (("db.secret.corp.example",), (), (), ["name_constraints.excluded"]),
        (("*.corp.example",), (), (), ["name_constraints.excluded"]),
        (("*.eu.corp.example",), (), (), []),
        ((), ("192.0.2.1",), (), ["name_constraints.not_permitted"]),
        ((), (), ("spiffe://corp.internal/a",), ["name_constraints.not_permitted"]),
        ((), (), ("urn:example:a",), ["name_constraints.not_permitted"]),
        (("a.corp.example", "evil.example"), ("192.0.2.1",), (),
         ["name_constraints.not_permitted", "name_constraints.not_permitted"]),
    ],
    ids=["ok/all-inside", "ok/base-name", "fail/outside", "fail/excluded",
         "fail/wildcard-covers-excluded", "ok/wildcard-inside", "fail/ip-outside",
         "fail/uri-host-not-below", "fail/uri-without-host", "fail/two-outside"],
)  # fmt: skip
def test_issuer_name_constraints(
    ec_facts: CsrFacts,
    constrained_ca: x509.Certificate,
    dns: tuple[str, ...],
    ips: tuple[str, ...],
    uris: tuple[str, ...],
    rules: list[str],
) -> None:
    constraints = name_constraints_of(constrained_ca)
    assert constraints is not None
    profile = _profile(allow_wildcards=True, uri_patterns=_ANY_URI)
    facts = _with(ec_facts, dns=dns, ips=ips, uris=uris)
    decision = _decide(facts, profile, issuer_constraints=constraints)
    assert _rules(decision) == rules
    if not rules:
        assert decision.matched[-1] == "name_constraints:every name is within the issuing CA's"


def test_unconstrained_issuer_has_no_name_constraints(
    ec_p256_key: ec.EllipticCurvePrivateKey,
) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Open CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec_p256_key.public_key())
        .serial_number(1 << 64)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(ec_p256_key, hashes.SHA256())
    )
    assert name_constraints_of(cert) is None


# --- approval ---------------------------------------------------------------------------------


@pytest.mark.parametrize("needed", [True, False], ids=["ok/approval", "ok/no-approval"])
def test_needs_approval_comes_from_the_profile(ec_facts: CsrFacts, needed: bool) -> None:
    decision = _decide(_with(ec_facts, dns=("a.example.com",)), _profile(requires_approval=needed))
    assert decision.allowed and decision.needs_approval is needed
    assert ("approval:required by profile web" in decision.matched) is needed


# --- every violation at once ------------------------------------------------------------------


def test_every_violated_rule_is_reported_at_once(
    make_csr: MakeCsr, constrained_ca: x509.Certificate
) -> None:
    facts = check_csr(
        make_csr(
            cn="Payments Service",
            dns=["api.payments.internal", "*.payments.internal", "x..y"],
            ips=[ipaddress.ip_address("192.0.2.9")],
            other_names=[x509.UniformResourceIdentifier("spiffe://corp.internal/ns/a/sa/b")],
            extensions=[
                (x509.BasicConstraints(ca=True, path_length=None), True),
                (x509.NameConstraints([x509.DNSName("payments.internal")], None), True),
            ],
        )
    )
    profile = _profile(
        key_types=["rsa:2048"],
        dns_names=[".payments.internal"],
        ip_ranges=["10.0.0.0/8"],
        max_validity_days=90,
        validity_days=30,
    )
    requester = Requester(
        "payments-ci",
        roles=frozenset({"read"}),
        profiles=frozenset({"client"}),
        names=("*.payments.internal",),
    )
    decision = decide(
        facts,
        profile,
        requester,
        NOW,
        validity_days=365,
        issuer_constraints=name_constraints_of(constrained_ca),
    )
    assert _rules(decision) == [
        "requester.role_missing",
        "profile.not_permitted_for_requester",
        "key.type_not_allowed",
        "validity.too_long",
        "extension.ca_requested",
        "extension.name_constraints_requested",
        "dns.wildcard_not_allowed",
        "dns.syntax",
        "ip.not_allowed",
        "ip.requester_not_allowed",
        "uri.not_allowed",
        "uri.requester_not_allowed",
        "cn.not_a_san",
        "name_constraints.not_permitted",
        "name_constraints.not_permitted",
        "name_constraints.not_permitted",
        "name_constraints.not_permitted",
    ]
    assert [v.value for v in decision.violations[-4:]] == [
        "dns:api.payments.internal",
        "dns:*.payments.internal",
        "ip:192.0.2.9",
        "uri:spiffe://corp.internal/ns/a/sa/b",
    ]
    assert not decision.allowed
    text = violations_text(decision.violations)
    assert "\n" not in text and text.count("; ") >= len(decision.violations) - 1


# --- profiles: new settings and their hash ----------------------------------------------------


def test_profile_parses_the_name_rules() -> None:
    profile = _profile(
        dns_names=[".svc.local", "*.corp.example", "api.example.com"],
        ip_ranges=["10.0.0.0/8", "2001:db8::/32"],
        uri_patterns=["spiffe://corp.internal/ns/*/sa/*"],
        email_patterns=["*@corp.example"],
        allow_wildcards=True,
        key_usage=["digitalSignature", "digitalSignature", "keyEncipherment"],
        subject_attributes=["CN", "O", "2.5.4.97"],
        common_name="drop",
        requires_approval=True,
        approval_ttl_hours=24,
        description="internal services",
    )
    assert [r.kind for r in profile.dns_rules] == ["suffix", "one_label", "exact"]
    assert [str(n) for n in profile.ip_ranges] == ["10.0.0.0/8", "2001:db8::/32"]
    assert [str(p) for p in profile.uri_patterns] == ["spiffe://corp.internal/ns/*/sa/*"]
    assert [str(p) for p in profile.email_patterns] == ["*@corp.example"]
    assert profile.allow_wildcards and profile.requires_approval
    assert profile.key_usage == ("digitalSignature", "keyEncipherment")
    assert profile.subject_attributes == frozenset({"CN", "O", "2.5.4.97"})
    assert profile.common_name == "drop"
    assert profile.approval_ttl_hours == 24
    assert profile.description == "internal services"


def test_profile_sha256_is_the_documented_hash() -> None:
    cfg = _config(dns_names=[".svc.local"], description="Zürich")
    expected = hashlib.sha256(
        json.dumps(
            {"name": "web", "config": cfg.model_dump(mode="json")},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode("utf-8")
    ).hexdigest()
    profile = Profile.from_config("web", cfg, "issuing")
    assert profile.sha256 == expected == profile_sha256("web", cfg)
    assert len(profile.sha256) == 64 and int(profile.sha256, 16) >= 0


def test_profile_sha256_is_stable() -> None:
    first = _profile(dns_names=[".svc.local"], ip_ranges=["10.0.0.0/8"])
    again = Profile.from_config(
        "web",
        ProfileConfig.model_validate({"ip_ranges": ["10.0.0.0/8"], "dns_names": [".svc.local"]}),
        "other-default-issuer",
    )
    assert first.sha256 == again.sha256


@pytest.mark.parametrize(
    "change",
    [
        {"dns_names": [".svc.local"]},
        {"dns_names": [".svc.local", ".corp.example"]},  # order decides the matched rule
        {"allow_wildcards": True},
        {"ip_ranges": ["10.0.0.0/9"]},
        {"uri_patterns": ["urn:x:*"]},
        {"email_patterns": ["*@corp.example"]},
        {"validity_days": 30},
        {"max_validity_days": 200},
        {"key_types": ["ec:P-256"]},
        {"key_usage": ["digitalSignature"]},
        {"extended_key_usage": ["clientAuth"]},
        {"certificate_policies": []},
        {"subject_attributes": ["CN", "O"]},
        {"common_name": "drop"},
        {"requires_approval": True},
        {"approval_ttl_hours": 24},
        {"require_san": False},
        {"issuer": "other"},
        {"description": "changed"},
        {"backdate_seconds": 0},
    ],
    ids=lambda change: "changed/" + next(iter(change)),
)
def test_profile_sha256_changes_with_any_setting(change: dict[str, Any]) -> None:
    base: dict[str, Any] = {
        "dns_names": [".corp.example", ".svc.local"],
        "ip_ranges": ["10.0.0.0/8"],
    }
    before = Profile.from_config("web", ProfileConfig(**base), "issuing")
    after = Profile.from_config("web", ProfileConfig(**{**base, **change}), "issuing")
    assert before.sha256 != after.sha256


def test_profile_sha256_changes_with_the_name() -> None:
    cfg = _config()
    assert profile_sha256("web", cfg) != profile_sha256("web2", cfg)
