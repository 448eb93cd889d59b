"""Configuration: one TOML file (``hsmca.toml`` in the data directory) plus ``HSMCA_*`` overrides.

Strict on purpose (as Boulder decodes its config): an unknown key or a wrong type is refused with a
message that names the key. Secrets (PINs) are never part of this object; they come from
``HSMCA_HSM_PIN`` or a PIN file with mode 0600 and are read only when a login needs them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ca.errors import ConfigError
from ca.keys import KeySpec

CONFIG_FILE = "hsmca.toml"
ENV_PREFIX = "HSMCA_"
#: Environment variables that are not config overrides.
SPECIAL_ENV = {
    "HSMCA_HOME",
    "HSMCA_CONFIG",
    "HSMCA_HSM_PIN",
    "HSMCA_HSM_ROOT_PIN",
    "HSMCA_NOTICES_SMTP_PASSWORD",
    "HSMCA_TEST_PG_URL",
    "HSMCA_TEST_KEEP",
}


class _Section(BaseModel):
    # strict: a quoted number or 1 for a boolean in the file is a mistake, not something to guess.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ServerConfig(_Section):
    """``[server]``: the listeners of ``hsmca serve``, its TLS certificate and the public URL.

    Two gunicorn arbiters: HTTPS on ``https_bind`` (everything) and plain HTTP on ``bind`` (only
    what RFC 5280 clients fetch over http: CA certificates, OCSP, CRLs, plus health checks).
    """

    bind: str = Field(
        "127.0.0.1:8080", description="host:port of the plain-HTTP listener (/ca, /ocsp, /crl)"
    )
    https_bind: str = Field(
        "127.0.0.1:8443", description="host:port of the HTTPS listener (API); empty: no HTTPS"
    )
    public_base_url: str = Field(
        "http://127.0.0.1:8080",
        description="http URL clients reach (AIA, CRL distribution point, OCSP URLs are built from it)",
    )
    tls_hostnames: list[str] = Field(
        default_factory=lambda: ["localhost"],
        description="DNS names (or IPs) in the HTTPS certificate; 127.0.0.1 and ::1 are always added",
        max_length=100,
    )
    tls_cert_file: str = Field("tls/server.crt", description="HTTPS certificate chain (PEM)")
    tls_key_file: str = Field("tls/server.key", description="HTTPS private key (PEM, mode 0600)")
    tls_renew_days: int = Field(
        30, ge=0, le=365, description="serve renews the certificate if it expires within this"
    )
    # One process by default: SQLite serialises writers anyway, and on the embedded default a
    # second worker added contention (p99 30 ms against 23 ms, bench/rest_issuance.py) without
    # adding throughput. With PostgreSQL and more cores, raise it.
    workers: int = Field(1, ge=1, le=64, description="gunicorn worker processes per listener")
    threads: int = Field(8, ge=1, le=256, description="gthread threads per worker")
    timeout_seconds: int = Field(
        30,
        ge=1,
        description="gunicorn worker timeout: a request running longer is killed and its worker restarted",
    )

    @field_validator("public_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith("http://"):
            raise ValueError("must be an http:// URL (RFC 5280 wants AIA/CDP over plain HTTP)")
        return value.rstrip("/")

    @field_validator("bind", "https_bind")
    @classmethod
    def _bind(cls, value: str, info: ValidationInfo) -> str:
        if value == "" and info.field_name == "https_bind":
            return value  # HTTPS disabled
        check_bind(value)
        return value

    @field_validator("tls_hostnames")
    @classmethod
    def _hostnames(cls, value: list[str]) -> list[str]:
        out: list[str] = []
        for name in value:
            normal = _tls_hostname(name)
            if normal in out:
                raise ValueError(f"{name!r} is listed twice")
            out.append(normal)
        return out

    @field_validator("tls_cert_file", "tls_key_file")
    @classmethod
    def _file(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a file")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> ServerConfig:
        if self.https_bind and self.https_bind == self.bind:
            raise ValueError("https_bind and bind must differ (one listener each)")
        if self.tls_cert_file == self.tls_key_file:
            raise ValueError("tls_cert_file and tls_key_file must differ")
        return self


_BIND_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)$")
_DNS_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def check_bind(value: str) -> None:
    """A gunicorn address: ``HOST:PORT``, ``[IPv6]:PORT`` or ``unix:PATH``; ValueError otherwise."""
    if value.startswith("unix:"):
        if len(value) == len("unix:"):
            raise ValueError("unix: needs a socket path")
        return
    host, sep, port = value.rpartition(":")
    if not sep or not host or not _BIND_HOST.match(host):
        raise ValueError(f"{value!r} is not HOST:PORT, [IPv6]:PORT or unix:PATH")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: the port must be 1-65535")


def _tls_hostname(name: str) -> str:
    """A DNS name (lower-cased) or an IP address (normalised) for the HTTPS certificate."""
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    lowered = name.lower()
    labels = lowered.split(".")
    if (
        not lowered.isascii()
        or len(lowered) > 253
        or not all(_DNS_LABEL.match(label) for label in labels)
    ):
        raise ValueError(
            f"{name!r} is not a DNS name or an IP address (no wildcards, no trailing dot; "
            "IDNs in their xn-- form)"
        )
    return lowered


class DatabaseConfig(_Section):
    """``[database]``: an SQLAlchemy URL; empty means SQLite ``hsmca.db`` in the data directory."""

    url: str = Field(
        "",
        description="SQLAlchemy URL, e.g. postgresql+psycopg://hsmca@db/hsmca; empty: SQLite hsmca.db in the data directory",
    )
    echo: bool = Field(False, description="log every SQL statement (debugging only)")


class HsmConfig(_Section):
    """``[hsm]``: the PKCS#11 module and tokens. PIN files are relative to the data directory."""

    module: str = Field(
        "/usr/lib/softhsm/libsofthsm2.so",
        description="path of the PKCS#11 module (SoftHSM2 by default; a network HSM's client library)",
    )
    token_label: str = Field(
        "hsmca",
        description="label of the token holding the issuing CAs', OCSP responders' and audit keys",
    )
    pin_file: str = Field(
        "pins/user.pin",
        description="file with the user PIN of token_label (mode 0600); HSMCA_HSM_PIN takes precedence",
    )
    so_pin_file: str = Field(
        "pins/so.pin",
        description="file with the SO PIN, used only when hsmca init creates a SoftHSM token",
    )
    softhsm_conf: str = Field("", description="SoftHSM2 config file (embedded default only)")
    root_token_label: str = Field(
        "", description="token of the root key; empty: same as token_label"
    )
    root_pin_file: str = Field(
        "",
        description="user PIN file of root_token_label; empty: pin_file. Keep it offline when the root is offline",
    )
    pool_size: int = Field(4, ge=1, le=64, description="PKCS#11 sessions each process keeps open")


