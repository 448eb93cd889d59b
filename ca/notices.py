"""Expiry notices, the pure part: which window a certificate is in, who owns it, what to send.

A certificate is reported once per *window* (``[notices] windows_days``, e.g. 30, 14, 7, 1) and
channel (webhook, e-mail): in the smallest window its remaining time has reached, so a 5-day
certificate first seen with 4 days left gets the 7-day notice only. Not reported: revoked and
expired certificates, and *renewed* ones, i.e. those for which the same owner holds a newer,
unrevoked certificate that lives longer and covers all their names.

The notices of one owner, window and channel travel together (one POST, one mail). The I/O is
elsewhere: ``ca/notify_delivery.py`` delivers, ``ca/notices_job.py`` reads and records.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Literal

from ca.audit import canonical_json
from ca.config import NoticesConfig

Channel = Literal["webhook", "email", "none"]

#: A failed notice waits ``retry_minutes`` × 2^(failures - 1), but never longer than this.
MAX_RETRY_DELAY = timedelta(hours=6)
#: The signed payload's type and version (``docs/expiry-notices.md``).
PAYLOAD_TYPE = "hsmca.expiry-notice"
PAYLOAD_VERSION = 1
SIGNATURE_HEADER = "X-Hsmca-Signature"
TIMESTAMP_HEADER = "X-Hsmca-Timestamp"
NOTICE_ID_HEADER = "X-Hsmca-Notice-Id"


@dataclass(frozen=True, order=True)
class ExpiryWindow:
    """Notify when ``days`` or fewer are left."""

    days: int

    @property
    def span(self) -> timedelta:
        return timedelta(days=self.days)


@dataclass(frozen=True)
class ExpiringCertificate:
    """A certificate as the notices see it (its owner already resolved)."""

    serial: str
    owner: str
    requester: str
    subject: str
    names: tuple[str, ...]  # SANs as stored: "dns:…", "ip:…", …
    not_before: datetime
    not_after: datetime
    profile: str
    issuer: str
    fingerprint_sha256: str = ""
    revoked: bool = False

    def identity(self) -> frozenset[str]:
        """What a renewal must cover: the SANs, or the subject of a certificate without any."""
        return frozenset(self.names) if self.names else frozenset({"subject:" + self.subject})

    def days_left(self, now: datetime) -> int:
        """Whole days until ``not_after`` (0 on the last day)."""
        return max(0, (self.not_after - now) // timedelta(days=1))


@dataclass(frozen=True)
class Destinations:
    """Where one owner's notices go."""

    webhook_url: str = ""
    webhook_secret_file: str = ""
    emails: tuple[str, ...] = ()

    def channels(self) -> tuple[Channel, ...]:
        found: list[Channel] = []
        if self.webhook_url:
            found.append("webhook")
        if self.emails:
            found.append("email")
        return tuple(found) or ("none",)


@dataclass(frozen=True)
class PriorNotice:
    """What is recorded of one (serial, window, channel): ``sent``, or ``failed`` until when."""

    status: str
    failures: int = 0
    next_attempt_at: datetime | None = None


NoticeKey = tuple[str, int, str]  # (serial, window days, channel)


@dataclass(frozen=True)
class Notice:
    """The notice of one owner for one window on one channel, listing its certificates."""

    owner: str
    window: ExpiryWindow
    channel: Channel
    certificates: tuple[ExpiringCertificate, ...]
    destinations: Destinations = field(default_factory=Destinations)

    @property
    def serials(self) -> list[str]:
        return [c.serial for c in self.certificates]

    @property
    def notice_id(self) -> str:
        """Stable over re-sends of the same notice, so a receiver can drop duplicates."""
        material = canonical_json(
            [self.owner, self.window.days, self.channel, sorted(self.serials)]
        )
        return hashlib.sha256(material).hexdigest()[:32]

    def keys(self) -> list[NoticeKey]:
        return [(s, self.window.days, self.channel) for s in self.serials]


