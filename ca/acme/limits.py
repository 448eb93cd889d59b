"""ACME rate limits: new orders per account and new accounts per IP address, per sliding hour.

:func:`decide` is the pure rule; :func:`check_new_order` and :func:`check_new_account` read the
store and raise ``rateLimited`` (429) with ``Retry-After``: the seconds until enough counted rows
have left the window for one more request to fit. A limit of 0 means no limit.

The order limit is checked before the order's write transaction, so a few concurrent requests of
one account may pass together at the edge; the account limit is checked inside the account's
write transaction (which holds the writer lock) and is exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection

from ca.acme.errors import AcmeError
from ca.store import acme as store
from ca.store.db import Database

#: The sliding window every limit counts in.
WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class Verdict:
    """Whether one more request fits; if not, after how many seconds it will."""

    allowed: bool
    retry_after: int = 0
    counted: int = 0


def decide(
    limit: int, recent: Sequence[datetime], now: datetime, window: timedelta = WINDOW
) -> Verdict:
    """One more request against ``limit`` given the creation times of earlier ones.

    ``recent`` holds the times of earlier requests (any order; only those inside the window
    ``(now - window, now]`` count, and at most ``limit`` of the newest are needed). When the limit
    is reached, the request fits again once the ``limit``-th newest time leaves the window.
    """
    if limit <= 0:
        return Verdict(True)
    inside = sorted((t for t in recent if now - window < t <= now), reverse=True)
    if len(inside) < limit:
        return Verdict(True, counted=len(inside))
    pivot = inside[limit - 1]
    seconds = math.ceil((pivot + window - now).total_seconds())
    return Verdict(False, max(1, seconds), len(inside))


def rate_limited(verdict: Verdict, detail: str) -> AcmeError:
    """The ``rateLimited`` problem for a refused verdict, with its ``Retry-After``."""
    return AcmeError(
        "rateLimited",
        f"{detail}; retry after {verdict.retry_after} s",
        headers={"Retry-After": str(verdict.retry_after)},
    )


def check_new_order(db: Database, account_id: int, now: datetime, limit: int) -> Verdict:
    """The verdict on one more order of ``account_id`` (``[acme] orders_per_account_per_hour``)."""
    if limit <= 0:
        return Verdict(True)
    times = store.recent_order_times(db, account_id, now - WINDOW, limit)
    return decide(limit, times, now)


def check_new_account(conn: Connection, ip: str | None, now: datetime, limit: int) -> None:
    """``rateLimited`` if ``ip`` created ``limit`` accounts in the last hour
    (``[acme] new_accounts_per_ip_per_hour``); run inside the account's write transaction."""
    if limit <= 0 or not ip:
        return
    verdict = decide(limit, store.recent_account_times(conn, ip, now - WINDOW, limit), now)
    if not verdict.allowed:
        raise rate_limited(
            verdict, f"at most {limit} new accounts per hour from one IP address ({ip})"
        )
