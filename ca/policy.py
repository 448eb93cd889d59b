"""Issuance policy: pure decisions about who may have which certificate (no I/O).

``decide()`` takes a checked CSR, the profile, the requester and the issuing CA's name constraints and
returns a :class:`Decision` holding *every* violated rule (so a 403 tells the requester all there is
to fix) and every rule that matched (so an auditor can later answer "why was this name allowed?").

Name rules, shared by profiles and requesters (see :mod:`ca.names`):
    ``host.example``  exactly that name        ``.example``  any name below example, any depth
    ``*.example``     one label below example  ``.``         any name
IP rules are CIDR networks, URI rules are patterns whose ``*`` matches within one path segment,
email rules are exact addresses, ``*@domain`` or ``*@.domain`` (any domain below).

Rule ids (stable; clients and auditors match on them):
    requester.role_missing  profile.not_permitted_for_requester
    key.type_not_allowed  key.usage_not_applicable
    validity.too_short  validity.too_long
    extension.ca_requested  extension.name_constraints_requested  extension.policies_requested
    san.missing  cn.not_a_san  subject.attribute_not_allowed
    dns.syntax  dns.wildcard_invalid  dns.wildcard_not_allowed  dns.not_allowed
    dns.requester_not_allowed  ip.not_allowed  ip.requester_not_allowed
    uri.syntax  uri.not_allowed  uri.requester_not_allowed
    email.syntax  email.not_allowed  email.requester_not_allowed
    name_constraints.excluded  name_constraints.not_permitted
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from cryptography import x509

from ca.csr import CsrFacts, san_strings, subject_name
from ca.errors import ConfigError
from ca.names import (
    DnsRule,
    EmailPattern,
    InvalidName,
    IPNetwork,
    NameRules,
    UriPattern,
    check_name_constraints,
    ip_in,
    is_wildcard,
    normalize_dns_name,
    normalize_email,
    normalize_uri,
    to_a_labels,
)
from ca.profiles import KEY_USAGES, Profile

_R = TypeVar("_R")

#: Roles an API client may hold.
ROLES = ("enroll", "revoke", "read", "approve", "audit", "admin")


@dataclass(frozen=True)
class Requester:
    """Who asks: an API client (or the local operator) with roles and its own restrictions.

    ``profiles`` empty means every profile; ``names`` empty means no restriction beyond the
    profile's. ``names`` mixes DNS rules, CIDR networks, URI patterns and email patterns; each SAN is
    checked against the rules of its own kind (a requester with only DNS rules gets no IP SANs).
    """

    name: str
    roles: frozenset[str] = frozenset()
    profiles: frozenset[str] = frozenset()
    names: tuple[str, ...] = ()
    #: ``names`` parsed and split by kind; a bad rule raises :class:`ConfigError` at construction.
    rules: NameRules = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            rules = NameRules.parse(self.names)
        except InvalidName as exc:
            raise ConfigError(f"requester {self.name!r}: name rule {exc.name!r} {exc}") from None
        object.__setattr__(self, "rules", rules)

    @classmethod
    def operator(cls, name: str) -> Requester:
        """The local operator (CLI): every role, every profile, no own restrictions."""
        return cls(name=name, roles=frozenset(ROLES))

    def has_role(self, role: str) -> bool:
        return role in self.roles or "admin" in self.roles


@dataclass(frozen=True)
class Violation:
    """One broken rule. ``rule`` is a stable identifier (e.g. ``dns.not_allowed``)."""

    rule: str
    detail: str
    value: str | None = None

    def as_dict(self) -> dict[str, str]:
        out = {"rule": self.rule, "detail": self.detail}
        if self.value is not None:
            out["value"] = self.value
        return out


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`decide`: allowed iff there are no violations."""

    profile: str
    profile_sha256: str
    violations: tuple[Violation, ...]
    #: Human-readable records of rules that matched, e.g. ``dns:a.svc.local by profile .svc.local``.
    matched: tuple[str, ...] = ()
    needs_approval: bool = False
    #: The names that go into the certificate, normalised (lowercase A-labels, canonical IPs).
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    #: The subject the certificate gets ((attribute short name, value) pairs, CSR order).
    subject: tuple[tuple[str, str], ...] = ()
    validity: timedelta | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False)
    #: Key usages for the certificate: the profile's, less those the key's algorithm cannot use.
    key_usage: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return not self.violations

    @property
    def common_name(self) -> str | None:
        """The CN the certificate's subject keeps (None when absent or dropped)."""
        return next((value for name, value in self.subject if name == "CN"), None)

    def san_strings(self) -> list[str]:
        """The certificate's SANs as ``dns:`` / ``ip:`` / ``uri:`` / ``email:`` strings."""
        return san_strings(self.dns_names, self.ip_addresses, self.uris, self.emails)

    def audit_details(self) -> dict[str, object]:
        """What the audit record keeps of this decision."""
        return {
            "profile": self.profile,
            "profile_sha256": self.profile_sha256,
            "allowed": self.allowed,
            "violations": [v.as_dict() for v in self.violations],
            "matched": list(self.matched),
        }


