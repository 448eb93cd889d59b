"""Names in certificates: strict syntax checks, policy rules and issuer name constraints (pure).

DNS names must already be in their certificate form: lowercase A-labels (IDNA 2008), no trailing
dot. Nothing is silently rewritten: a name that is not exactly what the certificate would carry is
refused with the reason, so a requester never receives a certificate for a name it did not ask for.

Rule syntax (profiles and requesters share it):

``host.example``  exactly that name
``.example``      any name below ``example``, at any depth (not ``example`` itself)
``*.example``     exactly one label below ``example``, and the wildcard name ``*.example`` itself
``.``             any name

IP rules are CIDR networks. URI patterns are URIs whose ``*`` matches one or more characters inside
one path segment (never ``/``, ``?`` or ``#``); ``*`` may appear only after the authority, the
scheme and host compare case-insensitively, everything else exactly. Email patterns are an exact
address, ``*@domain`` (any mailbox at exactly that domain) or ``*@.domain`` (any mailbox at any
domain below ``domain``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import idna
from cryptography import x509
from cryptography.x509.oid import NameOID

MAX_NAME_OCTETS = 253
MAX_LABEL_OCTETS = 63
MAX_LOCAL_PART_OCTETS = 64

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_NOT_IN_URIS = frozenset('"<>\\^`{|}')
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*\Z")
# RFC 5322 dot-atom text; quoted local parts are refused (nobody needs them in a certificate).
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")


class InvalidName(ValueError):
    """A name or rule that breaks the syntax rules; ``str()`` lists every reason found."""

    #: Violation rule id used by the policy for this kind of problem.
    rule = "syntax"

    def __init__(self, name: str, reasons: Sequence[str]) -> None:
        super().__init__("; ".join(reasons))
        self.name = name
        self.reasons = tuple(reasons)


class InvalidWildcard(InvalidName):
    """A wildcard name in the wrong shape (``*.com``, ``a.*.b``, ``*x.b``, ``*``)."""

    rule = "wildcard_invalid"


# --- DNS names --------------------------------------------------------------------------------


def is_wildcard(name: str) -> bool:
    return name.startswith("*.")


def normalize_dns_name(name: str, *, allow_wildcard: bool = True) -> str:
    """``name`` if it is a valid dNSName as a certificate carries it; :class:`InvalidName` otherwise.

    Raises :class:`InvalidWildcard` when the only problems are about the wildcard's shape.
    """
    problems, wildcard_problems = _dns_problems(name, allow_wildcard)
    if problems:
        raise InvalidName(name, problems + wildcard_problems)
    if wildcard_problems:
        raise InvalidWildcard(name, wildcard_problems)
    return name


def _dns_problems(name: str, allow_wildcard: bool) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    wildcard: list[str] = []
    if not name:
        return ["is empty"], []
    if not name.isascii():
        odd = ", ".join(f"U+{ord(c):04X}" for c in dict.fromkeys(c for c in name if ord(c) > 127))
        hint = to_a_labels(name)
        return [
            f"contains non-ASCII characters ({odd}): dNSName takes A-labels only, "
            + (f"write {hint!r}" if hint else "write each IDN label as its xn-- A-label")
        ], []
    if name != name.lower():
        problems.append("must be lowercase")
    if len(name) > MAX_NAME_OCTETS:
        problems.append(f"is {len(name)} octets long; at most {MAX_NAME_OCTETS}")
    labels = name.split(".")
    if name.endswith(".") and name != ".":
        problems.append("must not end with a dot")
        labels = labels[:-1]
    if any(not label for label in labels):
        problems.append("has an empty label")
    for i, label in enumerate(labels):
        if "*" in label:
            if not allow_wildcard:
                wildcard.append("must not contain a wildcard")
            elif i > 0:
                wildcard.append("a wildcard may only be the leftmost label")
            elif label != "*":
                wildcard.append(
                    "a wildcard must be the whole leftmost label ('*.example.com', not '*x.example.com')"
                )
            continue
        problems.extend(_label_problems(label))
    if labels and labels[-1].isdigit():
        problems.append("the top-level label is all digits (IP addresses go in iPAddress SANs)")
    if allow_wildcard and labels and labels[0] == "*" and len(labels) < 3:
        wildcard.append(
            "'*' alone is not a name"
            if len(labels) == 1
            else "a wildcard needs at least two labels after it ('*.example.com', not '*.com')"
        )
    return list(dict.fromkeys(problems)), list(dict.fromkeys(wildcard))


def _label_problems(label: str) -> list[str]:
    if not label:
        return []
    problems = []
    if len(label) > MAX_LABEL_OCTETS:
        problems.append(
            f"label {label[:16]}... is {len(label)} octets long; at most {MAX_LABEL_OCTETS}"
        )
    bad = [c for c in dict.fromkeys(label.lower()) if c not in _LDH]
    if "_" in bad:
        problems.append("contains '_' (underscores are not allowed in host names)")
        bad.remove("_")
    if bad:
        problems.append(f"contains {''.join(bad)!r} (only a-z, 0-9 and '-' are allowed)")
    if label.startswith("-") or label.endswith("-"):
        problems.append(f"label {label!r} starts or ends with '-'")
    if label[2:4] == "--":
        if label.startswith("xn--"):
            if not label.endswith("-"):
                problems.extend(_a_label_problems(label))
        else:
            problems.append(
                f"label {label!r} has '--' in positions 3-4, which only xn-- A-labels may have"
            )
    return problems


def _a_label_problems(label: str) -> list[str]:
    """An ``xn--`` label must decode under IDNA 2008 and encode back to exactly itself."""
    if label != label.lower() or any(c not in _LDH for c in label):
        return []  # already reported
    try:
        ulabel = idna.decode(label)
        again = idna.encode(ulabel).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return [f"label {label!r} is not a valid IDNA 2008 A-label ({reason})"]
    if again != label:
        return [f"label {label!r} is not the canonical A-label of {ulabel!r} (that is {again!r})"]
    return []


def to_a_labels(name: str) -> str | None:
    """The IDNA 2008 A-label form of a Unicode name (wildcard kept), or None if it has none."""
    if name.startswith("*."):
        rest = to_a_labels(name[2:])
        return None if rest is None else "*." + rest
    try:
        return idna.encode(name).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return None


# --- DNS rules --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DnsRule:
    """One DNS name rule (see the module docstring). ``base`` is the name the rule is about."""

    text: str
    kind: Literal["any", "exact", "suffix", "one_label"]
    base: str

    @classmethod
    def parse(cls, text: str) -> DnsRule:
        if text == ".":
            return cls(text, "any", "")
        if text.startswith("*."):
            return cls(text, "one_label", normalize_dns_name(text[2:], allow_wildcard=False))
        if text.startswith("."):
            return cls(text, "suffix", normalize_dns_name(text[1:], allow_wildcard=False))
        return cls(text, "exact", normalize_dns_name(text, allow_wildcard=False))

    def matches(self, name: str) -> bool:
        """Whether a valid (normalised) DNS name, wildcard or not, falls under this rule."""
        if self.kind == "any":
            return True
        if self.kind == "exact":
            return name == self.base
        if not name.endswith("." + self.base):
            return False
        if self.kind == "suffix":
            return True
        return "." not in name[: -len(self.base) - 1]

    def __str__(self) -> str:
        return self.text


# --- IP addresses -----------------------------------------------------------------------------


def parse_ip_range(text: str) -> IPNetwork:
    """A CIDR network (a bare address is a /32 or /128); host bits must be zero."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidName(text, [f"is not a CIDR network ({exc})"]) from None


