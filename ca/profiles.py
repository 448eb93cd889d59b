"""Issuance profiles: what a certificate issued under a name looks like (pure data, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca.config import ProfileConfig
from ca.errors import ConfigError

EKU_NAMES: dict[str, x509.ObjectIdentifier] = {
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "timeStamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "OCSPSigning": ExtendedKeyUsageOID.OCSP_SIGNING,
}
KEY_TYPES = {"ec:P-256", "ec:P-384", "ec:P-521", "rsa:2048", "rsa:3072", "rsa:4096"}


@dataclass(frozen=True)
class Profile:
    """A validated profile. ``key_types`` holds strings like ``ec:P-256`` or ``rsa:2048``."""

    name: str
    issuer: str
    validity: timedelta
    max_validity: timedelta
    key_types: frozenset[str]
    extended_key_usage: tuple[x509.ObjectIdentifier, ...]
    certificate_policies: tuple[x509.ObjectIdentifier, ...]
    backdate: timedelta
    require_san: bool

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
        )

    def is_server(self) -> bool:
        return EKU_NAMES["serverAuth"] in self.extended_key_usage
