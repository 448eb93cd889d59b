"""Issuance policy: pure decisions about who may have which certificate (no I/O).

``decide()`` takes a checked CSR, the profile, the requester and the issuing CA's name constraints and
returns a :class:`Decision` holding *every* violated rule (so a 403 tells the requester all there is
to fix) and every rule that matched (so an auditor can later answer "why was this name allowed?").

Name rules, shared by profiles and requesters (see :mod:`ca.names`):
    ``host.example``  exactly that name        ``.example``  any name below example, any depth
    ``*.example``     one label below example  ``.``         any name
IP rules are CIDR networks, URI rules are patterns whose ``*`` matches within one path segment,
email rules are exact addresses or ``*@domain``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509

from ca.csr import CsrFacts
from ca.profiles import Profile

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

    @property
    def allowed(self) -> bool:
        return not self.violations

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
    """Every rule of ``profile`` and ``requester`` applied to ``facts``; see the module docstring."""
    raise NotImplementedError


def violations_text(violations: Sequence[Violation]) -> str:
    """One line listing the violations (for CLI output and exception messages)."""
    return "; ".join(v.detail for v in violations)