class SchedulerConfig(_Section):
    """``[scheduler]``: the one active scheduler of an installation and its standbys (docs/scaling.md)."""

    standby_poll_seconds: float = Field(
        15.0,
        ge=0.5,
        le=600.0,
        description="how often a standby scheduler tries to take the scheduler lock, and how often "
        "the active one checks that it still holds it (a lost database session means a lost "
        "lock: it stops its jobs and stands by). A standby takes over within this time after the "
        "active scheduler's database session ends",
    )


class CaConfig(_Section):
    """``[ca]``: the hierarchy ``hsmca init`` creates."""

    organization: str = Field("hsmca", description="O of the CA subjects hsmca init creates")
    country: str = Field("", description="C (two letters) of the CA subjects; empty: none")
    root_name: str = Field(
        "root", description="name of the root CA in the CLI, URLs and the database"
    )
    root_common_name: str = Field("hsmca Root CA", description="CN of the root CA certificate")
    root_key: str = Field(
        "ec:P-384",
        description="key type of the root, generated in the HSM (ec:P-256|P-384|P-521, rsa:2048|3072|4096)",
    )
    root_validity_days: int = Field(
        7305, ge=1, le=36525, description="validity of the self-signed root certificate"
    )
    intermediate_name: str = Field(
        "issuing", description="name of the issuing CA hsmca init creates"
    )
    intermediate_common_name: str = Field(
        "hsmca Issuing CA", description="CN of the issuing CA certificate"
    )
    intermediate_key: str = Field(
        "ec:P-256", description="key type of the issuing CA, generated in the HSM"
    )
    intermediate_validity_days: int = Field(
        1826, ge=1, le=36525, description="validity of the issuing CA certificate"
    )
    default_issuer: str = Field("issuing", description="issuing CA of profiles that name none")

    @field_validator("country")
    @classmethod
    def _country(cls, value: str) -> str:
        if value and not (
            len(value) == 2 and value.isascii() and value.isalpha() and value.isupper()
        ):
            raise ValueError("must be empty or a two-letter ISO 3166 code such as DE")
        return value

    @field_validator("root_key", "intermediate_key")
    @classmethod
    def _key_spec(cls, value: str) -> str:
        try:
            KeySpec.parse(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value


class ProfileConfig(_Section):
    """``[profiles.NAME]``: what a certificate issued under this profile looks like."""

    description: str = Field(
        "", description="free text, shown in the API and the directory's meta.profiles"
    )
    issuer: str = Field("", description="issuing CA name; empty: ca.default_issuer")
    validity_days: int = Field(
        90, ge=1, description="default validity of certificates under this profile"
    )
    max_validity_days: int = Field(
        397, ge=1, description="most a request may ask for; at least validity_days"
    )
    key_types: list[str] = Field(
        default_factory=lambda: [
            "ec:P-256",
            "ec:P-384",
            "ec:P-521",
            "rsa:2048",
            "rsa:3072",
            "rsa:4096",
        ],
        description="CSR key types accepted",
    )
    extended_key_usage: list[str] = Field(
        default_factory=lambda: ["serverAuth"],
        description="EKUs: serverAuth, clientAuth, codeSigning, emailProtection, timeStamping, OCSPSigning",
    )
    certificate_policies: list[str] = Field(
        default_factory=lambda: ["2.23.140.1.2.1"], description="certificate policy OIDs (dotted)"
    )
    backdate_seconds: int = Field(
        60,
        ge=0,
        le=3600,
        description="notBefore is this long before the time of issuance (clock skew)",
    )
    require_san: bool = Field(True, description="refuse a CSR with no subjectAltName")
    # Names. Rule syntax (also used by API clients' own restrictions):
    #   "host.example"  exactly this name;  ".example"  any name below example, at any depth;
    #   "*.example"     exactly one label below example (and the wildcard name *.example);
    #   "."             any name.
    dns_names: list[str] = Field(
        default_factory=list, description="allowed DNS names: exact, .suffix, *.one-label, ."
    )
    allow_wildcards: bool = Field(False, description="allow *.name (leftmost whole label only)")
    ip_ranges: list[str] = Field(default_factory=list, description="allowed IP SANs (CIDR)")
    uri_patterns: list[str] = Field(
        default_factory=list,
        description="allowed URI SANs; * matches one path segment, e.g. spiffe://corp.internal/ns/*/sa/*",
    )
    email_patterns: list[str] = Field(
        default_factory=list,
        description="allowed email SANs: exact, *@domain, or *@.domain (any domain below)",
    )
    key_usage: list[str] = Field(
        default_factory=lambda: ["digitalSignature", "keyEncipherment"],
        description="keyEncipherment is applied to RSA keys only",
    )
    subject_attributes: list[str] = Field(
        default_factory=lambda: ["CN"],
        description="subject attributes a CSR may carry (CN, O, OU, L, ST, C, serialNumber)",
    )
    common_name: Literal["require_san", "drop"] = Field(
        "require_san", description="a CN must repeat a SAN, or is dropped from the subject"
    )
    requires_approval: bool = Field(False, description="dual control: an approver must approve")
    approval_ttl_hours: int = Field(
        72,
        ge=1,
        le=24 * 90,
        description="pending requests of a dual-control profile expire after this",
    )


def default_profiles() -> dict[str, ProfileConfig]:
    """The two profiles every installation starts with."""
    return {
        "server": ProfileConfig(
            description="TLS server certificates",
            dns_names=["."],
            ip_ranges=["0.0.0.0/0", "::/0"],
        ),
        "client": ProfileConfig(
            description="TLS client certificates",
            extended_key_usage=["clientAuth"],
            certificate_policies=[],
            dns_names=["."],
        ),
    }


class ApiConfig(_Section):
    """``[api]``: the REST enrollment API."""

    max_body_bytes: int = Field(
        256 * 1024, ge=4096, le=16 * 1024 * 1024, description="larger bodies get 413"
    )
    page_size: int = Field(100, ge=1, le=1000, description="default inventory page size")
    batch_window_ms: float = Field(
        0.0,
        ge=0,
        le=100,
        description="extra wait for company before a batch is issued (0: requests arriving while "
        "a batch is being issued form the next one, which batches under load without adding delay)",
    )
    batch_max: int = Field(32, ge=1, le=256, description="most requests signed in one batch")


class CrlConfig(_Section):
    """``[crl]``: CRL publication (defaults within the CA/Browser Forum limits)."""

    shards: int = Field(
        1, ge=1, le=1024, description="CRL partitions per CA (by serial); 1: one CRL per CA"
    )
    validity_hours: int = Field(
        168, ge=1, le=240, description="nextUpdate = thisUpdate + this (BR: at most 10 days)"
    )
    refresh_hours: int = Field(
        24, ge=1, le=168, description="a new CRL at least this often (BR: at least every 7 days)"
    )
    revocation_delay_seconds: int = Field(
        30, ge=0, le=3600, description="after a revocation, a new CRL within this (debounced)"
    )
    root_validity_days: int = Field(
        30,
        ge=1,
        le=365,
        description="nextUpdate of the root's CRL (of CA certificates, signed on demand when the "
        "root token is offline: hsmca crl generate --ca ROOT); BR: at most 12 months",
    )


class OcspConfig(_Section):
    """``[ocsp]``: the OCSP responder and its pre-signed responses."""

    response_validity_hours: int = Field(
        96, ge=1, le=240, description="nextUpdate = thisUpdate + this (BR: at most 10 days)"
    )
    refresh_hours: int = Field(
        24, ge=1, le=120, description="responses are re-signed when older than this"
    )
    responder_key: str = Field("ec:P-256", description="key type of the delegated responders")
    responder_validity_days: int = Field(
        60, ge=2, le=365, description="lifetime of a delegated responder certificate"
    )
    responder_renew_days: int = Field(
        20, ge=1, le=180, description="renew a responder certificate this long before it expires"
    )
    unknown_status: Literal["unknown", "unauthorized"] = Field(
        "unknown", description="answer for serials this CA never issued"
    )
    nonce: Literal["accept", "ignore"] = Field(
        "accept", description="accept: echo valid nonces (signed on the fly); ignore: RFC 5019"
    )
    nonce_rate_per_second: float = Field(
        50.0, gt=0, le=100000, description="on-the-fly signatures per second per worker"
    )
    max_request_bytes: int = Field(
        8192, ge=512, le=65536, description="larger OCSP requests get 413"
    )
    max_serials_per_request: int = Field(
        16, ge=1, le=1000, description="more certificates in one request: malformedRequest"
    )


class AcmeConfig(_Section):
    """``[acme]``: the ACME server (RFC 8555) under ``/acme`` on the HTTPS listener."""

    enabled: bool = Field(True, description="serve /acme; false: every /acme path is 404")
    terms_of_service_url: str = Field(
        "", description="meta.termsOfService of the directory; empty: none (no agreement needed)"
    )
    website: str = Field("", description="meta.website of the directory; empty: none")
    nonce_lifetime_seconds: int = Field(
        3600, ge=60, le=86400, description="an unused Replay-Nonce expires after this"
    )
    max_jws_bytes: int = Field(
        65536, ge=4096, le=1024 * 1024, description="larger ACME request bodies are refused"
    )
    order_lifetime_hours: int = Field(
        168, ge=1, le=720, description="an order not finalized within this becomes invalid"
    )
    authz_lifetime_hours: int = Field(
        168, ge=1, le=720, description="an authorization expires after this (at most the order's)"
    )
    validation_http01_port: int = Field(
        80, ge=1, le=65535, description="the port http-01 validation connects to (RFC 8555: 80)"
    )
    validation_resolve_to: str = Field(
        "",
        description="TEST SETTING: connect to this address for every validation instead of "
        "resolving the identifier; empty: resolve normally",
    )
    validation_tlsalpn01_port: int = Field(
        443,
        ge=1,
        le=65535,
        description="the port tls-alpn-01 validation connects to (RFC 8737: 443)",
    )
    validation_dns_server: str = Field(
        "",
        description="host:port of the DNS resolver dns-01 asks (and http-01/tls-alpn-01 resolve "
        "with); empty: the system's resolvers from /etc/resolv.conf",
    )
    validation_answer_wait_ms: int = Field(
        500,
        ge=0,
        le=5000,
        description="a challenge's response waits this long for its validation (which runs in "
        "the background either way), so a quick check answers at once; 0: never wait",
    )
    validation_timeout_seconds: int = Field(
        10, ge=1, le=60, description="one validation attempt gives up after this"
    )
    profiles: list[str] = Field(
        default_factory=list,
        description="the profiles ACME orders may use (the directory's meta.profiles), the first "
        "being the default for orders that name none; empty: every profile",
    )
    require_eab: bool = Field(
        False,
        description="new accounts must carry an external account binding made with "
        "'hsmca acme eab create --client NAME'; the account then acts as that client",
    )
    eab_key_lifetime_hours: int = Field(
        168, ge=1, le=8760, description="an unused EAB key expires after this"
    )
    orders_per_account_per_hour: int = Field(
        300, ge=0, le=1000000, description="new orders per account in any hour; 0: no limit"
    )
    new_accounts_per_ip_per_hour: int = Field(
        20,
        ge=0,
        le=1000000,
        description="new accounts from one IP address in any hour; 0: no limit",
    )

    @field_validator("terms_of_service_url", "website")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not value.startswith(("https://", "http://")):
            raise ValueError("must be empty or an http(s):// URL")
        return value

    @field_validator("validation_dns_server")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value:
            host, sep, port = value.rpartition(":")
            host = host.strip("[]")
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError("must be empty or IP:port, e.g. 127.0.0.1:5353") from None
            if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError("must be empty or IP:port, e.g. 127.0.0.1:5353")
        return value

    @field_validator("validation_resolve_to")
    @classmethod
    def _address(cls, value: str) -> str:
        if value:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError("must be empty or an IP address") from None
        return value


class AuditConfig(_Section):
    """``[audit]``: signed checkpoints of the audit chain and their external witnesses."""

    key: str = Field("ec:P-256", description="key type of the audit key (generated in the HSM)")
    checkpoint_every_events: int = Field(
        1000, ge=1, le=10_000_000, description="sign a checkpoint after this many new events"
    )
    checkpoint_every_seconds: int = Field(
        300,
        ge=5,
        le=86400,
        description="also sign one when the newest is this old and events came since",
    )
    witness_file: str = Field(
        "",
        description="append each checkpoint as a JSON line to this file (relative: to the data "
        "directory); keep it on other storage than the database; empty: none",
    )
    witness_syslog: bool = Field(False, description="also send each checkpoint to syslog")
    witness_webhook: str = Field(
        "", description="also POST each checkpoint (JSON) to this http(s) URL; empty: none"
    )

    @field_validator("witness_webhook")
    @classmethod
    def _webhook(cls, value: str) -> str:
        if value and not value.startswith(("https://", "http://")):
            raise ValueError("must be empty or an http(s):// URL")
        return value


class UiConfig(_Section):
    """``[ui]``: the compliance view under ``/ui`` on the HTTPS listener."""

    enabled: bool = Field(True, description="serve /ui; false: every /ui path is 404")
    session_minutes: int = Field(
        60, ge=5, le=1440, description="a sign-in lasts this long without activity"
    )
    max_failed_logins: int = Field(
        5, ge=1, le=1000, description="failed sign-ins per name or address in 15 minutes"
    )


class NoticeOwnerConfig(_Section):
    """``[notices.owners.NAME]``: where the expiry notices of one owner go (instead of the defaults)."""

    email: list[str] = Field(
        default_factory=list,
        description="recipients of this owner's notices; empty: default_recipients",
        max_length=100,
    )
    webhook_url: str = Field(
        "", description="http(s) URL this owner's notices are POSTed to; empty: webhook_url"
    )
    webhook_secret_file: str = Field(
        "", description="HMAC secret of this owner's webhook; empty: webhook_secret_file"
    )

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _notice_url(value)

    @field_validator("email")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        return _notice_emails(value)


class NoticesConfig(_Section):
    """``[notices]``: expiry notices to certificate owners by webhook and/or e-mail.

    The owner of a certificate is its ``metadata.owner`` from enrollment, else the API client
    that requested it (an ACME account bound to a client by EAB counts as that client). See
    ``docs/expiry-notices.md``.
    """

    enabled: bool = Field(False, description="run the expiry-notices job")
    windows_days: list[int] = Field(
        default_factory=lambda: [30, 14, 7, 1],
        description="notify when a certificate has this many days or fewer left; each owner "
        "is notified once per window (the smallest window reached)",
        min_length=1,
        max_length=20,
    )
    every_minutes: int = Field(15, ge=1, le=1440, description="how often the job looks")
    retry_minutes: int = Field(
        15,
        ge=1,
        le=1440,
        description="first wait before a failed notice is tried again; doubles per failure, "
        "at most 6 hours",
    )
    webhook_url: str = Field(
        "", description="http(s) URL every owner's notices are POSTed to (JSON); empty: none"
    )
    webhook_secret_file: str = Field(
        "",
        description="file with the HMAC-SHA256 key of the X-Hsmca-Signature header (mode 0600)",
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, le=120, description="connect and read timeout of one POST"
    )
    webhook_attempts: int = Field(
        3, ge=1, le=10, description="POSTs per notice and run before it counts as failed"
    )
    webhook_backoff_seconds: float = Field(
        1.0, ge=0, le=60, description="wait before the second POST; doubles for each next one"
    )
    smtp_host: str = Field("", description="SMTP server of e-mail notices; empty: no e-mail")
    smtp_port: int = Field(587, ge=1, le=65535, description="SMTP port (submission, STARTTLS)")
    smtp_from: str = Field("", description="From address of the notices")
    smtp_username: str = Field("", description="SMTP login name; empty: no login")
    smtp_password_file: str = Field(
        "",
        description="file with the SMTP password (mode 0600); HSMCA_NOTICES_SMTP_PASSWORD "
        "takes precedence",
    )
    smtp_timeout_seconds: float = Field(30.0, gt=0, le=300, description="SMTP timeout")
    smtp_allow_plain: bool = Field(
        False,
        description="send without TLS when the server offers no STARTTLS (labs only; never "
        "with a login)",
    )
    tls_ca_file: str = Field(
        "",
        description="PEM CA certificates trusted for webhook HTTPS and SMTP STARTTLS; empty: "
        "the system's",
    )
    default_recipients: list[str] = Field(
        default_factory=list,
        description="recipients of the notices of owners without their own email list",
        max_length=100,
    )
    acme_contacts: bool = Field(
        True,
        description="mail the notices of ACME accounts not bound to a client to the account's "
        "mailto: contacts (unless the owner has its own email list)",
    )
    owners: dict[str, NoticeOwnerConfig] = Field(
        default_factory=dict, description="destinations per owner name"
    )

    @field_validator("windows_days")
    @classmethod
    def _windows(cls, value: list[int]) -> list[int]:
        if any(d < 1 or d > 3650 for d in value):
            raise ValueError("each window is 1 to 3650 days")
        if len(set(value)) != len(value):
            raise ValueError("a window is listed twice")
        return sorted(value, reverse=True)

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _notice_url(value)

    @field_validator("default_recipients")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        return _notice_emails(value)

    @model_validator(mode="after")
    def _complete(self) -> NoticesConfig:
        hooks = [("webhook_url", self.webhook_url, self.webhook_secret_file)] + [
            (
                f"owners.{n}.webhook_url",
                o.webhook_url,
                o.webhook_secret_file or self.webhook_secret_file,
            )
            for n, o in self.owners.items()
        ]
        for key, url, secret in hooks:
            if url and not secret:
                raise ValueError(f"{key} needs a webhook_secret_file (notices are always signed)")
        if self.smtp_host and not self.smtp_from:
            raise ValueError("smtp_host needs smtp_from")
        if not self.smtp_host and (
            self.default_recipients or any(o.email for o in self.owners.values())
        ):
            raise ValueError("e-mail recipients are set but smtp_host is empty")
        return self


_NOTICE_EMAIL = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+$")


def _notice_url(value: str) -> str:
    if value and not value.startswith(("https://", "http://")):
        raise ValueError("must be empty or an http(s):// URL")
    return value


def _notice_emails(value: list[str]) -> list[str]:
    for address in value:
        if not _NOTICE_EMAIL.match(address):
            raise ValueError(f"{address!r} is not an e-mail address")
    return list(dict.fromkeys(value))


class MonitoringConfig(_Section):
    """``[monitoring]``: ``/metrics`` and the freshness checks of ``/readyz``."""

    metrics_cache_seconds: float = Field(
        5.0,
        ge=0,
        le=300,
        description="each worker reuses the database-derived metrics (CRL age, expiries, ACME "
        "orders, audit head) this long, so frequent scrapes do not load the database",
    )
    crl_max_age_seconds: int = Field(
        0,
        ge=0,
        le=30 * 86400,
        description="/readyz fails when a CA's current CRL is past nextUpdate or, if this is "
        "not 0, its thisUpdate is older than this",
    )
    ocsp_max_age_seconds: int = Field(
        0,
        ge=0,
        le=30 * 86400,
        description="/readyz fails when a pre-signed OCSP response of an unexpired certificate "
        "is past nextUpdate or, if this is not 0, its thisUpdate is older than this (0 keeps the "
        "check on an index; other values scan the stored responses)",
    )
    ocsp_responder_min_validity_hours: int = Field(
        0,
        ge=0,
        le=24 * 180,
        description="/readyz fails when a CA's OCSP responder certificate has expired or "
        "expires within this many hours",
    )


class AppConfig(_Section):
    """The whole configuration. ``data_dir`` is where it was loaded from (not in the file)."""

    data_dir: Path = Field(Path("."), strict=False)
    server: ServerConfig = Field(default_factory=ServerConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    hsm: HsmConfig = Field(default_factory=HsmConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    ca: CaConfig = Field(default_factory=CaConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    crl: CrlConfig = Field(default_factory=CrlConfig)
    ocsp: OcspConfig = Field(default_factory=OcspConfig)
    acme: AcmeConfig = Field(default_factory=AcmeConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    ui: UiConfig = Field(default_factory=UiConfig)
    notices: NoticesConfig = Field(default_factory=NoticesConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    profiles: dict[str, ProfileConfig] = Field(default_factory=default_profiles)

    # Derived values ---------------------------------------------------------------------------

    def path(self, value: str) -> Path:
        """A path from the config, relative to the data directory unless absolute."""
        p = Path(value)
        return p if p.is_absolute() else self.data_dir / p

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{(self.data_dir / 'hsmca.db').resolve()}"

    @property
    def acme_profiles(self) -> list[str]:
        """The profiles ACME offers: ``[acme] profiles``, or every profile when it is empty."""
        return list(self.acme.profiles or self.profiles)

    @property
    def root_token_label(self) -> str:
        return self.hsm.root_token_label or self.hsm.token_label


def _format_error(source: str, err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key {key!r}")
        else:
            lines.append(f"{source}: {key}: {item['msg']}")
    return "; ".join(lines)


def _env_value(name: str, text: str, annotation: Any) -> Any:
    """Convert an environment string to the field's type (int, bool or str)."""
    if annotation is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"environment: {name}: expected true or false, got {text!r}")
    if annotation is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ConfigError(f"environment: {name}: expected an integer, got {text!r}") from None
    if annotation is float:
        try:
            return float(text.strip())
        except ValueError:
            raise ConfigError(f"environment: {name}: expected a number, got {text!r}") from None
    return text


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """``HSMCA_SECTION_KEY=value`` → ``{section: {key: value}}``; unknown names are refused."""
    sections = {
        name: model
        for name, model in (
            ("server", ServerConfig),
            ("database", DatabaseConfig),
            ("hsm", HsmConfig),
            ("scheduler", SchedulerConfig),
            ("ca", CaConfig),
            ("api", ApiConfig),
            ("crl", CrlConfig),
            ("ocsp", OcspConfig),
            ("acme", AcmeConfig),
            ("audit", AuditConfig),
            ("ui", UiConfig),
            ("notices", NoticesConfig),
            ("monitoring", MonitoringConfig),
        )
    }
    out: dict[str, dict[str, Any]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in SPECIAL_ENV:
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        model = sections.get(section)
        if model is None or key not in model.model_fields:
            raise ConfigError(f"environment: unknown setting {name} (no key {section}.{key})")
        section_key = f"{section}.{key}"
        out.setdefault(section, {})[key] = _env_value(
            f"{name} ({section_key})", value, model.model_fields[key].annotation
        )
    return out


def load_config(
    data_dir: Path, environ: Mapping[str, str] | None = None, path: Path | None = None
) -> AppConfig:
    """Load ``hsmca.toml`` from ``data_dir`` (or ``path``), apply env overrides, validate strictly."""
    environ = os.environ if environ is None else environ
    data_dir = Path(data_dir).resolve()
    explicit = environ.get("HSMCA_CONFIG") or path
    path = Path(explicit or data_dir / CONFIG_FILE)
    if explicit and not path.exists():
        raise ConfigError(f"{path}: config file does not exist")
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        if "data_dir" in raw:
            raise ConfigError(f"{path}: unknown key 'data_dir' (use --data-dir or HSMCA_HOME)")
    try:
        base = AppConfig.model_validate({**raw, "data_dir": data_dir})
    except ValidationError as exc:
        raise ConfigError(_format_error(str(path), exc)) from None
    overrides = _env_overrides(environ)
    if overrides:
        merged = base.model_dump()
        for section, values in overrides.items():
            merged[section].update(values)
        merged["data_dir"] = data_dir
        try:
            base = AppConfig.model_validate(merged)
        except ValidationError as exc:
            raise ConfigError(_format_error("environment", exc)) from None
    _check_profiles(base)
    return base


_PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def _check_profiles(config: AppConfig) -> None:
    from ca.profiles import Profile  # late: profiles imports config types

    for name, profile in config.profiles.items():
        if not _PROFILE_NAME.match(name):
            raise ConfigError(
                f"profiles.{name}: a profile name is 1-64 of a-z, 0-9, '-' and '_' "
                "(it appears in URLs and API requests)"
            )
        Profile.from_config(name, profile, config.ca.default_issuer)
    for name in config.acme.profiles:
        if name not in config.profiles:
            raise ConfigError(f"acme.profiles: no profile named {name!r}")


def render_toml(config: AppConfig) -> str:
    """The config as the TOML ``hsmca init`` writes (every key, so operators see what exists)."""
    data = config.model_dump(mode="json", exclude={"data_dir"})
    lines = [
        "# hsmca configuration. Environment variables HSMCA_<SECTION>_<KEY> override keys.",
        "",
    ]
    models: dict[str, type[BaseModel]] = {
        "server": ServerConfig,
        "database": DatabaseConfig,
        "hsm": HsmConfig,
        "ca": CaConfig,
        "api": ApiConfig,
        "crl": CrlConfig,
        "ocsp": OcspConfig,
        "acme": AcmeConfig,
        "audit": AuditConfig,
        "ui": UiConfig,
        "notices": NoticesConfig,
        "monitoring": MonitoringConfig,
    }
    owners = data["notices"].pop("owners")
    for section, model in models.items():
        lines.append(f"[{section}]")
        lines += _toml_keys(model, data[section])
        lines.append("")
    for name, owner in owners.items():
        lines.append(f"[notices.owners.{_toml_value(name)}]")
        lines += _toml_keys(NoticeOwnerConfig, owner)
        lines.append("")
    if data["profiles"]:
        lines += [
            "# Profiles. Name rules: host.example (exactly), .example (any name below),",
            "# *.example (one label below), . (any name); ip_ranges are CIDR; uri_patterns use *",
            "# within one path segment; email_patterns are exact, *@domain or *@.domain.",
            "",
        ]
    for name, profile in data["profiles"].items():
        lines.append(f"[profiles.{name}]")
        lines += _toml_keys(ProfileConfig, profile)
        lines.append("")
    return "\n".join(lines)


def _toml_keys(model: type[BaseModel], values: dict[str, Any]) -> list[str]:
    """``key = value`` lines, each after a comment with the field's description if it has one."""
    out = []
    for key, value in values.items():
        field = model.model_fields.get(key)
        if field is not None and field.description:
            out.append("# " + " ".join(field.description.split()))
        out.append(f"{key} = {_toml_value(value)}")
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # A JSON string is a valid TOML basic string once DEL is escaped too.
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


# --- PINs -------------------------------------------------------------------------------------


def read_pin_file(path: Path) -> str:
    """Read a PIN file, refusing one that others may read (mode must be 0600 or stricter)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"PIN file {path} does not exist") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"PIN file {path} must have mode 0600 (it is {stat.S_IMODE(st.st_mode):04o})"
        )
    pin = path.read_text(encoding="utf-8").strip()
    if not pin:
        raise ConfigError(f"PIN file {path} is empty")
    return pin


def pin_sources(
    config: AppConfig, environ: Mapping[str, str] | None = None
) -> dict[str, Callable[[], str]]:
    """Token label → a callable returning its user PIN (env first, then the PIN file)."""
    environ = os.environ if environ is None else environ

    def source(env_name: str, file_value: str) -> Callable[[], str]:
        def read() -> str:
            if environ.get(env_name):
                return environ[env_name]
            return read_pin_file(config.path(file_value))

        return read

    pins = {config.hsm.token_label: source("HSMCA_HSM_PIN", config.hsm.pin_file)}
    if config.hsm.root_token_label and config.hsm.root_token_label != config.hsm.token_label:
        pins[config.hsm.root_token_label] = source(
            "HSMCA_HSM_ROOT_PIN", config.hsm.root_pin_file or config.hsm.pin_file
        )
    return pins
