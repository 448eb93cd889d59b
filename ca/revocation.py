"""Revocation: a certificate (REST, CLI) or an issuing CA (CLI, a root operation).

A revocation records its time and RFC 5280 reason code on the certificate's row and appends its
audit event in the same transaction; revoking twice is a :class:`Conflict`. The time is read
*inside* the write transaction (which holds the writer lock), so revocations are timestamped in
commit order: the CRL publisher relies on that to know which revocations a CRL contains.

Once the revocation has committed, the caller's *after-revoke hooks* run (the OCSP response is
re-signed there; see ``web/hooks.py``). A failing hook does not undo the revocation: it is
logged and reported in :attr:`Revocation.hook_errors`. The CRLs follow on the publisher's
schedule (``crl.publisher.run_once``), within ``[crl] revocation_delay_seconds``.

Reasons (CA/Browser Forum BR 4.9.1 and 7.2.2, which this private CA follows):

* end-entity certificates: unspecified, keyCompromise, affiliationChanged, superseded,
  cessationOfOperation, privilegeWithdrawn;
* CA certificates: the same plus cACompromise;
* never: certificateHold (suspension is forbidden by the BRs), removeFromCRL (only meaningful
  in delta CRLs of a held certificate), aACompromise (attribute authorities; none here).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection

from ca import metrics
from ca.authority import Authority
from ca.errors import BadRequest, Conflict, Forbidden, NotFound
from ca.hierarchy import SUBORDINATE_PROFILE
from ca.policy import Requester
from ca.store import crls

log = logging.getLogger("hsmca.revocation")

#: RFC 5280 5.3.1 CRLReason names and codes.
REASON_CODES: dict[str, int] = {
    "unspecified": 0,
    "keyCompromise": 1,
    "cACompromise": 2,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "certificateHold": 6,
    "removeFromCRL": 8,
    "privilegeWithdrawn": 9,
    "aACompromise": 10,
}
REASON_NAMES: dict[int, str] = {code: name for name, code in REASON_CODES.items()}
#: What an end-entity certificate may be revoked for.
LEAF_REASONS: tuple[str, ...] = (
    "unspecified",
    "keyCompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
)
#: What an issuing CA may be revoked for.
CA_REASONS: tuple[str, ...] = (
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
)


@dataclass(frozen=True)
class Revocation:
    """A committed revocation."""

    serial: str
    issuer: str  # the CA that issued the certificate (and lists it in its CRL)
    reason: str
    reason_code: int
    revoked_at: datetime
    crl_shard: int
    #: The CA whose certificate this is (``revoke_ca``); None for an end-entity certificate.
    ca: str | None = None
    #: Errors of after-revoke hooks (the revocation stands regardless).
    hook_errors: tuple[str, ...] = field(default=(), compare=False)


#: Runs after a revocation commits, e.g. re-signing that certificate's OCSP response.
AfterRevoke = Callable[[Authority, Revocation], None]


def reason_code(reason: str, allowed: Sequence[str] = LEAF_REASONS) -> int:
    """The code of an RFC 5280 reason name that ``allowed`` lists; BadRequest otherwise."""
    if reason not in allowed:
        why = {
            "certificateHold": "certificate suspension is not supported (the BRs forbid it)",
            "removeFromCRL": "removeFromCRL only appears in delta CRLs of held certificates",
            "aACompromise": "it applies to attribute authorities",
            "cACompromise": "it applies to CA certificates (hsmca ca revoke)",
        }.get(reason, "unknown reason")
        raise BadRequest(
            f"revocation reason {reason!r} is not accepted here: {why} "
            f"(use one of {', '.join(allowed)})"
        )
    return REASON_CODES[reason]


def revoke(
    auth: Authority,
    serial: str,
    reason: str,
    actor: str,
    requester: Requester | None = None,
    comment: str = "",
    after: Sequence[AfterRevoke] = (),
) -> Revocation:
    """Revoke the end-entity certificate ``serial`` (canonical hex) for ``reason``.

    ``requester`` is the API client asking (None: the local operator). A client may revoke the
    certificates it requested, and any certificate with the ``revoke`` role. Raises NotFound
    (unknown serial, or one the client may not see), Forbidden (audited), BadRequest (reason),
    Conflict (already revoked, or the certificate of a CA: see :func:`revoke_ca`).
    """
    with auth.db.read() as conn:
        state = crls.revocation_state(conn, serial)
    if state is None:
        raise NotFound(f"no certificate with serial {serial}")
    if requester is not None and not (
        requester.has_role("revoke") or state.requester == requester.name
    ):
        if not (requester.has_role("read") or requester.has_role("audit")):
            raise NotFound(f"no certificate with serial {serial}")  # not theirs to know of
        detail = (
            f"client {requester.name!r} may revoke only the certificates it requested "
            "(or needs the 'revoke' role)"
        )
        auth.audit(
            requester.name,
            "certificate.revocation_denied",
            serial,
            {"serial": serial, "reason": detail, "requested_reason": reason},
        )
        raise Forbidden(detail)
    if state.profile == SUBORDINATE_PROFILE:
        name = next((c.name for c in auth.db.list_cas() if c.serial == serial), "?")
        raise Conflict(
            f"certificate {serial} is the certificate of CA {name!r}: revoking a CA is a root "
            f"operation (hsmca ca revoke {name} --reason ...)"
        )
    code = reason_code(reason, LEAF_REASONS)
    issuer = _ca_name(auth, state.issuer_id)
    with auth.db.write() as conn:
        now = auth.now()  # inside the writer lock: revocation times follow commit order
        if not crls.mark_revoked(conn, serial, now, code):
            raise _already_revoked(conn, serial)
        auth.db.append_audit(
            conn,
            now,
            actor,
            "certificate.revoked",
            serial,
            _details(serial, issuer, reason, code, now, comment),
        )
    metrics.certificate_revoked(reason)
    done = Revocation(serial, issuer, reason, code, now, state.crl_shard)
    return run_after_revoke(auth, done, after)


def revoke_ca(
    auth: Authority,
    name: str,
    reason: str,
    actor: str,
    comment: str = "",
    after: Sequence[AfterRevoke] = (),
) -> Revocation:
    """Revoke issuing CA ``name``: its certificate joins its parent's CRL and it stops issuing.

    The CA row becomes ``revoked`` in the same transaction, so no process loads it as an issuer
    again, and issuance checks the status of its issuers before it reserves serials.
    """
    row = auth.db.get_ca(name)
    if row.parent_id is None:
        raise Conflict(
            f"{name!r} is a root CA: a root is not revoked by a CRL; remove it from the trust "
            "stores instead"
        )
    if row.status == "revoked":
        raise Conflict(f"CA {name!r} is already revoked")
    code = reason_code(reason, CA_REASONS)
    parent = _ca_name(auth, row.parent_id)
    with auth.db.write() as conn:
        now = auth.now()
        state = crls.revocation_state(conn, row.serial)
        if state is None:
            raise NotFound(f"the certificate of CA {name!r} ({row.serial}) is not stored")
        if not crls.mark_revoked(conn, row.serial, now, code) or not crls.set_ca_status(
            conn, row.id, row.status, "revoked"
        ):
            raise Conflict(f"CA {name!r} is already revoked")
        auth.db.append_audit(
            conn,
            now,
            actor,
            "ca.revoked",
            name,
            {"ca": name, **_details(row.serial, parent, reason, code, now, comment)},
        )
    auth.forget_issuers()
    crls.forget_ca_statuses(auth.db)
    done = Revocation(row.serial, parent, reason, code, now, state.crl_shard, ca=name)
    return run_after_revoke(auth, done, after)


def run_after_revoke(
    auth: Authority, revocation: Revocation, hooks: Sequence[AfterRevoke]
) -> Revocation:
    """Run each hook once; a failure is logged and recorded, never raised."""
    errors = []
    for hook in hooks:
        try:
            hook(auth, revocation)
        except Exception as exc:  # noqa: BLE001 - the revocation has committed whatever happens
            log.error(
                "after-revoke hook %s failed for serial %s: %s: %s",
                getattr(hook, "__name__", repr(hook)),
                revocation.serial,
                type(exc).__name__,
                exc,
            )
            errors.append(f"{type(exc).__name__}: {exc}")
    if not errors:
        return revocation
    return Revocation(
        revocation.serial,
        revocation.issuer,
        revocation.reason,
        revocation.reason_code,
        revocation.revoked_at,
        revocation.crl_shard,
        revocation.ca,
        tuple(errors),
    )


def _already_revoked(conn: Connection, serial: str) -> Conflict:
    state = crls.revocation_state(conn, serial)
    if state is None:
        return Conflict(f"certificate {serial} disappeared while being revoked")
    when = f"{state.revoked_at:%Y-%m-%dT%H:%M:%SZ}" if state.revoked_at else "?"
    reason = REASON_NAMES.get(state.revocation_reason or 0, "unspecified")
    return Conflict(f"certificate {serial} is already revoked (at {when}, reason {reason})")


def _ca_name(auth: Authority, ca_id: int) -> str:
    return next((c.name for c in auth.db.list_cas() if c.id == ca_id), str(ca_id))


def _details(
    serial: str, issuer: str, reason: str, code: int, now: datetime, comment: str
) -> dict[str, object]:
    details: dict[str, object] = {
        "serial": serial,
        "issuer": issuer,
        "reason": reason,
        "reason_code": code,
        "revoked_at": f"{now:%Y-%m-%dT%H:%M:%SZ}",
    }
    if comment:
        details["comment"] = comment
    return details
