"""Parsing the compliance view's query strings (pure): every bad value becomes a message for
the form, never an exception."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ca.audit import rfc3339
from ca.store.ui import EventQuery

PAGE_SIZE = 50
EXPIRY_CHOICES = (7, 14, 30, 90)
STATUS_CHOICES = ("issued", "revoked")
_MAX_TEXT = 256
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_time(text: str, end: bool = False) -> datetime:
    """A UTC moment from ``YYYY-MM-DD``, ``YYYY-MM-DDTHH:MM[:SS]`` (a browser's datetime-local)
    or full RFC 3339. A bare date as an ``end`` means the end of that day. ValueError if bad."""
    value = text.strip()
    try:
        if _DATE.match(value):
            day = datetime.fromisoformat(value).replace(tzinfo=UTC)
            return day + timedelta(days=1) if end else day
        moment = datetime.fromisoformat(value.replace(" ", "T", 1))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # the form says: times are UTC
        return moment.astimezone(UTC)
    except OverflowError:  # out of range once in UTC (year 1 or 9999 at the edge)
        raise ValueError(f"{text[:40]!r} is out of range") from None


def _text(args: Mapping[str, str], name: str, errors: list[str]) -> str | None:
    value = (args.get(name) or "").strip()
    if len(value) > _MAX_TEXT:
        errors.append(f"{name} is longer than {_MAX_TEXT} characters")
        return None
    return value or None


def _cursor(args: Mapping[str, str], name: str, errors: list[str]) -> int | None:
    value = (args.get(name) or "").strip()
    if not value:
        return None
    if not value.isdigit() or len(value) > 18:
        errors.append(f"{name} must be a positive integer")
        return None
    return int(value)


@dataclass(frozen=True)
class AuditForm:
    """The audit browser's filters as typed (for the form) and as parsed (for the query)."""

    values: dict[str, str]
    query: EventQuery
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None
    after: int | None = None
    errors: list[str] = field(default_factory=list)


def audit_form(args: Mapping[str, str]) -> AuditForm:
    """Parse ``from``, ``to``, ``actor``, ``action``, ``subject``, ``before``, ``after``."""
    errors: list[str] = []
    values = {k: (args.get(k) or "").strip()[:_MAX_TEXT] for k in _AUDIT_FIELDS}
    since = until = None
    for name in ("from", "to"):
        raw = values[name]
        if not raw:
            continue
        try:
            moment = parse_time(raw, end=name == "to")
        except ValueError:
            errors.append(
                f"{name!r} must be a date (2026-01-31) or a UTC time (2026-01-31T12:00), "
                f"not {raw[:40]!r}"
            )
            continue
        if name == "from":
            since = moment
        else:
            until = moment
    if since and until and since >= until:
        errors.append("'from' must be before 'to'")
    query = EventQuery(
        since=rfc3339(since) if since else None,
        until=rfc3339(until) if until else None,
        actor=_text(args, "actor", errors),
        action=_text(args, "action", errors),
        subject=_text(args, "subject", errors),
    )
    before, after = _cursor(args, "before", errors), _cursor(args, "after", errors)
    return AuditForm(values, query, since, until, before, after, errors)


_AUDIT_FIELDS = ("from", "to", "actor", "action", "subject")


@dataclass(frozen=True)
class CertificateForm:
    """The inventory's filters: name (SAN or subject contains), owner, status, expiry window."""

    values: dict[str, str]
    name: str | None = None
    owner: str | None = None
    status: str | None = None
    expiring_days: int | None = None
    after: int = 0
    errors: list[str] = field(default_factory=list)


def certificate_form(args: Mapping[str, str]) -> CertificateForm:
    """Parse ``q``, ``owner``, ``status``, ``expiring`` and the ``after`` cursor."""
    errors: list[str] = []
    values = {
        k: (args.get(k) or "").strip()[:_MAX_TEXT] for k in ("q", "owner", "status", "expiring")
    }
    status = values["status"] or None
    if status is not None and status not in STATUS_CHOICES:
        errors.append(f"status must be one of {', '.join(STATUS_CHOICES)}")
        status = None
    expiring = None
    if values["expiring"]:
        if values["expiring"].isdigit() and int(values["expiring"]) in EXPIRY_CHOICES:
            expiring = int(values["expiring"])
        else:
            errors.append(f"expiring must be one of {', '.join(map(str, EXPIRY_CHOICES))} days")
    return CertificateForm(
        values,
        name=_text(args, "q", errors),
        owner=_text(args, "owner", errors),
        status=status,
        expiring_days=expiring,
        after=_cursor(args, "after", errors) or 0,
        errors=errors,
    )
