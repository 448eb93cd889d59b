"""Running one challenge validation: pick the validator by challenge type, record the outcome.

:func:`run_validation` is the entry point for anything outside a web request too (the web
layer's validator threads, the recovery job that re-runs validations a stopped worker left
``processing``): it loads the account, authorization and challenge rows, validates, and records
the outcome with :func:`ca.acme.orders.finish_challenge`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ca.acme import dns01, http01, tlsalpn01
from ca.acme.errors import AcmeError
from ca.acme.orders import authz_status, finish_challenge, key_authorization
from ca.authority import Authority
from ca.config import AcmeConfig
from ca.store import acme as store
from ca.store.acme import AccountRow, AuthzRow, ChallengeRow

log = logging.getLogger(__name__)

#: The challenge types a validator exists for.
CHALLENGE_TYPES = ("http-01", "dns-01", "tls-alpn-01")


@dataclass(frozen=True)
class Settings:
    """Where and how validations connect (``[acme] validation_*``)."""

    http01_port: int = 80
    tlsalpn01_port: int = 443
    resolve_to: str = ""  # test setting: connect here instead of resolving
    dns_server: str = ""  # "IP:port"; empty: the system's resolvers
    timeout: float = 10.0

    @classmethod
    def from_config(cls, cfg: AcmeConfig) -> Settings:
        return cls(
            http01_port=cfg.validation_http01_port,
            tlsalpn01_port=cfg.validation_tlsalpn01_port,
            resolve_to=cfg.validation_resolve_to,
            dns_server=cfg.validation_dns_server,
            timeout=float(cfg.validation_timeout_seconds),
        )


def validate_challenge(
    challenge_type: str,
    identifier_type: str,
    identifier_value: str,
    token: str,
    account_thumbprint: str,
    settings: Settings,
) -> None:
    """Run the validator of ``challenge_type`` for an authorization's identifier (a wildcard's
    base name); returns if the response is right, raises :class:`AcmeError` otherwise."""
    key_authz = key_authorization(token, account_thumbprint)
    if challenge_type == "http-01":
        http01.check(
            identifier_type,
            identifier_value,
            token,
            key_authz,
            port=settings.http01_port,
            resolve_to=settings.resolve_to,
            dns_server=settings.dns_server,
            timeout=settings.timeout,
        )
    elif challenge_type == "dns-01":
        if identifier_type != "dns":  # never offered (RFC 8738 §7); a stale row at most
            raise AcmeError("unauthorized", "dns-01 validates DNS names only", 403)
        dns01.validate(
            identifier_value, key_authz, server=settings.dns_server, timeout=settings.timeout
        )
    elif challenge_type == "tls-alpn-01":
        tlsalpn01.validate(
            identifier_type,
            identifier_value,
            key_authz,
            port=settings.tlsalpn01_port,
            resolve_to=settings.resolve_to,
            dns_server=settings.dns_server,
            timeout=settings.timeout,
        )
    else:
        raise AcmeError("serverInternal", f"no validator for {challenge_type[:20]!r}", 500)


def run_validation(
    auth: Authority,
    challenge_id: int,
    started: tuple[ChallengeRow, AuthzRow, AccountRow] | None = None,
) -> ChallengeRow | None:
    """Validate the ``processing`` challenge ``challenge_id`` and record the outcome; the
    challenge as it is afterwards (None if there is no such challenge). A challenge that is
    not processing is left alone; one whose authorization is no longer pending (expired,
    deactivated) fails without a network check.

    ``started``: the rows as the request that just started the challenge has them (saves
    reading them again); the recovery job passes nothing and they are read.
    """
    if started is not None:
        ch, authz_row, account_row = started
        authz: AuthzRow | None = authz_row
        account: AccountRow | None = account_row
    else:
        found = store.get_challenge(auth.db, challenge_id)
        if found is None or found.status != "processing":
            return found
        ch = found
        authz = store.get_authz(auth.db, ch.authz_id)
        account = store.get_account(auth.db, authz.account_id) if authz is not None else None
    if authz is None or account is None:
        log.error("challenge %s has no authorization or account", challenge_id)
        return ch
    now = auth.now()
    failure: AcmeError | None = None
    status = authz_status(authz.status, authz.expires, now)
    if status != "pending":
        failure = AcmeError("malformed", f"the authorization is {status}", 403)
    else:
        try:
            validate_challenge(
                ch.type,
                authz.identifier_type,
                authz.identifier_value,
                ch.token,
                account.key_thumbprint,
                Settings.from_config(auth.config.acme),
            )
        except AcmeError as exc:
            failure = exc
        except Exception as exc:  # never leave the challenge processing on a validator bug
            log.exception("%s validation of challenge %s failed", ch.type, ch.id)
            failure = AcmeError("serverInternal", f"validation failed: {type(exc).__name__}", 500)
    finish_challenge(auth, account.id, authz, ch.id, failure)
    return store.get_challenge(auth.db, challenge_id)
