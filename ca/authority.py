"""The authority: config, store, key store, clock and profiles wired together, plus loaded issuers.

Front ends (CLI, REST, ACME, scheduler) build one :class:`Authority` per process and call the
issuance and hierarchy functions with it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.clock import Clock, SystemClock
from ca.config import AppConfig, pin_sources
from ca.errors import KeyMismatch, NotFound, UnknownProfile
from ca.keys import IssuerKey, KeyRef, KeyStore, SigningHash, signature_hash_for
from ca.profiles import Profile
from ca.store.db import CaRow, Database
from ca.x509build import CaUrls


@dataclass(frozen=True)
class LoadedIssuer:
    """A CA ready to sign: its stored row, certificate, HSM key and the URLs it puts in certificates."""

    row: CaRow
    certificate: x509.Certificate
    key: IssuerKey
    urls: CaUrls
    hash_algorithm: SigningHash
    chain: tuple[x509.Certificate, ...]  # this CA and its parents up to (excluding) the root

    @property
    def name(self) -> str:
        return self.row.name


@dataclass
class Authority:
    """Everything the core needs, built once per process (after any fork)."""

    config: AppConfig
    db: Database
    keys: KeyStore
    clock: Clock = field(default_factory=SystemClock)
    _issuers: dict[str, LoadedIssuer] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_config(cls, config: AppConfig, environ: Mapping[str, str] | None = None) -> Authority:
        """Wire the real parts: the database from the URL and the PKCS#11 key store."""

        from ca.keys.pkcs11 import Pkcs11KeyStore  # the only HSM import

        if config.hsm.softhsm_conf and "SOFTHSM2_CONF" not in os.environ:
            os.environ["SOFTHSM2_CONF"] = str(config.path(config.hsm.softhsm_conf))
        keystore = Pkcs11KeyStore(
            config.hsm.module, pin_sources(config, environ), config.hsm.pool_size
        )
        return cls(
            config=config, db=Database(config.database_url, config.database.echo), keys=keystore
        )

    @functools.cached_property
    def profiles(self) -> dict[str, Profile]:
        """The configured profiles, validated once (the config is frozen)."""
        return {
            name: Profile.from_config(name, p, self.config.ca.default_issuer)
            for name, p in self.config.profiles.items()
        }

    def profile(self, name: str) -> Profile:
        found = self.profiles.get(name)
        if found is None:
            raise UnknownProfile(
                f"unknown profile {name!r} (configured: {', '.join(sorted(self.profiles))})"
            )
        return found

    def now(self) -> datetime:
        return self.clock.now()

    def urls_for(self, issuer_name: str) -> CaUrls:
        # The root's CRL (of CA certificates, often signed offline) is never partitioned.
        shards = 1 if issuer_name == self.config.ca.root_name else self.config.crl.shards
        return CaUrls.for_issuer(self.config.server.public_base_url, issuer_name, shards)

    def issuer(self, name: str) -> LoadedIssuer:
        """The CA ``name`` with its key loaded from the HSM and checked against its certificate."""
        with self._lock:
            cached = self._issuers.get(name)
        if cached is not None:
            return cached
        row = self.db.get_ca(name)
        if row.status != "active":
            raise NotFound(f"CA {name!r} is {row.status}")
        cert = x509.load_der_x509_certificate(row.certificate_der)
        key = self.keys.load(KeyRef(row.key_token, row.key_label, row.key_id))
        if not same_public_key(key.public_key(), cert.public_key()):
            raise KeyMismatch(
                f"the key of CA {name!r} in token {row.key_token!r} does not match its certificate"
            )
        chain = self._chain(row, cert)
        loaded = LoadedIssuer(
            row=row,
            certificate=cert,
            key=key,
            urls=self.urls_for(name),
            hash_algorithm=signature_hash_for(key),
            chain=chain,
        )
        with self._lock:
            self._issuers[name] = loaded
        return loaded

    def issuer_chain(self, name: str) -> tuple[x509.Certificate, ...]:
        """CA ``name`` and its parents below the root, from the database (no HSM needed)."""
        with self._lock:
            cached = self._issuers.get(name)
        if cached is not None:
            return cached.chain
        row = self.db.get_ca(name)
        return self._chain(row, x509.load_der_x509_certificate(row.certificate_der))

    def _chain(self, row: CaRow, cert: x509.Certificate) -> tuple[x509.Certificate, ...]:
        chain = [cert]
        parent_id = row.parent_id
        cas = {c.id: c for c in self.db.list_cas()} if parent_id is not None else {}
        while parent_id is not None:
            parent = cas[parent_id]
            if parent.parent_id is None:
                break  # the root is not part of the chain handed to clients
            chain.append(x509.load_der_x509_certificate(parent.certificate_der))
            parent_id = parent.parent_id
        return tuple(chain)

    def forget_issuers(self) -> None:
        with self._lock:
            self._issuers.clear()

    def audit(self, actor: str, action: str, subject: str, details: Mapping[str, Any]) -> None:
        """Record one event in its own transaction (for events with no other state change)."""
        with self.db.write() as conn:
            self.db.append_audit(conn, self.now(), actor, action, subject, details)


def same_public_key(a: Any, b: Any) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return bool(a.public_bytes(enc, fmt) == b.public_bytes(enc, fmt))


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def serial_hex(serial: int) -> str:
    """The canonical text form of a serial: lowercase hex, no leading zeros."""
    return format(serial, "x")


def normalize_serial(text: str) -> str:
    """Accept ``0A:1B…``, ``0a1b…`` or ``0x0a1b``; return the canonical form."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "").replace(" ", "")
    if not cleaned or len(cleaned) > 40 or any(c not in "0123456789abcdef" for c in cleaned):
        raise NotFound(f"{text!r} is not a certificate serial (hex)")
    return serial_hex(int(cleaned, 16))
