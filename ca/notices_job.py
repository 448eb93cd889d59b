"""The expiry-notices job: read what is due, deliver it, record each outcome with its audit event.

``run_once(auth, now)`` is what the scheduler calls every ``[notices] every_minutes``:

1. Read the candidates (issued, unrevoked, expiring within the largest window), resolve their
   owners, drop the renewed ones and those recorded as sent (or failed and still waiting), and
   group the rest by (owner, window, channel) (``ca.notices.plan_notices``).
2. Deliver each notice outside any transaction (a slow receiver never holds the writer lock).
3. Record its rows in ``expiry_notices`` and its ``notice.sent`` or ``notice.failed`` event in
   ONE transaction.

Delivery is at least once: a crash (kill -9) between 2 and 3 leaves no row, so the next run
sends that notice again, with the same ``notice_id`` when its certificates are the same. A
failed notice is audited once per failed run, and runs wait ``retry_minutes``, doubling per
failure up to 6 hours, so a dead receiver costs a handful of events a day, not one a minute.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ca.authority import Authority
from ca.errors import CAError
from ca.hierarchy import SUBORDINATE_PROFILE
from ca.notices import (
    ExpiringCertificate,
    Notice,
    NoticeKey,
    PriorNotice,
    build_email,
    build_payload,
    plan_notices,
    retry_delay,
)
from ca.notify_delivery import (
    Delivered,
    destination_label,
    post_webhook,
    read_secret_file,
    send_email,
    smtp_password,
)
from ca.store import notices as store

log = logging.getLogger("hsmca.notices")

ACTOR = "hsmca"
#: Certificates the CA renews itself (its CAs, OCSP responders, the audit signer): no notices.
INTERNAL_PROFILES = (SUBORDINATE_PROFILE, "ocsp-responder", "audit-signer")


@dataclass(frozen=True)
class Plan:
    """What is due now, and what was recorded of those certificates before."""

    notices: list[Notice]
    prior: Mapping[NoticeKey, PriorNotice]


@dataclass(frozen=True)
class NoticeResult:
    """One notice and how its delivery went."""

    notice: Notice
    delivered: Delivered


def collect(auth: Authority, now: datetime) -> Plan:
    """The notices due at ``now`` (reads only; ``hsmca notices preview`` shows these)."""
    cfg = auth.config.notices
    until = now + timedelta(days=max(cfg.windows_days))
    with auth.db.read() as conn:
        rows = store.expiring_certificates(conn, now, until, INTERNAL_PROFILES)
        if not rows:
            return Plan([], {})
        accounts = store.acme_accounts(conn, _acme_ids(rows))
        owners = {_owner(r, accounts) for r in rows}
        bound = store.acme_accounts_bound_to(conn, owners)
        requesters = owners | {r["requester"] for r in rows} | {f"acme:{i}" for i in bound}
        later = store.later_certificates(conn, requesters, min(r["not_after"] for r in rows))
        accounts |= store.acme_accounts(conn, set(_acme_ids(later)) - set(accounts))
        recorded = store.recorded_notices(conn, [r["serial"] for r in rows])
    candidates = [_certificate(r, accounts) for r in rows]
    others = [_certificate(r, accounts) for r in later]
    prior = {
        key: PriorNotice(status, attempts if status == "failed" else 0, next_at)
        for key, (status, attempts, next_at) in recorded.items()
    }
    contacts = {
        f"acme:{i}": [c.removeprefix("mailto:") for c in contact if c.startswith("mailto:")]
        for i, (client, contact) in accounts.items()
        if client is None
    }
    return Plan(plan_notices(candidates, others, cfg, prior, now, contacts), prior)


def run_once(auth: Authority, now: datetime | None = None) -> list[NoticeResult]:
    """Send every notice due (the scheduler's job); returns what was tried and how it went."""
    if not auth.config.notices.enabled:
        return []
    now = now or auth.now()
    plan = collect(auth, now)
    secrets: dict[Path, bytes] = {}
    # A receiver that exhausted its POSTs for one notice is not tried again in this run, so a
    # dead one costs one notice's timeouts per run, not every owner's.
    dead: dict[str, str] = {}
    results = []
    for notice in plan.notices:
        url = notice.destinations.webhook_url if notice.channel == "webhook" else ""
        if url in dead:
            delivered = Delivered(False, 0, f"not tried: {dead[url]} for another notice this run")
        else:
            delivered = deliver(auth, notice, now, secrets)
            if (
                url
                and not delivered.ok
                and delivered.attempts >= auth.config.notices.webhook_attempts
            ):
                dead[url] = delivered.error
        record(auth, notice, delivered, plan.prior, now)
        if delivered.ok:
            log.info(
                "expiry notice %s to %s (%s, %d days): %d certificate(s)",
                notice.notice_id,
                notice.owner,
                notice.channel,
                notice.window.days,
                len(notice.certificates),
            )
        else:
            log.warning(
                "expiry notice %s to %s (%s) failed: %s",
                notice.notice_id,
                notice.owner,
                notice.channel,
                delivered.error,
            )
        results.append(NoticeResult(notice, delivered))
    return results


def deliver(
    auth: Authority, notice: Notice, now: datetime, secrets: dict[Path, bytes] | None = None
) -> Delivered:
    """Deliver one notice on its channel; a failure is returned, never raised."""
    cfg = auth.config.notices
    ca_file = auth.config.path(cfg.tls_ca_file) if cfg.tls_ca_file else None
    dest = notice.destinations
    if notice.channel == "webhook":
        path = auth.config.path(dest.webhook_secret_file)
        secrets = {} if secrets is None else secrets
        try:
            if path not in secrets:
                secrets[path] = read_secret_file(path, "webhook secret")
        except CAError as exc:
            return Delivered(False, 0, str(exc))
        return post_webhook(
            dest.webhook_url,
            build_payload(notice, now),
            secrets[path],
            notice.notice_id,
            timeout=cfg.webhook_timeout_seconds,
            attempts=cfg.webhook_attempts,
            backoff=cfg.webhook_backoff_seconds,
            ca_file=ca_file,
        )
    if notice.channel == "email":
        message = build_email(notice, cfg.smtp_from, now)
        return send_email(message, cfg, lambda: smtp_password(cfg, auth.config.data_dir), ca_file)
    return Delivered(
        False,
        0,
        f"no destination for owner {notice.owner!r}: set [notices] webhook_url or "
        f"default_recipients, or [notices.owners.{notice.owner!r}]",
    )


def record(
    auth: Authority,
    notice: Notice,
    delivered: Delivered,
    prior: Mapping[NoticeKey, PriorNotice],
    now: datetime,
) -> None:
    """Record the outcome of one notice and its audit event in one transaction."""
    base = timedelta(minutes=auth.config.notices.retry_minutes)
    rows: list[dict[str, Any]] = []
    failures = 0
    for serial, days, channel in notice.keys():
        before = prior.get((serial, days, channel))
        attempts = (before.failures if before else 0) + 1
        failures = max(failures, attempts)
        rows.append(
            {
                "serial": serial,
                "window_days": days,
                "channel": channel,
                "owner": notice.owner[:128],
                "status": "sent" if delivered.ok else "failed",
                "notice_id": notice.notice_id,
                "attempts": attempts,
                "next_attempt_at": None if delivered.ok else now + retry_delay(attempts, base),
                "sent_at": now if delivered.ok else None,
                "last_error": None if delivered.ok else delivered.error[:1000],
            }
        )
    details: dict[str, Any] = {
        "notice_id": notice.notice_id,
        "owner": notice.owner,
        "window_days": notice.window.days,
        "channel": notice.channel,
        "serials": notice.serials,
        "destination": _destination(notice),
        "attempts": delivered.attempts,
    }
    if delivered.ok:
        if delivered.detail:
            details["result"] = delivered.detail
    else:
        details["error"] = delivered.error
        details["failures"] = failures
        details["next_attempt_at"] = (now + retry_delay(failures, base)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
    with auth.db.write() as conn:
        store.record_notices(conn, rows, now)
        auth.db.append_audit(
            conn,
            now,
            ACTOR,
            "notice.sent" if delivered.ok else "notice.failed",
            notice.owner,
            details,
        )


def _destination(notice: Notice) -> str | list[str]:
    if notice.channel == "webhook":
        return destination_label(notice.destinations.webhook_url)
    if notice.channel == "email":
        return list(notice.destinations.emails)
    return ""


def _acme_ids(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    ids = []
    for r in rows:
        prefix, _, number = str(r["requester"]).partition(":")
        if prefix == "acme" and number.isdigit():
            ids.append(int(number))
    return ids


def _owner(row: Mapping[str, Any], accounts: Mapping[int, tuple[str | None, list[str]]]) -> str:
    """The certificate's ``metadata.owner``, else its requester (an ACME account bound to an API
    client by EAB: that client)."""
    if row["owner"]:
        return str(row["owner"])
    requester = str(row["requester"])
    prefix, _, number = requester.partition(":")
    if prefix == "acme" and number.isdigit():
        client = accounts.get(int(number), (None, []))[0]
        if client:
            return client
    return requester


def _certificate(
    row: Mapping[str, Any], accounts: Mapping[int, tuple[str | None, list[str]]]
) -> ExpiringCertificate:
    return ExpiringCertificate(
        serial=row["serial"],
        owner=_owner(row, accounts),
        requester=row["requester"],
        subject=row["subject"],
        names=tuple(row["sans"]),
        not_before=row["not_before"],
        not_after=row["not_after"],
        profile=row["profile"],
        issuer=row["issuer"],
        fingerprint_sha256=row["fingerprint_sha256"],
        revoked=row["status"] != "issued",
    )