def decide(
    facts: CsrFacts,
    profile: Profile,
    requester: Requester,
    now: datetime,
    *,
    validity_days: int | None = None,
    issuer_constraints: x509.NameConstraints | None = None,
) -> Decision:
    """Every rule of ``profile`` and ``requester`` applied to ``facts``; see the module docstring.

    ``now`` is the decision time (no rule depends on it yet; the clock is never read here).
    """
    check = _Checker(profile, requester)
    check.requester()
    key_usage = check.key(facts.key_type)
    validity = check.validity(validity_days)
    check.requested_extensions(facts)
    rules = requester.rules
    dns = check.names(
        "dns", facts.dns_names, normalize_dns_name, profile.dns_rules, rules.dns, _matches
    )
    ip_texts = [str(ip) for ip in facts.ip_addresses]
    ips = check.names("ip", ip_texts, _canonical_ip, profile.ip_ranges, rules.ips, _ip_matches)
    uris = check.names("uri", facts.uris, normalize_uri, profile.uri_patterns, rules.uris, _matches)
    emails = check.names(
        "email", facts.emails, normalize_email, profile.email_patterns, rules.emails, _matches
    )
    subject = check.subject(facts)
    if not (facts.dns_names or facts.ip_addresses or facts.uris or facts.emails):
        if profile.require_san:
            check.fail(
                "san.missing",
                f"the CSR has no subjectAltName; profile {profile.name!r} needs at least one "
                "(DNS name, IP address, URI or email address)",
            )
        elif not subject:
            check.fail(
                "san.missing",
                "the certificate would name nobody: no subjectAltName and an empty subject",
            )
    if issuer_constraints is not None:
        check.name_constraints(issuer_constraints, dns, ips, uris, emails, subject)
    if profile.requires_approval:
        check.matched.append(f"approval:required by profile {profile.name}")
    return Decision(
        profile=profile.name,
        profile_sha256=profile.sha256,
        violations=tuple(check.violations),
        matched=tuple(check.matched),
        needs_approval=profile.requires_approval,
        dns_names=tuple(dns),
        ip_addresses=tuple(ips),
        uris=tuple(uris),
        emails=tuple(emails),
        subject=tuple(subject),
        validity=validity,
        key_usage=key_usage,
    )


def name_constraints_of(certificate: x509.Certificate) -> x509.NameConstraints | None:
    """The NameConstraints of an issuing CA's certificate, if it has any."""
    try:
        return certificate.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None


def _canonical_ip(text: str) -> str:
    return str(ipaddress.ip_address(text))


def _ip_matches(network: IPNetwork, ip: str) -> bool:
    return ip_in(ipaddress.ip_address(ip), network)


def _matches(rule: DnsRule | UriPattern | EmailPattern, name: str) -> bool:
    return rule.matches(name)


#: How each kind of SAN is called in violation details.
_LABELS = {"dns": "DNS name", "ip": "IP address", "uri": "URI", "email": "email address"}


