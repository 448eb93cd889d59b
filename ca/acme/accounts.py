"""ACME accounts (RFC 8555 §7.3): creation, contact updates, deactivation, key change.

Each change commits with its audit event (``acme.account.*``) in one write transaction, which
holds the writer lock, so two requests racing to register the same key make one account.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ca.acme.errors import AcmeError, malformed
from ca.acme.jws import canonical_jwk
from ca.store import acme as store
from ca.store.acme import AccountRow
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


def find_or_create(
    db: Database,
    now: datetime,
    jwk: dict[str, str],
    thumbprint: str,
    contact: Sequence[str],
    tos_agreed: bool,
) -> Registered:
    """The account of this key, created (and audited) if there is none."""
    existing = store.account_by_thumbprint(db, thumbprint)
    if existing is not None:
        return Registered(existing, False)
    with db.write() as conn:
        existing = store.account_by_thumbprint(db, thumbprint, conn)
        if existing is not None:  # a concurrent request registered it first
            return Registered(existing, False)
        account_id = store.add_account(
            conn,
            thumbprint=thumbprint,
            jwk_json=canonical_jwk(jwk),
            contact=list(contact),
            tos_agreed=tos_agreed,
            now=now,
        )
        db.append_audit(
            conn,
            now,
            f"acme:{account_id}",
            "acme.account.created",
            f"acme-account:{account_id}",
            {"key_thumbprint": thumbprint, "contact": list(contact), "tos_agreed": tos_agreed},
        )
        account = store.get_account(db, account_id, conn)
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


def account_json(account: AccountRow) -> dict[str, Any]:
    """The account object (RFC 8555 §7.1.2) without ``orders`` (no orders resource yet)."""
    return {
        "status": account.status,
        "contact": account.contact,
        "termsOfServiceAgreed": account.tos_agreed,
        "key": json.loads(canonical_jwk(account.jwk)),
        "createdAt": account.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