def windows_from(days: Iterable[int]) -> tuple[ExpiryWindow, ...]:
    """The configured windows, largest first."""
    return tuple(sorted((ExpiryWindow(d) for d in set(days)), reverse=True))


def window_for(
    not_after: datetime, now: datetime, windows: Sequence[ExpiryWindow]
) -> ExpiryWindow | None:
    """The smallest window the remaining time has reached; None if expired or not yet in one."""
    left = not_after - now
    if left <= timedelta(0):
        return None
    reached = [w for w in windows if left <= w.span]
    return min(reached) if reached else None


def is_renewed(cert: ExpiringCertificate, others: Iterable[ExpiringCertificate]) -> bool:
    """Whether the same owner holds a newer unrevoked certificate covering all ``cert``'s names."""
    names = cert.identity()
    return any(
        o.serial != cert.serial
        and not o.revoked
        and o.owner == cert.owner
        and o.not_after > cert.not_after
        and names <= o.identity()
        for o in others
    )


def drop_renewed(
    candidates: Iterable[ExpiringCertificate], others: Sequence[ExpiringCertificate]
) -> list[ExpiringCertificate]:
    """``candidates`` less the renewed ones (``others``: the owners' other certificates).

    Same verdicts as :func:`is_renewed` for each candidate, but a renewal must hold every name
    of the candidate, so only the certificates holding one chosen name of it are compared:
    linear in the names, not quadratic in an owner's certificates.
    """
    holding: dict[tuple[str, str], list[ExpiringCertificate]] = {}
    for o in others:
        if not o.revoked:
            for name in o.identity():
                holding.setdefault((o.owner, name), []).append(o)
    return [
        c for c in candidates if not is_renewed(c, holding.get((c.owner, min(c.identity())), ()))
    ]


def group_by_owner(
    certs: Iterable[tuple[ExpiringCertificate, ExpiryWindow]],
) -> dict[tuple[str, ExpiryWindow], tuple[ExpiringCertificate, ...]]:
    """(owner, window) → its certificates, soonest expiry first."""
    groups: dict[tuple[str, ExpiryWindow], list[ExpiringCertificate]] = {}
    for cert, window in certs:
        groups.setdefault((cert.owner, window), []).append(cert)
    return {
        key: tuple(sorted(group, key=lambda c: (c.not_after, c.serial)))
        for key, group in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1].days))
    }


def destinations_for(
    owner: str, config: NoticesConfig, contacts: Sequence[str] = ()
) -> Destinations:
    """An owner's destinations: its ``[notices.owners.NAME]`` entry, else the defaults.

    ``contacts`` are the e-mail addresses of an ACME account not bound to a client (used
    before ``default_recipients`` when ``acme_contacts`` is on). No SMTP server: no e-mail.
    """
    own = config.owners.get(owner)
    webhook = (own.webhook_url if own else "") or config.webhook_url
    secret = (own.webhook_secret_file if own and own.webhook_url else "") or (
        config.webhook_secret_file
    )
    emails: Sequence[str] = own.email if own and own.email else ()
    if not emails and config.acme_contacts:
        emails = contacts
    if not emails:
        emails = config.default_recipients
    if not config.smtp_host:
        emails = ()
    return Destinations(webhook, secret if webhook else "", tuple(dict.fromkeys(emails)))


def is_due(prior: PriorNotice | None, now: datetime) -> bool:
    """Never recorded, or failed and its wait is over."""
    if prior is None:
        return True
    if prior.status == "sent":
        return False
    return prior.next_attempt_at is None or prior.next_attempt_at <= now


def retry_delay(failures: int, base: timedelta) -> timedelta:
    """The wait after the ``failures``-th failed run: ``base`` doubling, capped."""
    factor: int = 2 ** max(0, min(failures - 1, 16))
    return min(MAX_RETRY_DELAY, base * factor)


