"""ACME orders, authorizations, challenges and finalize (RFC 8555 §7.4–7.5, RFC 8738).

The state rules are plain functions (:func:`order_status`, :func:`check_identifiers`,
:func:`check_csr_names`); the operations below them change the store, each in one write
transaction with its audit event.

Statuses:

- challenge: pending → processing (validation started) → valid | invalid. Of an
  authorization's challenges (:func:`challenge_types`) one at a time is validated: the others
  cannot be started while one is processing, and its outcome settles the authorization.
- authorization: pending → valid | invalid (its challenge failed: for good) | deactivated |
  expired
- order: pending → ready (every authorization valid) → processing (finalize won the
  conditional move) → valid (certificate stored); invalid when an authorization is invalid,
  deactivated or expired, or the order expired before it was finalized.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization

from ca.acme import renewal
from ca.acme.accounts import admit_order, deny, finalize_client
from ca.acme.errors import AcmeError, malformed
from ca.acme.jws import key_from_jwk
from ca.authority import Authority
from ca.csr import CsrFacts
from ca.names import InvalidName, check_name_constraints, ip_in, is_wildcard, normalize_dns_name
from ca.policy import name_constraints_of
from ca.profiles import Profile
from ca.store import acme as store
from ca.store.acme import AccountRow, AuthzRow, ChallengeRow, OrderRow
from ca.store.db import Database

#: At most this many identifiers in one order.
MAX_IDENTIFIERS = 100

#: Authorization statuses that doom their order.
_DOOMED = frozenset({"invalid", "deactivated", "expired"})


# Pure rules ------------------------------------------------------------------------------------


def order_status(
    current: str, authz_statuses: Iterable[str], expires: datetime, now: datetime
) -> str:
    """An order's status from its stored status and its authorizations' statuses.

    Only ``pending`` and ``ready`` orders move here; ``processing``, ``valid`` and ``invalid``
    are changed by finalize alone (or are final).
    """
    if current not in ("pending", "ready"):
        return current
    if now >= expires:
        return "invalid"
    statuses = list(authz_statuses)
    if any(s in _DOOMED for s in statuses):
        return "invalid"
    if statuses and all(s == "valid" for s in statuses):
        return "ready"
    return "pending"


def authz_status(current: str, expires: datetime, now: datetime) -> str:
    """A pending or valid authorization past its expiry is ``expired``."""
    if current in ("pending", "valid") and now >= expires:
        return "expired"
    return current


def key_authorization(token: str, account_thumbprint: str) -> str:
    """RFC 8555 §8.1: ``token || '.' || base64url(JWK_Thumbprint(accountKey))``."""
    return f"{token}.{account_thumbprint}"


def normalize_identifier(ident: Any) -> dict[str, str]:
    """One identifier object as the order keeps it: ``dns`` lowercased without a trailing dot
    and checked as a certificate dNSName; ``ip`` (RFC 8738) in canonical text form."""
    if not isinstance(ident, dict) or set(ident) - {"type", "value"}:
        raise malformed("each identifier is an object with type and value")
    kind, value = ident.get("type"), ident.get("value")
    if not isinstance(kind, str) or not isinstance(value, str) or not value:
        raise malformed("each identifier needs a type and a value (strings)")
    if kind == "dns":
        name = value.lower()
        if name.endswith(".") and name != ".":
            name = name[:-1]
        try:
            ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            raise AcmeError(
                "rejectedIdentifier", f"{value!r} is an IP address: use an identifier of type ip"
            )
        try:
            return {"type": "dns", "value": normalize_dns_name(name)}
        except InvalidName as exc:
            raise AcmeError("rejectedIdentifier", f"DNS name {value[:255]!r} {exc}") from None
    if kind == "ip":
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            raise AcmeError("malformed", f"{value[:64]!r} is not an IP address") from None
        return {"type": "ip", "value": str(ip)}
    raise AcmeError(
        "unsupportedIdentifier", f"identifier type {kind[:20]!r} is not supported (dns, ip)"
    )


def check_identifiers(
    raw: Any, profile: Profile, issuer_constraints: Any | None = None
) -> list[dict[str, str]]:
    """The order's identifiers, normalised, de-duplicated and checked against what
    ``profile`` (and the issuing CA's name constraints) would ever allow.

    ``malformed`` for the shape, ``rejectedIdentifier`` for a name the profile refuses; a
    wildcard name also needs the profile's ``allow_wildcards``.
    """
    if not isinstance(raw, list) or not raw:
        raise malformed("identifiers must be a non-empty list")
    if len(raw) > MAX_IDENTIFIERS:
        raise malformed(f"at most {MAX_IDENTIFIERS} identifiers in one order")
    out: list[dict[str, str]] = []
    for item in raw:
        ident = normalize_identifier(item)
        if ident not in out:
            out.append(ident)
    problems: list[str] = []
    for ident in out:
        value = ident["value"]
        if ident["type"] == "dns":
            if is_wildcard(value) and not profile.allow_wildcards:
                problems.append(f"{value}: profile {profile.name!r} does not allow wildcard names")
            elif not any(rule.matches(value) for rule in profile.dns_rules):
                problems.append(f"{value}: not allowed by profile {profile.name!r}")
        else:
            ip = ipaddress.ip_address(value)
            if not any(ip_in(ip, net) for net in profile.ip_ranges):
                problems.append(f"{value}: not allowed by profile {profile.name!r}")
    if issuer_constraints is not None:
        findings = check_name_constraints(
            issuer_constraints,
            dns_names=[i["value"] for i in out if i["type"] == "dns"],
            ip_addresses=[ipaddress.ip_address(i["value"]) for i in out if i["type"] == "ip"],
        )
        problems += [f.detail for f in findings]
    if problems:
        raise AcmeError("rejectedIdentifier", "; ".join(problems))
    return out


def challenge_types(ident: dict[str, str]) -> tuple[str, ...]:
    """The challenges offered for an identifier: a wildcard name only dns-01 (RFC 8555 §7.1.3),
    an IP address http-01 and tls-alpn-01 (RFC 8738 §7: no dns-01), any other name all three."""
    if ident["type"] == "ip":
        return ("http-01", "tls-alpn-01")
    if is_wildcard(ident["value"]):
        return ("dns-01",)
    return ("http-01", "dns-01", "tls-alpn-01")


def csr_identifiers(facts: CsrFacts) -> list[dict[str, str]]:
    """The names a CSR asks for (SANs and a CN), as identifiers (unchecked but normalised)."""
    found: list[dict[str, str]] = []
    names = list(facts.dns_names) + [str(ip) for ip in facts.ip_addresses]
    if facts.common_name is not None:
        names.append(facts.common_name)
    for name in names:
        try:
            ident = {"type": "ip", "value": str(ipaddress.ip_address(name))}
        except ValueError:
            ident = {"type": "dns", "value": name.lower()}
        if ident not in found:
            found.append(ident)
    return found


def check_csr_names(facts: CsrFacts, identifiers: Sequence[dict[str, str]]) -> None:
    """``badCSR`` unless the CSR names exactly the order's identifiers (no more, no fewer)."""
    if facts.uris or facts.emails:
        raise AcmeError("badCSR", "the CSR may only name DNS names and IP addresses")
    asked = {(i["type"], i["value"]) for i in csr_identifiers(facts)}
    ordered = {(i["type"], i["value"]) for i in identifiers}
    if asked != ordered:
        extra = sorted(f"{k}:{v}" for k, v in asked - ordered)
        missing = sorted(f"{k}:{v}" for k, v in ordered - asked)
        parts = []
        if extra:
            parts.append("not in the order: " + ", ".join(extra))
        if missing:
            parts.append("missing from the CSR: " + ", ".join(missing))
        raise AcmeError(
            "badCSR", "the CSR names must equal the order identifiers (" + "; ".join(parts) + ")"
        )


def check_csr_key(facts: CsrFacts, account: AccountRow) -> None:
    """``badCSR`` if the CSR's key is the account key (RFC 8555 §11.1)."""
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    account_key = key_from_jwk(account.jwk)
    if facts.public_key.public_bytes(der, fmt) == account_key.public_bytes(der, fmt):
        raise AcmeError("badCSR", "the CSR's key must not be the account key")


# Operations ------------------------------------------------------------------------------------


def create_order(
    auth: Authority,
    account: AccountRow,
    raw_identifiers: Any,
    profile_name: str,
    replaces: Any = None,
) -> OrderRow:
    """A new pending order with one pending authorization (and its :func:`challenge_types`) per
    identifier; audited as ``acme.order.created``. ``replaces``: an ARI certID (RFC 9773 §5,
    checked by :func:`ca.acme.renewal.check_replaces`)."""
    profile = auth.profiles.get(profile_name)
    if profile is None:
        raise AcmeError(
            "malformed",
            f"unknown profile {profile_name[:64]!r} (offered: {', '.join(sorted(auth.profiles))})",
        )
    constraints = name_constraints_of(auth.issuer_chain(profile.issuer)[0])
    try:
        identifiers = check_identifiers(raw_identifiers, profile, constraints)
    except AcmeError as exc:
        if exc.kind == "rejectedIdentifier":  # a policy refusal (not a malformed request)
            deny(auth, account, exc, {"profile": profile.name})
        raise
    admit_order(auth, account, profile.name, identifiers)  # bound client's rules, rate limit
    now = auth.now()
    expires = now + timedelta(hours=auth.config.acme.order_lifetime_hours)
    authz_expires = min(expires, now + timedelta(hours=auth.config.acme.authz_lifetime_hours))
    replaced = renewal.check_replaces(auth.db, account, replaces, identifiers, now)
    with auth.db.write() as conn:
        if replaced:  # again under the writer lock: two orders racing to replace it
            renewal.check_not_replaced(store.replacing_orders(auth.db, replaced, conn), now)
        order_id = store.add_order(
            conn,
            account_id=account.id,
            identifiers=identifiers,
            profile=profile.name,
            expires=expires,
            authz_expires=authz_expires,
            now=now,
            wildcards=[is_wildcard(i["value"]) for i in identifiers],
            challenge_types=[challenge_types(i) for i in identifiers],
            replaces=replaced,
        )
        auth.db.append_audit(
            conn,
            now,
            f"acme:{account.id}",
            "acme.order.created",
            f"acme-order:{order_id}",
            {"identifiers": identifiers, "profile": profile.name}
            | ({"replaces": replaced} if replaced else {}),
        )
        order = store.get_order(auth.db, order_id, conn)
    assert order is not None
    return order


def refresh_order(db: Database, order: OrderRow, now: datetime) -> OrderRow:
    """The order with expiry applied to it and its authorizations (stored if anything moved)."""
    if order.status not in ("pending", "ready"):
        return order
    # Polls are frequent and mostly change nothing: look first, write only if something moves.
    states = store.authz_states(db, order.id)
    effective = [authz_status(status, expires, now) for status, expires in states]
    unchanged = all(e == s for e, (s, _) in zip(effective, states, strict=True))
    if unchanged and order_status(order.status, effective, order.expires, now) == order.status:
        return order
    with db.write() as conn:
        for authz_id in order.authz_ids:
            authz = store.get_authz(db, authz_id, conn)
            if authz is not None and authz_status(authz.status, authz.expires, now) == "expired":
                store.move_authz(conn, authz_id, authz.status, "expired")
        _settle_order(conn, order.id, now)
        current = store.get_order(db, order.id, conn)
    assert current is not None
    return current


def _settle_order(conn: Any, order_id: int, now: datetime) -> str:
    """Recompute a pending/ready order's status from its authorizations and store it."""
    order = store.get_order_status(conn, order_id)
    if order is None:
        return "invalid"
    status, expires = order
    new = order_status(status, store.authz_statuses(conn, order_id), expires, now)
    if new != status:
        error = None
        if new == "invalid":
            error = {
                "type": "urn:ietf:params:acme:error:unauthorized",
                "detail": "an authorization of this order failed, was deactivated or expired",
                "status": 403,
            }
        store.move_order(conn, order_id, status, new, error=error)
    return new


def deactivate_authz(auth: Authority, account: AccountRow, authz: AuthzRow) -> AuthzRow:
    """RFC 8555 §7.5.2: a pending or valid authorization becomes ``deactivated`` for good."""
    now = auth.now()
    with auth.db.write() as conn:
        current = store.get_authz(auth.db, authz.id, conn)
        assert current is not None
        if current.status not in ("pending", "valid"):
            raise malformed(f"the authorization is {current.status}; it cannot be deactivated")
        store.move_authz(conn, authz.id, current.status, "deactivated")
        _settle_order(conn, authz.order_id, now)
        auth.db.append_audit(
            conn,
            now,
            f"acme:{account.id}",
            "acme.authorization.deactivated",
            f"acme-authz:{authz.id}",
            {"identifier": f"{authz.identifier_type}:{authz.identifier_value}"},
        )
        done = store.get_authz(auth.db, authz.id, conn)
    assert done is not None
    return done


@dataclass(frozen=True)
class Started:
    """What asking for a challenge did: the challenge now, and whether to validate it now."""

    challenge: ChallengeRow
    validate: bool


def start_challenge(auth: Authority, authz: AuthzRow, challenge: ChallengeRow) -> Started:
    """Move a pending challenge of a pending authorization to ``processing``, recording when
    (once: a repeated request just sees the current state). While another challenge of the
    authorization is being validated, the others cannot start (``malformed``)."""
    now = auth.now()
    if authz_status(authz.status, authz.expires, now) != "pending":
        if authz.status == "pending":
            refresh = store.get_order(auth.db, authz.order_id)
            if refresh is not None:
                refresh_order(auth.db, refresh, now)
            raise malformed("the authorization has expired")
        if challenge.status == "pending":
            raise malformed(f"the authorization is {authz.status}")
        return Started(challenge, False)
    with auth.db.write() as conn:
        # Read again under the writer lock: of two challenges answered at once, one starts.
        current = store.get_authz(auth.db, authz.id, conn)
        assert current is not None
        mine = next(c for c in current.challenges if c.id == challenge.id)
        if mine.status != "pending":
            return Started(mine, False)
        if current.status != "pending":
            raise malformed(f"the authorization is {current.status}")
        other = started_sibling(current.challenges, challenge.id)
        if other is not None:
            raise malformed(
                f"the {other.type} challenge of this authorization is {other.status}; "
                "one challenge per authorization is validated"
            )
        store.move_challenge(conn, challenge.id, "pending", "processing", started_at=now)
        auth.db.append_audit(
            conn,
            now,
            f"acme:{current.account_id}",
            "acme.challenge.started",
            f"acme-challenge:{challenge.id}",
            {
                "type": challenge.type,
                "identifier": f"{current.identifier_type}:{current.identifier_value}",
            },
        )
        started = store.get_challenge(auth.db, challenge.id, conn)
    assert started is not None
    return Started(started, True)


def started_sibling(challenges: Iterable[ChallengeRow], challenge_id: int) -> ChallengeRow | None:
    """Another challenge of the same authorization that is no longer pending, if any."""
    return next((c for c in challenges if c.id != challenge_id and c.status != "pending"), None)


def finish_challenge(
    auth: Authority,
    account_id: int,
    authz: AuthzRow,
    challenge_id: int,
    failure: AcmeError | None,
) -> bool:
    """Record the outcome of a validation: challenge and authorization valid (and the order
    ready once all are), or both invalid for good (and the order invalid). False (and nothing
    recorded) if the challenge was no longer processing: another run finished it."""
    now = auth.now()
    with auth.db.write() as conn:
        ch = store.get_challenge(auth.db, challenge_id, conn)
        if failure is None:
            moved = store.move_challenge(
                conn, challenge_id, "processing", "valid", validated_at=now
            )
            if moved:
                store.move_authz(conn, authz.id, "pending", "valid")
        else:
            problem = {"type": failure.type, "detail": failure.detail, "status": failure.status}
            moved = store.move_challenge(
                conn, challenge_id, "processing", "invalid", validated_at=now, error=problem
            )
            if moved:
                store.move_authz(conn, authz.id, "pending", "invalid")
        if not moved or ch is None:
            return False
        status = _settle_order(conn, authz.order_id, now)
        auth.db.append_audit(
            conn,
            now,
            f"acme:{account_id}",
            "acme.authorization.valid" if failure is None else "acme.authorization.invalid",
            f"acme-authz:{authz.id}",
            {
                "identifier": f"{authz.identifier_type}:{authz.identifier_value}",
                "wildcard": authz.wildcard,
                "challenge": ch.type,
                "error": None if failure is None else f"{failure.kind}: {failure.detail}",
                "order_status": status,
            },
        )
    return True


def finalize(auth: Authority, account: AccountRow, order: OrderRow, csr_der: bytes) -> OrderRow:
    """RFC 8555 §7.4: issue the order's certificate through :func:`ca.issuance.issue`.

    The order must be ``ready`` (``orderNotReady`` otherwise); the CSR must name exactly the
    order's identifiers and must not use the account key (``badCSR``). The conditional move
    ready → processing is committed before anything is signed, so of concurrent finalizes
    exactly one issues; the others get ``orderNotReady``. A CSR the policy refuses, or an
    outage, puts the order back to ``ready`` so the client may try again.
    """
    from ca.csr import check_csr
    from ca.errors import BadCSR, CAError, PolicyDenied
    from ca.issuance import IssuanceRequest, issue

    now = auth.now()
    order = refresh_order(auth.db, order, now)
    if order.status != "ready":
        raise AcmeError("orderNotReady", f"the order is {order.status}, not ready")
    try:
        facts = check_csr(csr_der)
    except BadCSR as exc:
        raise AcmeError("badCSR", str(exc)) from None
    check_csr_names(facts, order.identifiers)
    check_csr_key(facts, account)
    client = finalize_client(auth, account, f"acme-order:{order.id}")  # None: unbound account
    with auth.db.write() as conn:
        won = store.move_order(conn, order.id, "ready", "processing", processing_since=now)
    if not won:
        raise AcmeError("orderNotReady", "the order is being finalized or was finalized already")

    def back_to_ready() -> None:
        try:
            with auth.db.write() as conn:
                store.move_order(conn, order.id, "processing", "ready")
        except CAError:
            pass  # the store is down: the order stays processing; the original error matters

    try:
        issued = issue(
            auth,
            IssuanceRequest(
                csr=csr_der,
                profile=order.profile,
                requester=f"acme:{account.id}",
                client=client,  # a bound account acts as its API client in the policy
                # Ties the certificate (and its intent) to the order, for audit and recovery.
                metadata={"acme_order": str(order.id)},
            ),
        )
    except (BadCSR, PolicyDenied) as exc:
        back_to_ready()
        raise AcmeError("badCSR", str(exc)) from None
    except BaseException:
        back_to_ready()
        raise
    with auth.db.write() as conn:
        # ready too: if this finalize outlived the recovery's patience, the order went back.
        if not store.move_order(
            conn, order.id, "processing", "valid", certificate_serial=issued.serial
        ):
            store.move_order(conn, order.id, "ready", "valid", certificate_serial=issued.serial)
        auth.db.append_audit(
            conn,
            auth.now(),
            f"acme:{account.id}",
            "acme.order.finalized",
            f"acme-order:{order.id}",
            {"serial": issued.serial, "profile": order.profile},
        )
        done = store.get_order(auth.db, order.id, conn)
    assert done is not None
    return done