def ip_in(ip: IPAddress, network: IPNetwork) -> bool:
    return ip.version == network.version and ip in network


# --- URIs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _UriParts:
    scheme: str  # lowercase
    # (userinfo, host, port) with the host lowercased; None when the URI has no authority.
    authority: tuple[str | None, str, str | None] | None
    rest: str  # path, query and fragment as written

    @property
    def host(self) -> str | None:
        return self.authority[1] if self.authority else None


def _split_uri(uri: str) -> _UriParts | None:
    scheme, sep, rest = uri.partition(":")
    if not sep or not _SCHEME.match(scheme):
        return None
    if not rest.startswith("//"):
        return _UriParts(scheme.lower(), None, rest)
    end = len(rest)
    for stop in "/?#":
        found = rest.find(stop, 2)
        if found != -1:
            end = min(end, found)
    authority, rest = rest[2:end], rest[end:]
    userinfo: str | None = None
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
    port: str | None = None
    if authority.startswith("["):
        close = authority.find("]")
        host, tail = (
            (authority, "") if close == -1 else (authority[: close + 1], authority[close + 1 :])
        )
        if tail.startswith(":"):
            port = tail[1:]
        elif tail:
            host += tail
    else:
        host, colon, port_text = authority.partition(":")
        port = port_text if colon else None
    return _UriParts(scheme.lower(), (userinfo, host.lower(), port), rest)


