"""ACME crash recovery and housekeeping, run by the scheduler's ``acme-recover`` job.

A ``kill -9`` can stop a web worker in two places that leave ACME state in flight:

- **finalize** moved the order to ``processing`` and then died. Either the certificate got stored
  (issuance returns only after storing, and the certificate's metadata names the order): the
  order becomes ``valid`` with it. Or it did not: once the issuance intent is resolved
  (``recover-intents`` abandons it), the order goes back to ``ready`` and the client may
  finalize again. Either way nothing is issued twice, and no stored certificate is lost.
- **validation** ran in a thread of the dead worker, leaving the challenge ``processing``: the
  validation is run again, so the client's poll finishes instead of hanging.

Housekeeping marks orders and authorizations past their expiry, so queries that count or reuse
them (rate limits, ARI, revocation by authorization) see the truth without computing it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from ca.authority import Authority
from ca.store import acme as store

log = logging.getLogger(__name__)

#: A finalize longer than this is taken for dead (issuance takes milliseconds; an HSM outage
#: fails it within its own timeouts, which are shorter).
FINALIZE_PATIENCE = timedelta(minutes=5)


@dataclass(frozen=True)
class RecoveryReport:
    """What one recovery run changed."""

    orders_valid: tuple[int, ...] = ()
    orders_ready: tuple[int, ...] = ()
    challenges_rerun: tuple[int, ...] = ()
    orders_expired: int = 0
    authorizations_expired: int = 0

    def __bool__(self) -> bool:
        return bool(
            self.orders_valid
            or self.orders_ready
            or self.challenges_rerun
            or self.orders_expired
            or self.authorizations_expired
        )


def validation_patience(timeout_seconds: int) -> timedelta:
    """How long a challenge may stay ``processing`` before it is taken for orphaned: a few
    validation timeouts (a check may resolve, connect and read), plus slack."""
    return timedelta(seconds=3 * timeout_seconds + 30)


def recover_orders(auth: Authority, now: datetime) -> tuple[list[int], list[int]]:
    """Resolve orders stuck in ``processing``; ``(made valid, put back to ready)``."""
    valid: list[int] = []
    ready: list[int] = []
    for order_id, account_id, since in store.orders_processing_since(
        auth.db, now - FINALIZE_PATIENCE
    ):
        with auth.db.write() as conn:
            serials = store.certificates_of_order(conn, order_id, since - timedelta(seconds=1))
            if serials:
                if store.move_order(
                    conn, order_id, "processing", "valid", certificate_serial=serials[0]
                ):
                    auth.db.append_audit(
                        conn,
                        now,
                        "hsmca",
                        "acme.order.recovered",
                        f"acme-order:{order_id}",
                        {"status": "valid", "serial": serials[0]},
                    )
                    valid.append(order_id)
                continue
            if store.pending_intents_of(conn, f"acme:{account_id}", since):
                continue  # recover-intents resolves the intent first; the next run moves on
            if store.move_order(conn, order_id, "processing", "ready"):
                auth.db.append_audit(
                    conn,
                    now,
                    "hsmca",
                    "acme.order.recovered",
                    f"acme-order:{order_id}",
                    {"status": "ready", "reason": "the finalize stopped before a certificate"},
                )
                ready.append(order_id)
    return valid, ready


def rerun_challenges(auth: Authority, now: datetime) -> list[int]:
    """Run again the validations a stopped worker left ``processing``; their ids."""
    patience = validation_patience(auth.config.acme.validation_timeout_seconds)
    stuck = store.challenges_processing_since(auth.db, now - patience)
    if not stuck:
        return []
    from ca.acme.validation import run_validation  # late: validators import network modules

    done = []
    for challenge_id in stuck:
        try:
            run_validation(auth, challenge_id)
        except Exception:  # one bad row must not stop the others
            log.exception("re-running the validation of challenge %s failed", challenge_id)
            continue
        done.append(challenge_id)
    return done


def run_once(auth: Authority, now: datetime) -> RecoveryReport:
    """One pass of recovery and housekeeping (the scheduler's ``acme-recover`` job)."""
    valid, ready = recover_orders(auth, now)
    rerun = rerun_challenges(auth, now)
    with auth.db.write() as conn:
        expired_orders = store.expire_orders(conn, now)
        expired_authz = store.expire_authorizations(conn, now)
    return RecoveryReport(tuple(valid), tuple(ready), tuple(rerun), expired_orders, expired_authz)
