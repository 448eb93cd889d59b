"""API clients (requesters): creation, bearer-token authentication, disabling.

A token is ``hsmca_`` + 43 characters of ``secrets.token_urlsafe(32)`` (256 bits). It is shown once
and only its SHA-256 is stored: with 256 bits of entropy a slow hash adds nothing, and a fast one
keeps authentication cheap on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Sequence
from typing import Any

from ca.authority import Authority
from ca.errors import Conflict, NotFound, PolicyDenied
from ca.names import NameRules
from ca.policy import ROLES, Requester
from ca.store.db import ClientRow

TOKEN_PREFIX = "hsmca_"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_TOKEN = re.compile(r"^hsmca_[A-Za-z0-9_-]{43}$")


def token_hash(token: str) -> str:
    """The stored form of a bearer token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def requester_of(row: ClientRow) -> Requester:
    """The policy's view of a stored client."""
    return Requester(
        name=row.name,
        roles=frozenset(row.roles),
        profiles=frozenset(row.profiles),
        names=tuple(row.names),
    )


def validate_client(
    auth: Authority, name: str, roles: Sequence[str], profiles: Sequence[str], names: Sequence[str]
) -> list[str]:
    """Every problem with a client definition (empty when it may be created)."""
    problems = []
    if not _NAME.match(name):
        problems.append(
            f"client name {name!r} must be 1-64 characters of a-z, 0-9, '.', '_', '-' "
            "starting with a letter or digit"
        )
    if not roles:
        problems.append(f"a client needs at least one role ({', '.join(ROLES)})")
    for role in roles:
        if role not in ROLES:
            problems.append(f"unknown role {role!r} (use {', '.join(ROLES)})")
    for profile in profiles:
        if profile not in auth.config.profiles:
            problems.append(
                f"unknown profile {profile!r} (have {', '.join(sorted(auth.config.profiles))})"
            )
    for rule in names:
        try:
            NameRules.parse([rule])
        except ValueError as exc:
            problems.append(f"name rule {rule!r}: {exc}")
    return problems


def create_client(
    auth: Authority,
    name: str,
    roles: Sequence[str],
    profiles: Sequence[str],
    names: Sequence[str],
    actor: str,
) -> tuple[ClientRow, str]:
    """Create a client; returns it and its bearer token (the only time the token exists)."""
    problems = validate_client(auth, name, roles, profiles, names)
    if problems:
        raise PolicyDenied("; ".join(problems))
    if auth.db.get_client(name) is not None:
        raise Conflict(f"a client named {name!r} exists already")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = auth.now()
    row: dict[str, Any] = {
        "name": name,
        "token_sha256": token_hash(token),
        "roles": json.dumps(sorted(set(roles))),
        "profiles": json.dumps(sorted(set(profiles))),
        "names": json.dumps(list(dict.fromkeys(names))),
        "disabled": False,
        "created_at": now,
        "created_by": actor,
    }
    with auth.db.write() as conn:
        auth.db.add_client(conn, row)
        auth.db.append_audit(
            conn,
            now,
            actor,
            "client.created",
            name,
            {
                "client": name,
                "roles": sorted(set(roles)),
                "profiles": sorted(set(profiles)),
                "names": list(dict.fromkeys(names)),
                # A prefix of the token's hash lets an auditor tie later use to this creation.
                "token_sha256_prefix": row["token_sha256"][:16],
            },
        )
    stored = auth.db.get_client(name)
    assert stored is not None
    return stored, token


def disable_client(auth: Authority, name: str, actor: str) -> None:
    """Disable a client: its token stops working at once (and for good)."""
    if auth.db.get_client(name) is None:
        raise NotFound(f"no client named {name!r}")
    now = auth.now()
    with auth.db.write() as conn:
        if not auth.db.disable_client(conn, name, now):
            raise Conflict(f"client {name!r} is disabled already")
        auth.db.append_audit(conn, now, actor, "client.disabled", name, {"client": name})


def rotate_token(auth: Authority, name: str, actor: str) -> str:
    """Give enabled client ``name`` a new bearer token; the old one stops working. Returns the
    new token (the only time it exists)."""
    row = auth.db.get_client(name)
    if row is None:
        raise NotFound(f"no client named {name!r}")
    if row.disabled:
        raise Conflict(f"client {name!r} is disabled; a disabled client gets no new token")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    digest = token_hash(token)
    with auth.db.write() as conn:
        if not auth.db.set_client_token(conn, name, row.token_sha256, digest):
            raise Conflict(f"client {name!r} changed meanwhile; try again")
        auth.db.append_audit(
            conn,
            auth.now(),
            actor,
            "client.token_rotated",
            name,
            {
                "client": name,
                "old_token_sha256_prefix": row.token_sha256[:16],
                "token_sha256_prefix": digest[:16],
            },
        )
    return token


def authenticate(auth: Authority, token: str) -> ClientRow | None:
    """The enabled client holding ``token``, or ``None``.

    The lookup is by the token's SHA-256, so timing reveals nothing about the token itself; the
    final comparison is constant-time anyway.
    """
    if not _TOKEN.match(token):
        return None
    digest = token_hash(token)
    row = auth.db.client_by_token_hash(digest)
    if row is None or row.disabled or not hmac.compare_digest(row.token_sha256, digest):
        return None
    return row
