"""Issuance profiles: what a certificate issued under a name looks like (pure data, no I/O)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca.audit import canonical_json
from ca.config import ProfileConfig
from ca.csr import SUBJECT_ATTRIBUTES
from ca.errors import ConfigError
from ca.names import (
    DnsRule,
    EmailPattern,
    InvalidName,
    IPNetwork,
    UriPattern,
    parse_ip_range,
)

_T = TypeVar("_T")

EKU_NAMES: dict[str, x509.ObjectIdentifier] = {
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "timeStamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "OCSPSigning": ExtendedKeyUsageOID.OCSP_SIGNING,
}
KEY_TYPES = {"ec:P-256", "ec:P-384", "ec:P-521", "rsa:2048", "rsa:3072", "rsa:4096"}
#: Key usages a leaf may carry, and the key algorithms each makes sense for.
KEY_USAGES: dict[str, frozenset[str]] = {
    "digitalSignature": frozenset({"ec", "rsa"}),
    "contentCommitment": frozenset({"ec", "rsa"}),
    "keyEncipherment": frozenset({"rsa"}),  # RSA key transport; EC keys cannot do it
    "dataEncipherment": frozenset({"rsa"}),
    "keyAgreement": frozenset({"ec"}),  # ECDH
}


@dataclass(frozen=True)
class Profile:
    """A validated profile. ``key_types`` holds strings like ``ec:P-256`` or ``rsa:2048``.

    ``sha256`` identifies the exact configuration a decision was made under: the SHA-256 of the
    canonical JSON (sorted keys, no whitespace, UTF-8) of
    ``{"name": NAME, "config": <the [profiles.NAME] table with every key, defaults filled in>}``.
    """

    name: str
    issuer: str
    validity: timedelta
    max_validity: timedelta
    key_types: frozenset[str]
    extended_key_usage: tuple[x509.ObjectIdentifier, ...]
    certificate_policies: tuple[x509.ObjectIdentifier, ...]
    backdate: timedelta
    require_san: bool
    dns_rules: tuple[DnsRule, ...] = ()
    allow_wildcards: bool = False
    ip_ranges: tuple[IPNetwork, ...] = ()
    uri_patterns: tuple[UriPattern, ...] = ()
    email_patterns: tuple[EmailPattern, ...] = ()
    key_usage: tuple[str, ...] = ("digitalSignature", "keyEncipherment")
    #: Short names (``CN``, ``O``, ...) or dotted OIDs of the subject attributes a CSR may carry.
    subject_attributes: frozenset[str] = frozenset({"CN"})
    common_name: str = "require_san"  # or "drop"
    requires_approval: bool = False
    approval_ttl_hours: int = 72
    description: str = ""
    sha256: str = ""

    @classmethod
    def from_config(cls, name: str, cfg: ProfileConfig, default_issuer: str) -> Profile:
        """Validate one ``[profiles.NAME]`` table; :class:`ConfigError` names the bad key."""
        where = f"profiles.{name}"
        if cfg.validity_days > cfg.max_validity_days:
            raise ConfigError(f"{where}.validity_days exceeds {where}.max_validity_days")
        unknown = [k for k in cfg.key_types if k not in KEY_TYPES]
        if unknown:
            raise ConfigError(f"{where}.key_types: unknown {unknown} (use {sorted(KEY_TYPES)})")
        ekus = []
        for eku in cfg.extended_key_usage:
            if eku not in EKU_NAMES:
                raise ConfigError(
                    f"{where}.extended_key_usage: unknown {eku!r} (use {sorted(EKU_NAMES)})"
                )
            ekus.append(EKU_NAMES[eku])
        policies = []
        for oid in cfg.certificate_policies:
            try:
                policies.append(x509.ObjectIdentifier(oid))
            except ValueError:
                raise ConfigError(f"{where}.certificate_policies: {oid!r} is not an OID") from None
        if not cfg.key_usage:
            raise ConfigError(f"{where}.key_usage: a leaf needs at least one key usage")
        for usage in cfg.key_usage:
            if usage not in KEY_USAGES:
                raise ConfigError(
                    f"{where}.key_usage: unknown or CA-only {usage!r} (use {sorted(KEY_USAGES)})"
                )
        for attr in cfg.subject_attributes:
            if attr not in SUBJECT_ATTRIBUTES and not _is_dotted_oid(attr):
                raise ConfigError(
                    f"{where}.subject_attributes: unknown {attr!r} "
                    f"(use {', '.join(SUBJECT_ATTRIBUTES)} or a dotted OID)"
                )
        return cls(
            name=name,
            issuer=cfg.issuer or default_issuer,
            validity=timedelta(days=cfg.validity_days),
            max_validity=timedelta(days=cfg.max_validity_days),
            key_types=frozenset(cfg.key_types),
            extended_key_usage=tuple(ekus),
            certificate_policies=tuple(policies),
            backdate=timedelta(seconds=cfg.backdate_seconds),
            require_san=cfg.require_san,
            dns_rules=_parse(f"{where}.dns_names", cfg.dns_names, DnsRule.parse),
            allow_wildcards=cfg.allow_wildcards,
            ip_ranges=_parse(f"{where}.ip_ranges", cfg.ip_ranges, parse_ip_range),
            uri_patterns=_parse(f"{where}.uri_patterns", cfg.uri_patterns, UriPattern.parse),
            email_patterns=_parse(
                f"{where}.email_patterns", cfg.email_patterns, EmailPattern.parse
            ),
            key_usage=tuple(dict.fromkeys(cfg.key_usage)),
            subject_attributes=frozenset(cfg.subject_attributes),
            common_name=cfg.common_name,
            requires_approval=cfg.requires_approval,
            approval_ttl_hours=cfg.approval_ttl_hours,
            description=cfg.description,
            sha256=profile_sha256(name, cfg),
        )

    def is_server(self) -> bool:
        return EKU_NAMES["serverAuth"] in self.extended_key_usage


def profile_sha256(name: str, cfg: ProfileConfig) -> str:
    """SHA-256 (hex) of the canonical JSON of a profile's name and full configuration."""
    document = {"name": name, "config": cfg.model_dump(mode="json")}
    return hashlib.sha256(canonical_json(document)).hexdigest()


def _parse(where: str, rules: Iterable[str], parse: Callable[[str], _T]) -> tuple[_T, ...]:
    out = []
    for text in rules:
        try:
            out.append(parse(text))
        except InvalidName as exc:
            raise ConfigError(f"{where}: {text!r} {exc}") from None
    return tuple(out)


def _is_dotted_oid(text: str) -> bool:
    parts = text.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts):
        return False
    try:
        x509.ObjectIdentifier(text)
    except ValueError:
        return False
    return True