def plan_notices(
    certificates: Iterable[ExpiringCertificate],
    others: Sequence[ExpiringCertificate],
    config: NoticesConfig,
    prior: Mapping[NoticeKey, PriorNotice],
    now: datetime,
    contacts: Mapping[str, Sequence[str]] | None = None,
) -> list[Notice]:
    """Every notice due now.

    ``certificates`` are the candidates (any state; revoked and expired ones are dropped
    here too), ``others`` the owners' certificates a renewal may be among, ``prior`` what
    was recorded per (serial, window, channel), ``contacts`` ACME e-mail contacts per owner.
    """
    windows = windows_from(config.windows_days)
    live = [c for c in certificates if not c.revoked and c.not_after > now]
    placed = [
        (c, w)
        for c in drop_renewed(live, others)
        if (w := window_for(c.not_after, now, windows)) is not None
    ]
    notices = []
    for (owner, window), certs in group_by_owner(placed).items():
        dest = destinations_for(owner, config, (contacts or {}).get(owner, ()))
        for channel in dest.channels():
            due = tuple(
                c for c in certs if is_due(prior.get((c.serial, window.days, channel)), now)
            )
            if due:
                notices.append(Notice(owner, window, channel, due, dest))
    return notices


# --- what is sent -------------------------------------------------------------------------------


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_payload(notice: Notice, now: datetime) -> bytes:
    """The webhook body: canonical JSON (sorted keys, compact, UTF-8), signed as these bytes."""
    return canonical_json(
        {
            "type": PAYLOAD_TYPE,
            "version": PAYLOAD_VERSION,
            "notice_id": notice.notice_id,
            "owner": notice.owner,
            "window_days": notice.window.days,
            "generated_at": _utc(now),
            "certificates": [
                {
                    "serial": c.serial,
                    "subject": c.subject,
                    "names": list(c.names),
                    "not_before": _utc(c.not_before),
                    "not_after": _utc(c.not_after),
                    "days_left": c.days_left(now),
                    "profile": c.profile,
                    "issuer": c.issuer,
                    "requester": c.requester,
                    "fingerprint_sha256": c.fingerprint_sha256,
                }
                for c in notice.certificates
            ],
        }
    )


def sign_payload(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Hsmca-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of ``"<timestamp>." + body``."""
    mac = hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: bytes,
    body: bytes,
    signature: str,
    timestamp: str,
    now: datetime,
    tolerance: timedelta = timedelta(minutes=5),
) -> bool:
    """What a receiver checks: a fresh timestamp and a matching signature (constant time)."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs(now.timestamp() - sent) > tolerance.total_seconds():
        return False  # a replay of an old (or a far future) delivery
    return hmac.compare_digest(sign_payload(secret, sent, body), signature)


def email_subject(notice: Notice) -> str:
    count = len(notice.certificates)
    what = "certificate" if count == 1 else "certificates"
    return f"[hsmca] {count} {what} of {notice.owner} expire within {notice.window.days} days"


def email_text(notice: Notice, now: datetime) -> str:
    """The plain-text body of a notice mail."""
    lines = [
        f"These certificates of {notice.owner} expire within {notice.window.days} days and "
        "have not been renewed:",
        "",
    ]
    for c in notice.certificates:
        names = ", ".join(n.partition(":")[2] or n for n in c.names) or c.subject
        lines += [
            f"  {names}",
            f"    serial      {c.serial}",
            f"    expires     {_utc(c.not_after)} (in {c.days_left(now)} days)",
            f"    profile     {c.profile} (issuer {c.issuer}, requested by {c.requester})",
            "",
        ]
    lines += [
        "A newer certificate for the same names and owner stops these notices.",
        f"Notice {notice.notice_id}, generated {_utc(now)} by hsmca.",
    ]
    return "\n".join(lines) + "\n"


def build_email(notice: Notice, sender: str, now: datetime) -> EmailMessage:
    """The notice as one mail to all of the owner's recipients."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(notice.destinations.emails)
    message["Subject"] = email_subject(notice)
    message["Date"] = format_datetime(now.astimezone(UTC))
    message["Message-ID"] = make_msgid(
        idstring=notice.notice_id[:16], domain=sender.rpartition("@")[2] or "hsmca.invalid"
    )
    message[NOTICE_ID_HEADER] = notice.notice_id
    message.set_content(email_text(notice, now))
    return message
