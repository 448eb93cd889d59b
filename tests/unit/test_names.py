"""Name syntax, rule matching and issuer name constraints (ca.names): pure tables."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from ca.names import (
    DnsRule,
    EmailPattern,
    InvalidName,
    InvalidWildcard,
    NameRules,
    UriPattern,
    check_name_constraints,
    ip_in,
    normalize_dns_name,
    normalize_email,
    normalize_uri,
    parse_ip_range,
    to_a_labels,
    uri_host,
)

LABEL_63 = "a" * 63
NAME_253 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 63+1+63+1+63+1+61 = 253
NAME_254 = "e" + NAME_253

# --- DNS names --------------------------------------------------------------------------------

_GOOD_DNS = [
    ("plain", "www.example.com"),
    ("wildcard", "*.example.com"),
    ("wildcard-deep", "*.a.b.example.com"),
    ("a-label", "xn--bcher-kva.example"),
    ("a-label-sharp-s", "xn--zca.de"),
    ("a-label-tld", "example.xn--p1ai"),
    ("hyphen-digit", "a-b.c0.example"),
    ("digit-labels", "1.123.example"),
    ("single-label", "localhost"),
    ("label-63", LABEL_63 + ".example"),
    ("name-253", NAME_253),
]


@pytest.mark.parametrize("name", [n for _, n in _GOOD_DNS], ids=[f"ok/{i}" for i, _ in _GOOD_DNS])
def test_valid_dns_names_are_returned_unchanged(name: str) -> None:
    assert len(NAME_253) == 253
    assert normalize_dns_name(name) == name


_BAD_DNS = [
    # (id, name, exception, reason fragment)
    ("u-label", "bücher.example", InvalidName, "write 'xn--bcher-kva.example'"),
    ("u-label-code-point", "bücher.example", InvalidName, "U+00FC"),
    ("fullwidth-dot", "a\uff0eexample.com", InvalidName, "U+FF0E"),
    ("ideographic-dot", "a\u3002example.com", InvalidName, "U+3002"),
    ("cyrillic-homoglyph", "\u0430pple.com", InvalidName, "xn--pple-43d.com"),
    ("emoji", "\U0001f4a9.la", InvalidName, "write each IDN label as its xn-- A-label"),
    ("uppercase", "WWW.example.com", InvalidName, "must be lowercase"),
    ("mixed-case", "www.Example.com", InvalidName, "must be lowercase"),
    ("uppercase-a-label", "XN--BCHER-KVA.example", InvalidName, "must be lowercase"),
    ("trailing-dot", "www.example.com.", InvalidName, "must not end with a dot"),
    ("leading-dot", ".example.com", InvalidName, "empty label"),
    ("empty-label", "a..example", InvalidName, "empty label"),
    ("empty", "", InvalidName, "is empty"),
    ("root", ".", InvalidName, "empty label"),
    ("label-64", "a" * 64 + ".example", InvalidName, "64 octets long; at most 63"),
    ("name-254", NAME_254, InvalidName, "254 octets long; at most 253"),
    ("leading-hyphen", "-lead.example", InvalidName, "starts or ends with '-'"),
    ("trailing-hyphen", "trail-.example", InvalidName, "starts or ends with '-'"),
    ("reserved-hyphens", "ab--cd.example", InvalidName, "'--' in positions 3-4"),
    ("underscore", "_acme.example", InvalidName, "underscores are not allowed"),
    ("space", "a b.example", InvalidName, "only a-z, 0-9 and '-'"),
    ("newline", "a\nb.example", InvalidName, "only a-z, 0-9 and '-'"),
    ("at-sign", "user@example.com", InvalidName, "only a-z, 0-9 and '-'"),
    ("numeric-tld", "a.123", InvalidName, "top-level label is all digits"),
    ("ipv4-as-dns", "192.0.2.1", InvalidName, "top-level label is all digits"),
    ("punycode-garbage", "xn--a.example", InvalidName, "not a valid IDNA 2008 A-label"),
    ("punycode-empty", "xn--.example", InvalidName, "starts or ends with '-'"),
    ("punycode-disallowed", "xn--ls8h.la", InvalidName, "not a valid IDNA 2008 A-label"),
    ("punycode-of-ascii", "xn--abc-.example", InvalidName, "starts or ends with '-'"),
    ("punycode-trailing-hyphen", "xn--bcher-kva-.example", InvalidName, "'-'"),
    ("wildcard-on-tld", "*.com", InvalidWildcard, "at least two labels after it"),
    ("wildcard-alone", "*", InvalidWildcard, "'*' alone is not a name"),
    ("inner-wildcard", "a.*.b", InvalidWildcard, "only be the leftmost label"),
    ("trailing-wildcard", "a.b.*", InvalidWildcard, "only be the leftmost label"),
    ("double-star", "**.a.b", InvalidWildcard, "whole leftmost label"),
    ("partial-wildcard", "*a.b.c", InvalidWildcard, "whole leftmost label"),
    ("partial-wildcard-suffix", "a*.b.c", InvalidWildcard, "whole leftmost label"),
    ("two-wildcards", "*.*.a.b", InvalidWildcard, "only be the leftmost label"),
    ("wildcard-u-label", "*.bücher.example", InvalidName, "xn--bcher-kva"),
    ("wildcard-and-uppercase", "*.Example.com", InvalidName, "must be lowercase"),
]


@pytest.mark.parametrize(
    ("name", "error", "reason"),
    [pytest.param(n, e, r, id=f"fail/{i}") for i, n, e, r in _BAD_DNS],
)
def test_invalid_dns_names_are_refused_with_the_reason(
    name: str, error: type[InvalidName], reason: str
) -> None:
    with pytest.raises(InvalidName) as info:
        normalize_dns_name(name)
    assert type(info.value) is error
    assert reason in str(info.value)
    assert info.value.name == name
    assert "\n" not in str(info.value)


def test_every_problem_of_a_name_is_reported_at_once() -> None:
    with pytest.raises(InvalidName) as info:
        normalize_dns_name("Under_Score..-x.example.")
    reasons = info.value.reasons
    assert any("lowercase" in r for r in reasons)
    assert any("end with a dot" in r for r in reasons)
    assert any("empty label" in r for r in reasons)
    assert any("underscores" in r for r in reasons)
    assert any("'-x'" in r for r in reasons)
    assert info.value.rule == "syntax"


def test_wildcard_problem_alone_has_its_own_rule() -> None:
    with pytest.raises(InvalidWildcard) as info:
        normalize_dns_name("*.com")
    assert info.value.rule == "wildcard_invalid"


def test_wildcards_can_be_forbidden_entirely() -> None:
    with pytest.raises(InvalidName, match="must not contain a wildcard"):
        normalize_dns_name("*.example.com", allow_wildcard=False)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bücher.example", "xn--bcher-kva.example"),
        ("a\uff0eexample", "a.example"),
        ("\U0001f4a9.la", None),
    ],
    ids=["ok/u-label", "ok/fullwidth-dot", "ok/emoji-has-none"],
)
def test_a_label_form(name: str, expected: str | None) -> None:
    assert to_a_labels(name) == expected


# --- DNS rules --------------------------------------------------------------------------------

_RULES = [
    # (rule, name, matches)
    (".", "anything.example", True),
    (".", "*.wild.example", True),
    (".", "localhost", True),
    ("host.example", "host.example", True),
    ("host.example", "a.host.example", False),
    ("host.example", "xhost.example", False),
    (".svc.local", "a.svc.local", True),
    (".svc.local", "a.b.c.svc.local", True),
    (".svc.local", "*.svc.local", True),
    (".svc.local", "*.a.svc.local", True),
    (".svc.local", "svc.local", False),
    (".svc.local", "evilsvc.local", False),
    ("*.payments.internal", "api.payments.internal", True),
    ("*.payments.internal", "*.payments.internal", True),
    ("*.payments.internal", "a.b.payments.internal", False),
    ("*.payments.internal", "*.b.payments.internal", False),
    ("*.payments.internal", "payments.internal", False),
    ("*.payments.internal", "x.orders.internal", False),
    ("*.payments.internal", "api.payments.internal.evil", False),
    (".internal", "a.payments.internal", True),
]


@pytest.mark.parametrize(
    ("rule", "name", "expected"),
    [
        pytest.param(r, n, m, id=f"{'ok' if m else 'no'}/{r}/{n}")
        for r, n, m in _RULES
    ],
)  # fmt: skip
def test_dns_rule_matching(rule: str, name: str, expected: bool) -> None:
    assert DnsRule.parse(rule).matches(name) is expected


@pytest.mark.parametrize(
    ("rule", "kind", "base"),
    [(".", "any", ""), ("a.example", "exact", "a.example"), (".example", "suffix", "example"),
     ("*.example", "one_label", "example")],
    ids=["ok/any", "ok/exact", "ok/suffix", "ok/one-label"],
)  # fmt: skip
def test_dns_rule_parsing(rule: str, kind: str, base: str) -> None:
    parsed = DnsRule.parse(rule)
    assert (parsed.kind, parsed.base, str(parsed)) == (kind, base, rule)


@pytest.mark.parametrize(
    "rule",
    ["", "..", "*.", "*", "a.*.example", "**.example", "*.*.example", "Example.com", "a.example.",
     "bücher.example", "xn--a.example", "_srv.example", ". example"],
    ids=["fail/empty", "fail/dots", "fail/star-dot", "fail/star", "fail/inner-star",
         "fail/double-star", "fail/two-stars", "fail/uppercase", "fail/trailing-dot",
         "fail/u-label", "fail/bad-punycode", "fail/underscore", "fail/space"],
)  # fmt: skip
def test_bad_dns_rules_are_refused(rule: str) -> None:
    with pytest.raises(InvalidName):
        DnsRule.parse(rule)


# --- IP ranges --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "address", "expected"),
    [
        ("10.0.0.0/8", "10.255.0.1", True),
        ("10.0.0.0/8", "11.0.0.1", False),
        ("192.0.2.7", "192.0.2.7", True),
        ("192.0.2.7/32", "192.0.2.8", False),
        ("0.0.0.0/0", "203.0.113.9", True),
        ("0.0.0.0/0", "2001:db8::1", False),
        ("2001:db8::/32", "2001:db8:ffff::1", True),
        ("2001:db8::/32", "2001:db9::1", False),
        ("::/0", "::ffff:10.0.0.1", True),
        ("10.0.0.0/8", "::ffff:10.0.0.1", False),
        ("fd00::/8", "fd12:3456::1", True),
    ],
    ids=[
        "ok/v4-in", "no/v4-out", "ok/bare-address", "no/host-route", "ok/v4-any",
        "no/v6-in-v4-any", "ok/v6-in", "no/v6-out", "ok/mapped-in-v6-any",
        "no/mapped-not-in-v4", "ok/ula",
    ],
)  # fmt: skip
def test_ip_ranges(network: str, address: str, expected: bool) -> None:
    assert ip_in(ipaddress.ip_address(address), parse_ip_range(network)) is expected


@pytest.mark.parametrize(
    "text",
    ["10.0.0.1/8", "10.0.0.0/33", "2001:db8::1/32", "example.com", "", "10.0.0.0/8 "],
    ids=["fail/host-bits", "fail/prefix", "fail/v6-host-bits", "fail/name", "fail/empty",
         "fail/space"],
)  # fmt: skip
def test_bad_ip_ranges_are_refused(text: str) -> None:
    with pytest.raises(InvalidName, match="not a CIDR network"):
        parse_ip_range(text)


# --- URIs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://corp.internal/ns/payments/sa/api",
        "https://api.example.com:8443/path?q=1#frag",
        "https://[2001:db8::1]/",
        "https://192.0.2.1/",
        "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
        "SPIFFE://Corp.Internal/ns/a/sa/b",
    ],
    ids=["ok/spiffe", "ok/https-port-query", "ok/ipv6-host", "ok/ipv4-host", "ok/urn",
         "ok/uppercase-scheme-host-kept"],
)  # fmt: skip
def test_valid_uris_are_returned_unchanged(uri: str) -> None:
    assert normalize_uri(uri) == uri


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("", "is empty"),
        ("corp.internal/ns/a", "must start with a scheme"),
        ("1http://x.example/", "must start with a scheme"),
        ("spiffe:", "nothing after the scheme"),
        ("spiffe:///ns/a", "empty host"),
        ("spiffe://bücher.example/ns/a", "ASCII"),
        ("spiffe://corp.internal/ns/a b", "ASCII"),
        ("spiffe://corp.internal/ns/a\n", "ASCII"),
        ("spiffe://corp_internal/ns/a", "underscores"),
        ("spiffe://corp.internal./ns/a", "end with a dot"),
        ("https://[zz::1]/", "not an IPv6 literal"),
        ("https://a.example:99999/", "port"),
        ("https://a.example:http/", "port"),
        ("spiffe://corp.internal/ns/../sa/x", "'..' path segments"),
        ("spiffe://corp.internal/ns/./sa/x", "'..' path segments"),
        ("spiffe://corp.internal/ns/a%2Fb/sa/x", "percent-encoded '/'"),
        ("spiffe://corp.internal/ns/%2E%2e/sa/x", "'..' path segments"),
        ("https://corp.internal\\@evil.example/", "RFC 3986 does not allow"),
        ("spiffe://corp.internal/ns/a\\..\\b/sa/x", "RFC 3986 does not allow"),
        ("https://a.example/<script>", "RFC 3986 does not allow"),
    ],
    ids=[
        "fail/empty", "fail/no-scheme", "fail/scheme-digit", "fail/scheme-only",
        "fail/no-host", "fail/iri", "fail/space", "fail/newline", "fail/underscore-host",
        "fail/trailing-dot-host", "fail/bad-ipv6", "fail/port-range", "fail/port-name",
        "fail/dot-dot", "fail/dot", "fail/encoded-slash", "fail/encoded-dot-dot",
        "fail/backslash-authority", "fail/backslash-path", "fail/angle-brackets",
    ],
)  # fmt: skip
def test_invalid_uris_are_refused(uri: str, reason: str) -> None:
    with pytest.raises(InvalidName) as info:
        normalize_uri(uri)
    assert reason in str(info.value)


_SPIFFE = "spiffe://corp.internal/ns/*/sa/*"
_URI_MATCHES = [
    (_SPIFFE, "spiffe://corp.internal/ns/payments/sa/api", True),
    (_SPIFFE, "SPIFFE://CORP.internal/ns/payments/sa/api", True),
    (_SPIFFE, "spiffe://corp.internal/NS/payments/sa/api", False),
    (_SPIFFE, "spiffe://corp.internal/ns/a/b/sa/api", False),
    (_SPIFFE, "spiffe://corp.internal/ns//sa/api", False),
    (_SPIFFE, "spiffe://corp.internal/ns/a/sa/", False),
    (_SPIFFE, "spiffe://corp.internal/ns/a/sa/b/c", False),
    (_SPIFFE, "spiffe://corp.internal/ns/a/sa/b?x=1", False),
    (_SPIFFE, "spiffe://corp.internal/ns/a/sa/b#f", False),
    (_SPIFFE, "spiffe://other.internal/ns/a/sa/b", False),
    (_SPIFFE, "spiffe://corp.internal:443/ns/a/sa/b", False),
    (_SPIFFE, "spiffe://user@corp.internal/ns/a/sa/b", False),
    (_SPIFFE, "spiffe://evil.example#.corp.internal/ns/a/sa/b", False),
    (_SPIFFE, "https://corp.internal/ns/a/sa/b", False),
    (
        "spiffe://corp.internal/ns/payments/sa/api",
        "spiffe://corp.internal/ns/payments/sa/api",
        True,
    ),
    (
        "spiffe://corp.internal/ns/payments/sa/api",
        "spiffe://corp.internal/ns/payments/sa/apix",
        False,
    ),
    ("spiffe://corp.internal/ns/pay-*/sa/*", "spiffe://corp.internal/ns/pay-eu/sa/x", True),
    ("spiffe://corp.internal/ns/pay-*/sa/*", "spiffe://corp.internal/ns/pay-/sa/x", False),
    ("urn:example:*", "urn:example:abc", True),
    ("urn:example:*", "urn:example:a/b", False),
    ("https://Api.Example.com/*", "https://api.example.com/x", True),
]


@pytest.mark.parametrize(
    ("pattern", "uri", "expected"),
    [pytest.param(p, u, m, id=f"{'ok' if m else 'no'}/{u}") for p, u, m in _URI_MATCHES],
)
def test_uri_pattern_matching(pattern: str, uri: str, expected: bool) -> None:
    assert UriPattern.parse(pattern).matches(uri) is expected


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("spiffe://*.corp.internal/ns/a", "only in the path"),
        ("spiffe://corp.internal:*/ns/a", "only in the path"),
        ("*://corp.internal/", "scheme"),
        ("corp.internal/ns/*", "scheme"),
    ],
    ids=["fail/star-in-host", "fail/star-in-port", "fail/star-scheme", "fail/no-scheme"],
)
def test_bad_uri_patterns_are_refused(pattern: str, reason: str) -> None:
    with pytest.raises(InvalidName, match=reason):
        UriPattern.parse(pattern)


@pytest.mark.parametrize(
    ("uri", "host"),
    [
        ("spiffe://Corp.Internal/ns/a", "corp.internal"),
        ("https://u:p@a.example:8443/x", "a.example"),
        ("https://[2001:db8::1]:443/", "[2001:db8::1]"),
        ("urn:uuid:1", None),
        ("not a uri", None),
    ],
    ids=["ok/lowercased", "ok/userinfo-port", "ok/ipv6", "ok/no-authority", "ok/garbage"],
)
def test_uri_host(uri: str, host: str | None) -> None:
    assert uri_host(uri) == host


# --- email addresses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["ops@example.com", "first.last+tag@mail.example.com", "o'brien@example.ie"],
    ids=["ok/plain", "ok/dots-plus", "ok/apostrophe"],
)
def test_valid_email_addresses(address: str) -> None:
    assert normalize_email(address) == address


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("ops", "local-part@domain"),
        ("@example.com", "local-part@domain"),
        ("ops@", "domain ''"),
        ("ops@Example.com", "must be lowercase"),
        ("ops@bücher.example", "ASCII"),
        ("jörg@example.com", "ASCII"),
        ("a b@example.com", "ASCII"),
        (".ops@example.com", "dot-atom"),
        ("a..b@example.com", "dot-atom"),
        ('"quoted"@example.com', "dot-atom"),
        ("a@b@example.com", "dot-atom"),
        ("o" * 65 + "@example.com", "longer than 64"),
        ("ops@[192.0.2.1]", "domain"),
        ("ops@*.example.com", "wildcard"),
    ],
    ids=[
        "fail/no-at", "fail/no-local", "fail/no-domain", "fail/uppercase-domain",
        "fail/idn-domain", "fail/utf8-local", "fail/space", "fail/leading-dot",
        "fail/double-dot", "fail/quoted", "fail/two-ats", "fail/local-65",
        "fail/ip-literal", "fail/wildcard-domain",
    ],
)  # fmt: skip
def test_invalid_email_addresses(address: str, reason: str) -> None:
    with pytest.raises(InvalidName) as info:
        normalize_email(address)
    assert reason in str(info.value)


_EMAIL_MATCHES = [
    ("ops@corp.example", "ops@corp.example", True),
    ("ops@corp.example", "Ops@corp.example", False),
    ("ops@corp.example", "ops@CORP.example", True),
    ("ops@corp.example", "dev@corp.example", False),
    ("*@corp.example", "anyone@corp.example", True),
    ("*@corp.example", "anyone@eu.corp.example", False),
    ("*@corp.example", "anyone@evilcorp.example", False),
    ("*@.corp.example", "anyone@eu.corp.example", True),
    ("*@.corp.example", "anyone@a.b.corp.example", True),
    ("*@.corp.example", "anyone@corp.example", False),
    ("*@.corp.example", "anyone@evilcorp.example", False),
]


@pytest.mark.parametrize(
    ("pattern", "address", "expected"),
    [pytest.param(p, a, m, id=f"{'ok' if m else 'no'}/{p}/{a}") for p, a, m in _EMAIL_MATCHES],
)
def test_email_pattern_matching(pattern: str, address: str, expected: bool) -> None:
    assert EmailPattern.parse(pattern).matches(address) is expected


@pytest.mark.parametrize(
    "pattern",
    ["*", "*@", "*@.", "ops@*.corp.example", "*@Corp.example", "**@corp.example x"],
    ids=["fail/star", "fail/no-domain", "fail/dot-domain", "fail/wildcard-domain",
         "fail/uppercase", "fail/space"],
)  # fmt: skip
def test_bad_email_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(InvalidName):
        EmailPattern.parse(pattern)


# --- mixed rule lists -------------------------------------------------------------------------


def test_name_rules_are_split_by_kind() -> None:
    rules = NameRules.parse(
        [
            "*.payments.internal",
            ".svc.local",
            "10.20.0.0/16",
            "2001:db8::/32",
            "fd00::1",
            "spiffe://corp.internal/ns/payments/sa/*",
            "urn:example:*",
            "*@payments.example",
            "ops@example.com",
        ]
    )
    assert [str(r) for r in rules.dns] == ["*.payments.internal", ".svc.local"]
    assert [str(n) for n in rules.ips] == ["10.20.0.0/16", "2001:db8::/32", "fd00::1/128"]
    assert [str(p) for p in rules.uris] == [
        "spiffe://corp.internal/ns/payments/sa/*",
        "urn:example:*",
    ]
    assert [str(p) for p in rules.emails] == ["*@payments.example", "ops@example.com"]
    assert rules and not NameRules.parse([])


@pytest.mark.parametrize(
    "rule",
    ["10.0.0.1/8", "Payments.internal", "*.*.internal", "spiffe://*.corp/x", "a@b@c"],
    ids=["fail/cidr-host-bits", "fail/uppercase", "fail/double-wildcard",
         "fail/uri-host-wildcard", "fail/email"],
)  # fmt: skip
def test_bad_rules_in_a_list_are_refused(rule: str) -> None:
    with pytest.raises(InvalidName):
        NameRules.parse(["ok.example", rule])


# --- issuer name constraints ------------------------------------------------------------------


def _nc(
    permitted: list[x509.GeneralName] | None = None, excluded: list[x509.GeneralName] | None = None
) -> x509.NameConstraints:
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded)


def _net(text: str) -> x509.IPAddress:
    return x509.IPAddress(ipaddress.ip_network(text))


_CORP = _nc(
    permitted=[
        x509.DNSName("corp.example"),
        x509.DNSName(".svc.local"),
        _net("10.0.0.0/8"),
        _net("2001:db8::/32"),
        x509.UniformResourceIdentifier(".corp.internal"),
        x509.UniformResourceIdentifier("exact.internal"),
        x509.RFC822Name("corp.example"),
        x509.RFC822Name(".mail.example"),
        x509.RFC822Name("boss@partner.example"),
    ],
    excluded=[
        x509.DNSName("secret.corp.example"),
        x509.DNSName("x.svc.local"),
        _net("10.66.0.0/16"),
        x509.UniformResourceIdentifier("vault.corp.internal"),
        x509.RFC822Name("ceo@corp.example"),
    ],
)

_NC_CASES = [
    # (kind, value, expected finding or None)
    ("dns", "corp.example", None),
    ("dns", "a.b.corp.example", None),
    ("dns", "evilcorp.example", "not_permitted"),
    ("dns", "svc.local", "not_permitted"),
    ("dns", "a.svc.local", None),
    ("dns", "secret.corp.example", "excluded"),
    ("dns", "db.secret.corp.example", "excluded"),
    ("dns", "*.corp.example", "excluded"),  # could stand for secret.corp.example
    ("dns", "*.secret.corp.example", "excluded"),
    ("dns", "*.eu.corp.example", None),
    ("dns", "*.svc.local", "excluded"),  # could stand for x.svc.local
    ("dns", "*.a.svc.local", None),
    ("dns", "*.example", "not_permitted"),  # could stand for evil.example
    ("ip", "10.1.2.3", None),
    ("ip", "10.66.1.1", "excluded"),
    ("ip", "192.0.2.1", "not_permitted"),
    ("ip", "2001:db8::5", None),
    ("ip", "2001:db9::5", "not_permitted"),
    ("ip", "::ffff:10.1.2.3", "not_permitted"),
    ("uri", "spiffe://corp.internal/ns/a", "not_permitted"),  # ".corp.internal": below only
    ("uri", "spiffe://a.corp.internal/ns/a", None),
    ("uri", "spiffe://A.Corp.Internal/ns/a", None),
    ("uri", "spiffe://vault.corp.internal/x", "excluded"),
    ("uri", "https://exact.internal:8443/x", None),
    ("uri", "https://sub.exact.internal/x", "not_permitted"),
    ("uri", "urn:uuid:1234", "not_permitted"),
    ("uri", "https://10.0.0.1/", "not_permitted"),
    ("email", "dev@corp.example", None),
    ("email", "dev@sub.corp.example", "not_permitted"),
    ("email", "dev@eu.mail.example", None),
    ("email", "dev@mail.example", "not_permitted"),
    ("email", "boss@partner.example", None),
    ("email", "Boss@partner.example", "not_permitted"),
    ("email", "ceo@corp.example", "excluded"),
]


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [pytest.param(k, v, e, id=f"{e or 'ok'}/{k}/{v}") for k, v, e in _NC_CASES],
)
def test_name_constraints_of_the_issuer(kind: str, value: str, expected: str | None) -> None:
    names: dict[str, object] = {}
    if kind == "ip":
        names["ip_addresses"] = [ipaddress.ip_address(value)]
    else:
        names[{"dns": "dns_names", "uri": "uris", "email": "emails"}[kind]] = [value]
    findings = check_name_constraints(_CORP, **names)  # type: ignore[arg-type]
    assert [f.rule for f in findings] == ([expected] if expected else [])
    for finding in findings:
        assert finding.value.startswith(f"{kind}:")
        assert "issuing CA" in finding.detail


def test_name_types_without_permitted_subtrees_are_unrestricted() -> None:
    only_dns = _nc(permitted=[x509.DNSName("corp.example")])
    findings = check_name_constraints(
        only_dns,
        ip_addresses=[ipaddress.ip_address("192.0.2.1")],
        uris=["urn:uuid:1"],
        emails=["a@b.example"],
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]),
    )
    assert findings == []


def test_excluded_only_constraints_permit_everything_else() -> None:
    nc = _nc(excluded=[x509.DNSName("bad.example"), _net("0.0.0.0/0")])
    findings = check_name_constraints(
        nc,
        dns_names=["good.example", "x.bad.example"],
        ip_addresses=[ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("::1")],
    )
    assert [(f.rule, f.value, f.subtree) for f in findings] == [
        ("excluded", "dns:x.bad.example", "bad.example"),
        ("excluded", "ip:192.0.2.1", "0.0.0.0/0"),
    ]


def test_empty_dns_constraint_covers_every_name() -> None:
    findings = check_name_constraints(_nc(excluded=[x509.DNSName("")]), dns_names=["a.example"])
    assert [f.rule for f in findings] == ["excluded"]


def test_directory_name_constraints_apply_to_a_non_empty_subject() -> None:
    org = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Corp")])  # fmt: skip
    nc = _nc(permitted=[x509.DirectoryName(org)])
    inside = x509.Name([*org, x509.NameAttribute(NameOID.COMMON_NAME, "a.corp.example")])
    outside = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.corp.example")])
    assert check_name_constraints(nc, subject=inside) == []
    assert check_name_constraints(nc, subject=x509.Name([])) == []
    [finding] = check_name_constraints(nc, subject=outside)
    assert finding.rule == "not_permitted" and finding.value == "subject:CN=a.corp.example"
    excluded = _nc(excluded=[x509.DirectoryName(org)])
    [finding] = check_name_constraints(excluded, subject=inside)
    assert finding.rule == "excluded" and finding.subtree == "O=Corp,C=DE"


def test_subject_email_address_is_checked_as_an_rfc822_name() -> None:
    nc = _nc(permitted=[x509.RFC822Name("corp.example")])
    subject = x509.Name([x509.NameAttribute(NameOID.EMAIL_ADDRESS, "x@evil.example")])
    [finding] = check_name_constraints(nc, subject=subject)
    assert finding.value == "email:x@evil.example"