def uri_host(uri: str) -> str | None:
    """The lowercased host of a URI (``[v6]`` literals keep their brackets), or None."""
    parts = _split_uri(uri)
    return parts.host if parts else None


def normalize_uri(uri: str) -> str:
    """``uri`` if it is acceptable as a uniformResourceIdentifier SAN; :class:`InvalidName` otherwise.

    The URI is kept as written (scheme and host compare case-insensitively when matching).
    """
    reasons = _uri_problems(uri, pattern=False)
    if reasons:
        raise InvalidName(uri, reasons)
    return uri


def _uri_problems(uri: str, *, pattern: bool) -> list[str]:
    if not uri:
        return ["is empty"]
    if not uri.isascii() or any(c <= " " or c == "\x7f" for c in uri):
        return ["must be ASCII without spaces or control characters (percent-encode them)"]
    odd = "".join(dict.fromkeys(c for c in uri if c in _NOT_IN_URIS))
    if odd:
        # Some parsers read a backslash as '/', which could sidestep a pattern; RFC 3986 has none.
        return [f"contains {odd!r}, which RFC 3986 does not allow (percent-encode them)"]
    parts = _split_uri(uri)
    if parts is None:
        return ["must start with a scheme such as 'spiffe:' or 'https:'"]
    problems = []
    if not parts.rest and parts.authority is None:
        problems.append("has nothing after the scheme")
    if parts.authority is not None:
        userinfo, host, port = parts.authority
        if pattern and "*" in (userinfo or "") + host + (port or ""):
            problems.append("'*' may appear only in the path, query or fragment, not the authority")
        elif not host:
            problems.append("has an empty host")
        elif host.startswith("["):
            try:
                ipaddress.IPv6Address(host[1:-1] if host.endswith("]") else "!")
            except ValueError:
                problems.append(f"host {host!r} is not an IPv6 literal")
        elif not _is_ipv4(host):
            try:
                normalize_dns_name(host, allow_wildcard=False)
            except InvalidName as exc:
                problems.append(f"host {host!r} {exc}")
        if port is not None and not (port.isdigit() and int(port) <= 65535):
            problems.append(f"port {port!r} is not a number up to 65535")
    path = parts.rest.split("?", 1)[0].split("#", 1)[0]
    if any(seg.lower().replace("%2e", ".") in (".", "..") for seg in path.split("/")):
        problems.append("has '.' or '..' path segments")
    if "%2f" in path.lower():
        problems.append("has a percent-encoded '/' in its path")
    return problems


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class UriPattern:
    """A URI pattern (see the module docstring), e.g. ``spiffe://corp.internal/ns/*/sa/*``."""

    text: str
    scheme: str
    authority: tuple[str | None, str, str | None] | None
    rest: re.Pattern[str]

    @classmethod
    def parse(cls, text: str) -> UriPattern:
        reasons = _uri_problems(text, pattern=True)
        parts = _split_uri(text)
        if reasons or parts is None:
            raise InvalidName(text, reasons)
        rest = "[^/?#]+".join(re.escape(piece) for piece in parts.rest.split("*"))
        return cls(text, parts.scheme, parts.authority, re.compile(rest))

    def matches(self, uri: str) -> bool:
        parts = _split_uri(uri)
        return (
            parts is not None
            and parts.scheme == self.scheme
            and parts.authority == self.authority
            and self.rest.fullmatch(parts.rest) is not None
        )

    def __str__(self) -> str:
        return self.text


# --- email addresses --------------------------------------------------------------------------


