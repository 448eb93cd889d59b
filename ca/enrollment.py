"""Enrollment with dual control: requests that need approval wait as pending requests.

submit  policy check now; denied → audited denial. Needs approval → stored ``pending`` with its
        audit event (202 at the API). Otherwise issued at once.
approve an ``approve`` requester who is not the requester moves ``pending`` → ``approved``
        (audited, conditional update so two approvers cannot both win), then the request is
        issued under the policy as it is *now*; the certificate's store transaction moves the
        request to ``issued``. If issuance fails the request returns to ``pending`` (outage) or
        becomes ``rejected`` (the policy now denies it), audited either way.
reject  ``pending`` → ``rejected``, audited.
expire  ``pending`` requests past their deadline become ``expired``, audited.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.serialization import Encoding

from ca.authority import Authority
from ca.errors import CAError, Conflict, Expired, Forbidden, PolicyDenied
from ca.issuance import IssuanceRequest, IssuedCertificate, check_request, issue
from ca.policy import Requester
from ca.store.db import RequestRow

#: Issues one request (``issue`` or a group-commit queue's ``issue``).
Issuer = Callable[[IssuanceRequest], IssuedCertificate]


def submit(
    auth: Authority, req: IssuanceRequest, issuer: Issuer | None = None
) -> IssuedCertificate | RequestRow:
    """Issue ``req`` now, or keep it as a pending request if its profile needs approval."""
    profile = auth.profile(req.profile)
    if not profile.requires_approval:
        return (issuer or (lambda r: issue(auth, r)))(req)
    prepared = check_request(auth, req)  # raises (and audits) a denial
    now = auth.now()
    request_id = "req_" + secrets.token_hex(12)
    decision = prepared.decision.audit_details()
    expires_at = now + timedelta(hours=profile.approval_ttl_hours)
    row = {
        "id": request_id,
        "requester": req.requester,
        "profile": profile.name,
        "csr_der": prepared.facts.csr.public_bytes(Encoding.DER),
        "validity_days": req.validity_days,
        "meta": json.dumps(dict(req.metadata or {}), sort_keys=True),
        "decision": json.dumps(decision, sort_keys=True),
        "state": "pending",
        "created_at": now,
        "expires_at": expires_at,
    }
    with auth.db.write() as conn:
        auth.db.add_request(conn, row)
        auth.db.append_audit(
            conn,
            now,
            req.requester,
            "request.pending",
            request_id,
            {
                "request_id": request_id,
                "sans": prepared.decision.san_strings(),
                "request_sha256": prepared.facts.der_sha256,
                "expires_at": _iso(expires_at),
                **decision,
            },
        )
    return auth.db.get_request(request_id)


def get_request(auth: Authority, request_id: str) -> RequestRow:
    """A request, expiring it first if its deadline has passed."""
    row = auth.db.get_request(request_id)
    if row.state == "pending" and row.expires_at <= auth.now():
        _expire(auth, row)
        row = auth.db.get_request(request_id)
    return row


def approve(
    auth: Authority,
    request_id: str,
    approver: Requester,
    client_of: Callable[[str], Requester | None],
    issuer: Issuer | None = None,
) -> IssuedCertificate:
    """Approve and issue. ``client_of`` gives the requester's current restrictions by name."""
    row = _decidable(auth, request_id, approver, "approve")
    if approver.name == row.requester:
        _refuse(
            auth,
            approver,
            row,
            "approve",
            "dual control: a requester cannot approve their own request",
        )
    now = auth.now()
    with auth.db.write() as conn:
        if not auth.db.move_request(
            conn, row.id, ["pending"], "approved", decided_by=approver.name, decided_at=now
        ):
            raise Conflict(f"request {row.id} was decided by someone else meanwhile")
        auth.db.append_audit(
            conn,
            now,
            approver.name,
            "request.approved",
            row.id,
            {"request_id": row.id, "requester": row.requester, "profile": row.profile},
        )
    try:
        client = client_of(row.requester)
    except Forbidden as exc:
        _after_failure(auth, row, approver, "rejected", str(exc))
        raise
    req = IssuanceRequest(
        csr=row.csr_der,
        profile=row.profile,
        requester=row.requester,
        validity_days=row.validity_days,
        client=client,
        metadata=row.meta,
        request_id=row.id,
        approved_by=approver.name,
    )
    try:
        return (issuer or (lambda r: issue(auth, r)))(req)
    except PolicyDenied as exc:
        _after_failure(auth, row, approver, "rejected", f"policy denies it now: {exc}")
        raise
    except CAError as exc:
        _after_failure(auth, row, approver, "pending", f"issuance failed: {exc}")
        raise


