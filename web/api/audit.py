"""The audit endpoints of ``/api/v1``, for clients with the ``audit`` role.

* ``GET /audit/events``: the events, oldest first, filtered and paginated by ``seq`` (for a SIEM
  that follows the log);
* ``GET /audit/verify``: verify the live chain, checkpoints and witness (``ca.audit_verify``);
* ``GET /audit/export``: the export bundle (``ca.audit_export``), streamed.

Like every API handler: authenticate (401), check the role (403, audited as ``api.denied``),
parse the query strictly (400), then act. Reading and verifying change nothing and are not
audited; an export is (``audit.exported``: range and requester) before its first byte is sent.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from urllib.parse import urlencode

from flask import Blueprint, Response, request

from ca.audit import rfc3339
from ca.audit_export import (
    MEDIA_TYPE,
    Bound,
    bundle_chunks,
    parse_bound,
    record_export,
    resolve_range,
)
from ca.audit_verify import verify_live
from ca.authority import Authority
from ca.errors import BadRequest, Forbidden
from ca.store.ui import EventQuery, EventRow, events_after
from web.api import schemas as s
from web.api.auth import TokenCache, Unauthorized, current_requester

log = logging.getLogger("hsmca.api")

_PARAMS = ("from", "to")
_EVENT_PARAMS = ("since", "until", "actor", "action", "subject", "after", "limit")
_MAX_TEXT = 256


def register_audit_routes(bp: Blueprint, authority: Callable[[], Authority]) -> None:
    """Add the audit endpoints to the ``/api/v1`` blueprint (whose error handlers they use)."""
    tokens = TokenCache()

    def auditor(purpose: str) -> tuple[Authority, str]:
        """The authority and the caller's name, once the caller holds the ``audit`` role."""
        auth = authority()
        try:
            requester = current_requester(auth, tokens)
        except Unauthorized:
            log.info("api: unauthenticated %s %s", request.method, request.path)
            raise
        if not requester.has_role("audit"):
            detail = f"client {requester.name!r} lacks the 'audit' role needed to {purpose}"
            auth.audit(requester.name, "api.denied", purpose, {"reason": detail, "role": "audit"})
            raise Forbidden(detail)
        return auth, requester.name

    @bp.get("/audit/events")
    def audit_events() -> Response:
        auth, _ = auditor("read the audit log")
        query, after, limit = _event_query(auth.config.api.page_size)
        rows = events_after(auth.db, query, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        next_after = rows[-1].seq if more else None
        page = s.AuditEventPage(items=[_event_out(r) for r in rows], next_after=next_after)
        resp = Response(page.model_dump_json(), mimetype="application/json")
        if next_after is not None:
            args = request.args.to_dict()
            args["after"] = str(next_after)
            link = "/api/v1/audit/events?" + urlencode(sorted(args.items()))
            resp.headers["Link"] = f'<{link}>; rel="next"'
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @bp.get("/audit/verify")
    def audit_verify() -> Response:
        auth, _ = auditor("verify the audit log")
        if request.args:
            raise BadRequest(f"unknown query parameter(s): {', '.join(sorted(request.args))}")
        started = time.monotonic()
        report = verify_live(auth)
        out = s.AuditVerifyOut(
            ok=report.ok,
            events=report.events,
            checkpoints=report.checkpoints,
            head_seq=report.head_seq,
            last_checkpoint_seq=report.last_checkpoint_seq,
            last_checkpoint_time=report.last_checkpoint_time,
            unsigned_events=report.unsigned_events,
            witnessed=report.witnessed,
            first_bad_seq=report.first_bad_seq,
            problem=report.problem or None,
            warnings=list(report.warnings),
            seconds=round(time.monotonic() - started, 3),
        )
        resp = Response(out.model_dump_json(), mimetype="application/json")
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @bp.get("/audit/export")
    def audit_export() -> Response:
        auth, requester = auditor("export the audit log")
        since, until = _bounds()
        with auth.db.read() as conn:
            rng = resolve_range(conn, since, until)
        record_export(auth, requester, rng, via="api")
        resp = Response(_logged(bundle_chunks(auth, rng)), mimetype=MEDIA_TYPE)
        resp.headers["Content-Disposition"] = f'attachment; filename="{rng.filename()}"'
        resp.headers["Cache-Control"] = "no-store"
        return resp


def _event_query(default_limit: int) -> tuple[EventQuery, int, int]:
    """The filters, ``after`` cursor and page size of ``/audit/events``; 400 for anything bad."""
    args = request.args
    unknown = sorted(set(args) - set(_EVENT_PARAMS))
    if unknown:
        raise BadRequest(
            f"unknown query parameter(s): {', '.join(unknown)} (use {', '.join(_EVENT_PARAMS)})"
        )
    for name in args:
        if len(args.getlist(name)) > 1:
            raise BadRequest(f"{name} given more than once")
    times: dict[str, str | None] = {}
    for name in ("since", "until"):
        raw = args.get(name)
        times[name] = None if raw is None else rfc3339(_moment(raw, name))
    if times["since"] and times["until"] and times["since"] >= times["until"]:
        raise BadRequest("since must be before until")
    texts: dict[str, str | None] = {}
    for name in ("actor", "action", "subject"):
        raw = args.get(name)
        if raw is not None and not 1 <= len(raw) <= _MAX_TEXT:
            raise BadRequest(f"{name} must be 1 to {_MAX_TEXT} characters")
        texts[name] = raw
    query = EventQuery(since=times["since"], until=times["until"], **texts)
    return query, _integer("after", 0, 0, 2**63 - 1), _integer("limit", default_limit, 1, 1000)


def _moment(text: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or "T" not in text.upper():
        raise BadRequest(
            f"{name} must be an RFC 3339 time with a UTC offset (e.g. 2026-01-31T12:00:00Z)"
        )
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise BadRequest(f"{name} is out of range in UTC") from None


def _integer(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,19}", raw) or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return int(raw)


def _event_out(row: EventRow) -> s.AuditEventOut:
    try:
        details = json.loads(row.details)
    except ValueError:
        details = None
    if not isinstance(details, dict):
        details = {"__unparseable__": row.details}  # as stored; verification reports it
    return s.AuditEventOut(
        seq=row.seq,
        time=row.time,
        actor=row.actor,
        action=row.action,
        subject=row.subject,
        details=details,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


def _bounds() -> tuple[Bound | None, Bound | None]:
    """``from`` and ``to`` of the query (each a seq or an RFC 3339 time); 400 for anything else."""
    unknown = sorted(set(request.args) - set(_PARAMS))
    if unknown:
        raise BadRequest(f"unknown query parameter(s): {', '.join(unknown)} (use from, to)")
    bounds: list[Bound | None] = []
    for name in _PARAMS:
        values = request.args.getlist(name)
        if len(values) > 1:
            raise BadRequest(f"{name} given more than once")
        bounds.append(parse_bound(values[0], name) if values else None)
    return bounds[0], bounds[1]


def _logged(chunks: Iterator[bytes]) -> Iterator[bytes]:
    # Once streaming has begun a failure cannot become a problem document: the download is cut
    # short (without its manifest, so it never verifies) and the cause goes to the log.
    try:
        yield from chunks
    except Exception:
        log.exception("api: audit export failed while streaming")
        raise