def normalize_email(address: str) -> str:
    """``address`` if it is acceptable as an rfc822Name SAN; :class:`InvalidName` otherwise."""
    reasons = _email_problems(address)
    if reasons:
        raise InvalidName(address, reasons)
    return address


def _email_problems(address: str, *, pattern: bool = False) -> list[str]:
    if not address.isascii() or any(c <= " " or c == "\x7f" for c in address):
        return ["must be ASCII without spaces (internationalised mailboxes are not supported)"]
    local, at, domain = address.rpartition("@")
    if not at or not local:
        return ["must be local-part@domain"]
    problems = []
    if not (pattern and local == "*"):
        if len(local) > MAX_LOCAL_PART_OCTETS:
            problems.append(f"local part is longer than {MAX_LOCAL_PART_OCTETS} octets")
        if not _LOCAL_PART.match(local):
            problems.append(f"local part {local!r} is not a plain dot-atom")
    if pattern and local == "*" and domain.startswith("."):
        domain = domain[1:]
    try:
        normalize_dns_name(domain, allow_wildcard=False)
    except InvalidName as exc:
        problems.append(f"domain {domain!r} {exc}")
    return problems


@dataclass(frozen=True)
class EmailPattern:
    """``user@domain`` exactly, ``*@domain`` (that domain only) or ``*@.domain`` (below it)."""

    text: str
    local: str | None  # None: any mailbox
    domain: str
    below: bool

    @classmethod
    def parse(cls, text: str) -> EmailPattern:
        reasons = _email_problems(text, pattern=True)
        if reasons:
            raise InvalidName(text, reasons)
        local, _, domain = text.rpartition("@")
        below = local == "*" and domain.startswith(".")
        return cls(text, None if local == "*" else local, domain.removeprefix("."), below)

    def matches(self, address: str) -> bool:
        local, _, domain = address.rpartition("@")
        domain = domain.lower()
        if self.local is not None and local != self.local:
            return False
        return domain.endswith("." + self.domain) if self.below else domain == self.domain

    def __str__(self) -> str:
        return self.text


# --- mixed rule lists (requesters) ------------------------------------------------------------


@dataclass(frozen=True)
class NameRules:
    """A mixed list of rules split by the kind of name each applies to."""

    dns: tuple[DnsRule, ...] = ()
    ips: tuple[IPNetwork, ...] = ()
    uris: tuple[UriPattern, ...] = ()
    emails: tuple[EmailPattern, ...] = ()

    @classmethod
    def parse(cls, rules: Iterable[str]) -> NameRules:
        """Classify each rule: CIDR, then URI (has ``:``), then email (has ``@``), else DNS."""
        dns: list[DnsRule] = []
        ips: list[IPNetwork] = []
        uris: list[UriPattern] = []
        emails: list[EmailPattern] = []
        for text in rules:
            try:
                ips.append(ipaddress.ip_network(text, strict=True))
                continue
            except ValueError:
                pass
            if ":" in text:
                uris.append(UriPattern.parse(text))
            elif "@" in text:
                emails.append(EmailPattern.parse(text))
            else:
                dns.append(DnsRule.parse(text))
        return cls(tuple(dns), tuple(ips), tuple(uris), tuple(emails))

    def __bool__(self) -> bool:
        return bool(self.dns or self.ips or self.uris or self.emails)


# --- issuer name constraints (RFC 5280 4.2.1.10) ----------------------------------------------


@dataclass(frozen=True)
class ConstraintFinding:
    """A name the issuer's name constraints forbid. ``rule`` is ``excluded`` or ``not_permitted``."""

    rule: Literal["excluded", "not_permitted"]
    value: str
    subtree: str | None  # the excluded subtree, None for not_permitted

    @property
    def detail(self) -> str:
        if self.rule == "excluded":
            return f"{self.value} is in the issuing CA's excluded subtree {self.subtree}"
        return f"{self.value} is outside the issuing CA's permitted subtrees"


def _dns_within(name: str, base: str) -> bool:
    """RFC 5280 dNSName subtree: the base itself or any name below it ('.base': below only)."""
    base = base.lower()
    if not base:
        return True
    if base.startswith("."):
        return name.endswith(base)
    return name == base or name.endswith("." + base)