def reject(auth: Authority, request_id: str, approver: Requester, reason: str) -> RequestRow:
    """Reject a pending request (an approver's decision; the requester may withdraw their own)."""
    row = auth.db.get_request(request_id)
    if approver.name != row.requester:
        row = _decidable(auth, request_id, approver, "reject")
    else:
        row = _decidable(auth, request_id, approver, "reject", role=None)
    now = auth.now()
    reason = reason.strip()[:500] or "rejected"
    with auth.db.write() as conn:
        if not auth.db.move_request(
            conn,
            row.id,
            ["pending"],
            "rejected",
            decided_by=approver.name,
            decided_at=now,
            reason=reason,
        ):
            raise Conflict(f"request {row.id} was decided by someone else meanwhile")
        auth.db.append_audit(
            conn,
            now,
            approver.name,
            "request.rejected",
            row.id,
            {"request_id": row.id, "requester": row.requester, "reason": reason},
        )
    return auth.db.get_request(row.id)


def expire_requests(auth: Authority, now: datetime | None = None) -> list[str]:
    """Expire every pending request past its deadline (the scheduler's ``run_once``)."""
    now = now or auth.now()
    expired = []
    for row in auth.db.requests_in_state("pending", expiring_before=now):
        if _expire(auth, row, now):
            expired.append(row.id)
    return expired


def _decidable(
    auth: Authority, request_id: str, actor: Requester, action: str, role: str | None = "approve"
) -> RequestRow:
    row = get_request(auth, request_id)
    if role is not None and not actor.has_role(role):
        _refuse(auth, actor, row, action, f"the {role!r} role is needed to {action} requests")
    if row.state == "expired":
        raise Expired(f"request {row.id} expired at {_iso(row.expires_at)}")
    if row.state != "pending":
        raise Conflict(f"request {row.id} is {row.state}, not pending")
    return row


def _refuse(auth: Authority, actor: Requester, row: RequestRow, action: str, why: str) -> None:
    auth.audit(
        actor.name,
        f"request.{action}_denied",
        row.id,
        {"request_id": row.id, "requester": row.requester, "reason": why},
    )
    raise Forbidden(why)


def _expire(auth: Authority, row: RequestRow, now: datetime | None = None) -> bool:
    now = now or auth.now()
    with auth.db.write() as conn:
        if not auth.db.move_request(conn, row.id, ["pending"], "expired", decided_at=now):
            return False
        auth.db.append_audit(
            conn,
            now,
            "hsmca",
            "request.expired",
            row.id,
            {"request_id": row.id, "requester": row.requester, "expires_at": _iso(row.expires_at)},
        )
    return True


def _after_failure(
    auth: Authority, row: RequestRow, approver: Requester, state: str, reason: str
) -> None:
    now = auth.now()
    with auth.db.write() as conn:
        values: dict[str, object] = {"reason": reason[:500]}
        if state == "pending":
            values.update(decided_by=None, decided_at=None)
        if auth.db.move_request(conn, row.id, ["approved"], state, **values):
            auth.db.append_audit(
                conn,
                now,
                approver.name,
                "request.rejected" if state == "rejected" else "request.returned_to_pending",
                row.id,
                {"request_id": row.id, "requester": row.requester, "reason": reason[:500]},
            )


def client_lookup(auth: Authority) -> Callable[[str], Requester | None]:
    """Requester restrictions by client name (``None``: not an API client, e.g. the CLI)."""
    from ca.clients import requester_of

    def lookup(name: str) -> Requester | None:
        row = auth.db.get_client(name)
        if row is None:
            return None
        if row.disabled:
            raise Forbidden(f"requester {name!r} is disabled; their requests cannot be issued")
        return requester_of(row)

    return lookup


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