def _listing(items: Iterable[object], limit: int = 8) -> str:
    texts = [str(i) for i in items]
    if not texts:
        return "none"
    more = f", ... ({len(texts) - limit} more)" if len(texts) > limit else ""
    return ", ".join(texts[:limit]) + more


class _Checker:
    """Collects violations and matched-rule records while the checks run, in a stable order."""

    def __init__(self, profile: Profile, requester: Requester) -> None:
        self.profile = profile
        self.requester_ = requester
        self.violations: list[Violation] = []
        self.matched: list[str] = []

    def fail(self, rule: str, detail: str, value: str | None = None) -> None:
        self.violations.append(Violation(rule, detail, value))

    def requester(self) -> None:
        who, profile = self.requester_, self.profile
        if not who.has_role("enroll"):
            self.fail("requester.role_missing", f"requester {who.name!r} lacks the 'enroll' role")
        if who.profiles and profile.name not in who.profiles:
            self.fail(
                "profile.not_permitted_for_requester",
                f"requester {who.name!r} may not use profile {profile.name!r} "
                f"(allowed: {_listing(sorted(who.profiles))})",
                profile.name,
            )

    def key(self, key_type: str) -> tuple[str, ...]:
        profile = self.profile
        if key_type in profile.key_types:
            self.matched.append(f"key:{key_type} allowed by profile")
        else:
            self.fail(
                "key.type_not_allowed",
                f"profile {profile.name!r} does not accept {key_type} keys "
                f"(accepted: {_listing(sorted(profile.key_types))})",
                key_type,
            )
        algorithm = key_type.partition(":")[0]
        usage = tuple(u for u in profile.key_usage if algorithm in KEY_USAGES.get(u, ()))
        if not usage:
            self.fail(
                "key.usage_not_applicable",
                f"none of profile {profile.name!r}'s key usages "
                f"({_listing(profile.key_usage)}) applies to {algorithm.upper()} keys",
                key_type,
            )
        return usage

    def validity(self, days: int | None) -> timedelta | None:
        profile = self.profile
        maximum = profile.max_validity.days
        if days is None:
            self.matched.append(f"validity:{profile.validity.days} days (profile default)")
            return profile.validity
        if days < 1:
            self.fail("validity.too_short", "validity_days must be at least 1", str(days))
            return None
        if days > maximum:
            self.fail(
                "validity.too_long",
                f"validity of {days} days exceeds profile {profile.name!r} maximum of "
                f"{maximum} days",
                str(days),
            )
            return None
        self.matched.append(f"validity:{days} days (requested; profile maximum {maximum})")
        return timedelta(days=days)

    def requested_extensions(self, facts: CsrFacts) -> None:
        # A CSR's extensions are never copied; asking for authority is refused, not ignored, so
        # the requester learns that the certificate would not be what they asked for.
        if facts.requests_ca:
            self.fail(
                "extension.ca_requested",
                "the CSR asks for a CA certificate (basicConstraints cA=true); only end-entity "
                "certificates are issued here",
                "basicConstraints",
            )
        if facts.requested_name_constraints:
            self.fail(
                "extension.name_constraints_requested",
                "the CSR asks for name constraints, which only CA certificates carry",
                "nameConstraints",
            )
        if facts.requested_policies:
            self.fail(
                "extension.policies_requested",
                f"the CSR asks for certificate policies ({_listing(facts.requested_policies)}); "
                "policies come from the profile",
                ",".join(facts.requested_policies),
            )

    def names(
        self,
        kind: str,
        raw: Iterable[str],
        normalize: Callable[[str], str],
        profile_rules: Sequence[_R],
        requester_rules: Sequence[_R],
        matches: Callable[[_R, str], bool],
    ) -> list[str]:
        """Check one kind of SAN; returns the well-formed names (normalised)."""
        profile, who, label = self.profile, self.requester_, _LABELS[kind]
        restricted = bool(who.rules)
        out = []
        for value in raw:
            try:
                name = normalize(value)
            except (InvalidName, ValueError) as exc:
                rule = exc.rule if isinstance(exc, InvalidName) else "syntax"
                self.fail(f"{kind}.{rule}", f"{label} {value!r} {exc}", value)
                continue
            out.append(name)
            ok = True
            if kind == "dns" and is_wildcard(name) and not profile.allow_wildcards:
                self.fail(
                    "dns.wildcard_not_allowed",
                    f"profile {profile.name!r} does not allow wildcard names such as {name!r}",
                    name,
                )
                ok = False
            by_profile = _first_match(profile_rules, matches, name)
            if by_profile is None:
                self.fail(
                    f"{kind}.not_allowed",
                    f"{label} {name!r} is not allowed by profile {profile.name!r} "
                    f"(allowed: {_listing(profile_rules)})",
                    name,
                )
                ok = False
            by_requester = None
            if restricted:
                by_requester = _first_match(requester_rules, matches, name)
                if by_requester is None:
                    self.fail(
                        f"{kind}.requester_not_allowed",
                        f"requester {who.name!r} may not have {label} {name!r} "
                        f"(its {label} rules: {_listing(requester_rules)})",
                        name,
                    )
                    ok = False
            if ok:
                record = f"{kind}:{name} allowed by profile rule {by_profile}"
                if by_requester is not None:
                    record += f"; requester rule {by_requester}"
                self.matched.append(record)
        return out

    def subject(self, facts: CsrFacts) -> list[tuple[str, str]]:
        """The subject the certificate gets; the CN repeats a SAN or is dropped per profile."""
        profile = self.profile
        kept = []
        for attr, value in facts.subject_attributes:
            if attr == "CN" and profile.common_name == "drop":
                self.matched.append(f"cn:{value} dropped from the subject by profile")
                continue
            if attr not in profile.subject_attributes:
                self.fail(
                    "subject.attribute_not_allowed",
                    f"subject attribute {attr}={value!r} is not allowed by profile "
                    f"{profile.name!r} (allowed: {_listing(sorted(profile.subject_attributes))})",
                    attr,
                )
                continue
            kept.append((attr, value))
        cn = facts.common_name
        if cn is not None and profile.common_name == "require_san":
            sans = set(facts.san_strings())
            if any(f"{kind}:{cn}" in sans for kind in ("dns", "ip", "uri", "email")):
                self.matched.append(f"cn:{cn} repeats a SAN")
            else:
                self.fail(
                    "cn.not_a_san",
                    f"common name {cn!r} is not one of the subjectAltNames; add it as a SAN "
                    f"or leave the CN out{_cn_hint(cn, facts)}",
                    cn,
                )
        return kept

    def name_constraints(
        self,
        constraints: x509.NameConstraints,
        dns: list[str],
        ips: list[str],
        uris: list[str],
        emails: list[str],
        subject: list[tuple[str, str]],
    ) -> None:
        findings = check_name_constraints(
            constraints,
            dns_names=dns,
            ip_addresses=[ipaddress.ip_address(ip) for ip in ips],
            uris=uris,
            emails=emails,
            subject=subject_name(subject),
        )
        for finding in findings:
            self.fail(f"name_constraints.{finding.rule}", finding.detail, finding.value)
        if not findings:
            self.matched.append("name_constraints:every name is within the issuing CA's")


def _first_match(rules: Iterable[_R], matches: Callable[[_R, str], bool], name: str) -> _R | None:
    return next((rule for rule in rules if matches(rule, name)), None)


def _cn_hint(cn: str, facts: CsrFacts) -> str:
    """Point out the near misses: a U-label CN for an A-label SAN, a non-canonical IP."""
    try:
        ip = ipaddress.ip_address(cn)
    except ValueError:
        pass
    else:
        return f" (write the IP address as {str(ip)!r})" if ip in facts.ip_addresses else ""
    a_labels = to_a_labels(cn) if not cn.isascii() else None
    if a_labels is not None and a_labels in facts.dns_names:
        return f" (a CN must repeat the SAN byte for byte: write {a_labels!r})"
    return ""


def violations_text(violations: Sequence[Violation]) -> str:
    """One line listing the violations (for CLI output and exception messages)."""
    return "; ".join(v.detail for v in violations)
