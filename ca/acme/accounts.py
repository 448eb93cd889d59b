"""ACME accounts (RFC 8555 §7.3): creation, contact updates, deactivation, key change, and
the API client an account is bound to by external account binding (RFC 8555 §7.3.4).

Each change commits with its audit event (``acme.account.*``) in one write transaction, which
holds the writer lock, so two requests racing to register the same key make one account, and
two racing to use one EAB key bind exactly one account.

An account bound to an API client acts as that client in the policy engine: new orders are
checked against the client's roles, profiles and name rules (:func:`admit_order`), and finalize
issues with the client as the :class:`~ca.policy.Requester`. Once the client is disabled or
deleted, the account can order nothing more. Unbound accounts are limited by the profile only.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ca.acme import eab, limits
from ca.acme.errors import AcmeError, malformed
from ca.acme.jws import canonical_jwk
from ca.authority import Authority
from ca.clients import requester_of
from ca.names import ip_in
from ca.policy import Requester, Violation, violations_text
from ca.store import acme as store
from ca.store.acme import AccountRow, EabKeyRow
from ca.store.db import Database

MAX_CONTACTS = 10
#: A deliberately plain addr-spec: local@domain, no comments, quotes or IP literals.
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=^_`{|}~-]{1,64}@"
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)


class KeyInUse(AcmeError):
    """Key change to a key that another account already has (409 + that account's URL)."""

    def __init__(self, account_id: int) -> None:
        super().__init__("malformed", "the new key is already in use by another account", 409)
        self.account_id = account_id


def check_contact(value: Any) -> list[str]:
    """A contact list as RFC 8555 §7.3 wants it: ``mailto:`` URLs with one plain address each."""
    if not isinstance(value, list):
        raise malformed("contact must be a list of URLs")
    if len(value) > MAX_CONTACTS:
        raise malformed(f"at most {MAX_CONTACTS} contacts")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise malformed("contact must be a list of URLs")
        scheme, sep, address = item.partition(":")
        if not sep or scheme.lower() != "mailto":
            raise AcmeError("unsupportedContact", f"only mailto: contacts are supported: {item!r}")
        if "?" in address or "," in address or "%" in address:
            raise AcmeError(
                "invalidContact", f"a mailto: contact is one address, no headers: {item!r}"
            )
        if not _EMAIL.match(address):
            raise AcmeError("invalidContact", f"not an email address: {item[:100]!r}")
        url = "mailto:" + address
        if url not in out:
            out.append(url)
    return out


@dataclass(frozen=True)
class Registered:
    """What new-account did: the account, and whether it was created just now."""

    account: AccountRow
    created: bool


class _BindingLost(Exception):
    """The EAB key was used (or its client disabled) between the check and the transaction."""


def find_or_create(
    db: Database,
    now: datetime,
    jwk: dict[str, str],
    thumbprint: str,
    contact: Sequence[str],
    tos_agreed: bool,
    *,
    created_ip: str | None = None,
    binding: EabKeyRow | None = None,
    accounts_per_ip: int = 0,
) -> Registered:
    """The account of this key, created (and audited) if there is none.

    ``binding``: a checked EAB key (:func:`ca.acme.eab.check_binding`); the new account is bound
    to its client and the key is marked used in the same transaction (``unauthorized`` if another
    account took it meanwhile, or its client is no longer enabled). ``accounts_per_ip``: at most
    this many accounts created from ``created_ip`` per hour (0: no limit; ``rateLimited``).
    """
    existing = store.account_by_thumbprint(db, thumbprint)
    if existing is not None:
        return Registered(existing, False)
    try:
        with db.write() as conn:
            existing = store.account_by_thumbprint(db, thumbprint, conn)
            if existing is not None:  # a concurrent request registered it first
                return Registered(existing, False)
            limits.check_new_account(conn, created_ip, now, accounts_per_ip)
            client = None
            if binding is not None:
                row = db.get_client(binding.client)
                if row is None or row.disabled:
                    raise _BindingLost(f"the API client {binding.client!r} is not enabled")
                # Before the insert, whose unique eab_key_id would otherwise fail the loser.
                current = store.get_eab_key(db, binding.key_id, conn)
                if current is None or current.account_id is not None:
                    raise _BindingLost("the key was used by another account meanwhile")
                client = binding.client
            account_id = store.add_account(
                conn,
                thumbprint=thumbprint,
                jwk_json=canonical_jwk(jwk),
                contact=list(contact),
                tos_agreed=tos_agreed,
                now=now,
                requester=client,
                eab_key_id=binding.key_id if binding is not None else None,
                created_ip=created_ip,
            )
            if binding is not None and not store.use_eab_key(conn, binding.key_id, account_id, now):
                raise _BindingLost("the key was used by another account meanwhile")
            details: dict[str, Any] = {
                "key_thumbprint": thumbprint,
                "contact": list(contact),
                "tos_agreed": tos_agreed,
            }
            if binding is not None:
                details |= {"client": client, "eab_key_id": binding.key_id}
            db.append_audit(
                conn,
                now,
                f"acme:{account_id}",
                "acme.account.created",
                f"acme-account:{account_id}",
                details,
            )
            account = store.get_account(db, account_id, conn)
    except _BindingLost as lost:  # the transaction rolled back: no account, key untouched
        assert binding is not None
        eab.audit_denial(db, now, binding, str(lost))
        raise AcmeError("unauthorized", f"external account binding refused: {lost}") from None
    assert account is not None
    return Registered(account, True)


def update_contact(db: Database, now: datetime, account: AccountRow, contact: list[str]) -> None:
    if contact == account.contact:
        return
    with db.write() as conn:
        store.update_account(conn, account.id, now, {"contact": contact})
        db.append_audit(
            conn,
            now,
            f"acme:{account.id}",
            "acme.account.updated",
            f"acme-account:{account.id}",
            {"contact": contact, "previous_contact": account.contact},
        )


def agree_to_terms(db: Database, now: datetime, account: AccountRow) -> None:
    if account.tos_agreed:
        return
    with db.write() as conn:
        store.update_account(conn, account.id, now, {"tos_agreed": True})
        db.append_audit(
            conn,
            now,
            f"acme:{account.id}",
            "acme.account.updated",
            f"acme-account:{account.id}",
            {"tos_agreed": True},
        )


def deactivate(db: Database, now: datetime, account: AccountRow) -> None:
    """Deactivate for good (RFC 8555 §7.3.6): later requests of this account are refused."""
    with db.write() as conn:
        current = store.get_account(db, account.id, conn)
        if current is None or current.status != "valid":
            raise AcmeError("unauthorized", "the account is not valid")
        store.update_account(conn, account.id, now, {"status": "deactivated"})
        db.append_audit(
            conn,
            now,
            f"acme:{account.id}",
            "acme.account.deactivated",
            f"acme-account:{account.id}",
            {},
        )


def change_key(
    db: Database,
    now: datetime,
    account: AccountRow,
    new_jwk: dict[str, str],
    new_thumbprint: str,
) -> None:
    """Replace the account's key (RFC 8555 §7.3.5). :class:`KeyInUse` if another account has it."""
    with db.write() as conn:
        other = store.account_by_thumbprint(db, new_thumbprint, conn)
        if other is not None:
            raise KeyInUse(other.id)
        current = store.get_account(db, account.id, conn)
        if current is None or current.status != "valid":
            raise AcmeError("unauthorized", "the account is not valid")
        if current.key_thumbprint != account.key_thumbprint:
            raise AcmeError("unauthorized", "the account key changed meanwhile")
        store.update_account(
            conn,
            account.id,
            now,
            {"key_thumbprint": new_thumbprint, "jwk": canonical_jwk(new_jwk)},
        )
        db.append_audit(
            conn,
            now,
            f"acme:{account.id}",
            "acme.account.key-changed",
            f"acme-account:{account.id}",
            {"old_key_thumbprint": account.key_thumbprint, "new_key_thumbprint": new_thumbprint},
        )


def account_json(account: AccountRow, orders_url: str | None = None) -> dict[str, Any]:
    """The account object (RFC 8555 §7.1.2); ``orders`` when its URL is given."""
    body: dict[str, Any] = {
        "status": account.status,
        "contact": account.contact,
        "termsOfServiceAgreed": account.tos_agreed,
        "key": json.loads(canonical_jwk(account.jwk)),
        "createdAt": account.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if orders_url is not None:
        body["orders"] = orders_url
    return body


# Acting as the bound API client ----------------------------------------------------------------


def order_violations(
    requester: Requester, profile: str, identifiers: Sequence[dict[str, str]]
) -> list[Violation]:
    """What ``requester``'s own rules say against ordering ``identifiers`` under ``profile``.

    The same rules (and rule ids) as :func:`ca.policy.decide` applies at finalize, checked early
    so that a bound account learns at new-order what its client may never have.
    """
    out: list[Violation] = []
    if not requester.has_role("enroll"):
        out.append(
            Violation(
                "requester.role_missing", f"client {requester.name!r} lacks the 'enroll' role"
            )
        )
    if requester.profiles and profile not in requester.profiles:
        allowed = ", ".join(sorted(requester.profiles))
        out.append(
            Violation(
                "profile.not_permitted_for_requester",
                f"client {requester.name!r} may not use profile {profile!r} (allowed: {allowed})",
                profile,
            )
        )
    if not requester.rules:
        return out
    for ident in identifiers:
        value = ident["value"]
        if ident["type"] == "dns":
            if not any(rule.matches(value) for rule in requester.rules.dns):
                out.append(
                    Violation(
                        "dns.requester_not_allowed",
                        f"client {requester.name!r} may not have DNS name {value!r}",
                        value,
                    )
                )
        elif not any(ip_in(ipaddress.ip_address(value), net) for net in requester.rules.ips):
            out.append(
                Violation(
                    "ip.requester_not_allowed",
                    f"client {requester.name!r} may not have IP address {value!r}",
                    value,
                )
            )
    return out


def refusal(violations: Sequence[Violation]) -> AcmeError:
    """The ACME problem for :func:`order_violations`: ``unauthorized`` (role), ``invalidProfile``
    or ``rejectedIdentifier`` (with one subproblem per refused identifier, RFC 8555 §6.7.1)."""
    rules = {v.rule for v in violations}
    detail = violations_text(violations)
    if "requester.role_missing" in rules:
        return AcmeError("unauthorized", detail)
    if "profile.not_permitted_for_requester" in rules:
        return AcmeError("invalidProfile", detail)
    subproblems = [
        {
            "type": "urn:ietf:params:acme:error:rejectedIdentifier",
            "detail": v.detail,
            "identifier": {"type": v.rule.partition(".")[0], "value": v.value},
        }
        for v in violations
    ]
    return AcmeError("rejectedIdentifier", detail, subproblems=subproblems)


def bound_requester(db: Database, account: AccountRow) -> Requester | None:
    """The API client ``account`` acts as (``None``: not bound); ``unauthorized`` once that
    client is disabled or deleted."""
    if account.requester is None:
        return None
    row = db.get_client(account.requester)
    if row is None or row.disabled:
        raise AcmeError(
            "unauthorized",
            f"the API client {account.requester!r} this account is bound to is disabled or "
            "deleted; the account cannot order certificates",
        )
    return requester_of(row)


def admit_order(
    auth: Authority, account: AccountRow, profile: str, identifiers: Sequence[dict[str, str]]
) -> Requester | None:
    """Whether ``account`` may place this order: its bound client's rules, then its rate limit.

    Returns the bound client (``None`` if unbound). A refusal is audited as
    ``acme.order.denied`` and raised (``unauthorized``, ``invalidProfile``,
    ``rejectedIdentifier``, ``rateLimited``).
    """
    try:
        requester = bound_requester(auth.db, account)
    except AcmeError as exc:
        deny(auth, account, exc, {"profile": profile, "client": account.requester})
        raise
    if requester is not None:
        violations = order_violations(requester, profile, identifiers)
        if violations:
            refused = refusal(violations)
            deny(
                auth,
                account,
                refused,
                {
                    "profile": profile,
                    "client": requester.name,
                    "identifiers": list(identifiers),
                    "violations": [v.as_dict() for v in violations],
                },
            )
            raise refused
    limit = auth.config.acme.orders_per_account_per_hour
    verdict = limits.check_new_order(auth.db, account.id, auth.now(), limit)
    if not verdict.allowed:
        limited = limits.rate_limited(verdict, f"at most {limit} new orders per account per hour")
        deny(auth, account, limited, {"profile": profile, "retry_after": verdict.retry_after})
        raise limited
    return requester


def finalize_client(auth: Authority, account: AccountRow, subject: str) -> Requester | None:
    """The bound client finalize issues as (``None``: unbound); a disabled or deleted client is
    an audited ``unauthorized``."""
    try:
        return bound_requester(auth.db, account)
    except AcmeError as exc:
        deny(auth, account, exc, {"client": account.requester}, subject)
        raise


def deny(
    auth: Authority,
    account: AccountRow,
    exc: AcmeError,
    details: dict[str, Any],
    subject: str = "acme-order:new",
) -> None:
    """Audit a refused order request of ``account`` (``acme.order.denied``)."""
    with auth.db.write() as conn:
        auth.db.append_audit(
            conn,
            auth.now(),
            f"acme:{account.id}",
            "acme.order.denied",
            subject,
            {"error": exc.kind, "reason": exc.detail} | details,
        )