def _dns_permitted_by(name: str, base: str) -> bool:
    # A wildcard is permitted only if every name it can stand for is inside the subtree.
    return _dns_within(name[2:], base.lstrip(".")) if is_wildcard(name) else _dns_within(name, base)


def _dns_excluded_by(name: str, base: str) -> bool:
    # A wildcard is excluded if any name it can stand for is inside the subtree.
    if not is_wildcard(name):
        return _dns_within(name, base)
    parent = name[2:]
    base = base.lower()
    if _dns_within(parent, base.lstrip(".")):
        return True
    one_below = not base.startswith(".") and base.endswith("." + parent)
    return one_below and "." not in base[: -len(parent) - 1]


def _ip_within(ip: IPAddress, network: object) -> bool:
    return isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network) and ip_in(ip, network)


def _uri_host_within(host: str, base: str) -> bool:
    base = base.lower()
    return host.endswith(base) if base.startswith(".") else host == base


def _email_within(address: str, base: str) -> bool:
    local, _, domain = address.rpartition("@")
    domain = domain.lower()
    if "@" in base:
        base_local, _, base_domain = base.rpartition("@")
        return local == base_local and domain == base_domain.lower()
    base = base.lower()
    return domain.endswith(base) if base.startswith(".") else domain == base


def _name_within(subject: x509.Name, base: x509.Name) -> bool:
    return subject.rdns[: len(base.rdns)] == base.rdns


def check_name_constraints(
    constraints: x509.NameConstraints,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[IPAddress] = (),
    uris: Sequence[str] = (),
    emails: Sequence[str] = (),
    subject: x509.Name | None = None,
) -> list[ConstraintFinding]:
    """Every name of the certificate-to-be that the issuer's name constraints forbid.

    Per RFC 5280 4.2.1.10 a name type with no permitted subtree is unrestricted by
    ``permittedSubtrees``; excluded subtrees always apply. A URI is judged by its host; a URI
    without a DNS host fails any URI constraint. emailAddress attributes of the subject are
    checked as rfc822Names, and a non-empty subject against directoryName subtrees.
    """
    permitted = list(constraints.permitted_subtrees or ())
    excluded = list(constraints.excluded_subtrees or ())
    findings: list[ConstraintFinding] = []

    def check(
        value: str,
        kind: type[x509.GeneralName],
        permitted_by: Callable[[Any], bool],
        excluded_by: Callable[[Any], bool] | None = None,
    ) -> None:
        excluded_by = excluded_by or permitted_by
        for gn in excluded:
            if isinstance(gn, kind) and excluded_by(gn.value):
                findings.append(ConstraintFinding("excluded", value, _describe(gn)))
                return
        allowed = [gn for gn in permitted if isinstance(gn, kind)]
        if allowed and not any(permitted_by(gn.value) for gn in allowed):
            findings.append(ConstraintFinding("not_permitted", value, None))

    for name in dns_names:
        check(
            f"dns:{name}",
            x509.DNSName,
            partial(_dns_permitted_by, name),
            partial(_dns_excluded_by, name),
        )
    for ip in ip_addresses:
        check(f"ip:{ip}", x509.IPAddress, partial(_ip_within, ip))
    uri_constrained = any(
        isinstance(gn, x509.UniformResourceIdentifier) for gn in permitted + excluded
    )
    for uri in uris:
        host = uri_host(uri)
        if not host or host.startswith("[") or _is_ipv4(host):
            if uri_constrained:
                findings.append(ConstraintFinding("not_permitted", f"uri:{uri}", None))
            continue
        check(f"uri:{uri}", x509.UniformResourceIdentifier, partial(_uri_host_within, host))
    subject_emails = []
    if subject is not None:
        subject_emails = [
            str(a.value) for a in subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)
        ]
    for address in [*emails, *subject_emails]:
        check(f"email:{address}", x509.RFC822Name, partial(_email_within, address))
    if subject is not None and len(subject) > 0:
        check(
            f"subject:{subject.rfc4514_string()}",
            x509.DirectoryName,
            partial(_name_within, subject),
        )
    return findings


def _describe(gn: x509.GeneralName) -> str:
    if isinstance(gn, x509.DirectoryName):
        return gn.value.rfc4514_string()
    return str(gn.value)
