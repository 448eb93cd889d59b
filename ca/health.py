"""Readiness: whether what this CA publishes is fresh (pure functions over monitoring reads).

``/readyz`` reports each check by name: ``"ok"`` or a sentence saying what is wrong. A CA whose
CRL is past its nextUpdate, or whose OCSP answers are past theirs, makes relying parties fail
closed (or worse, open), so a node in that state should leave the load balancer and page someone.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from ca.store.monitoring import CaState, CrlState, ResponderState

OK = "ok"


def crl_problems(
    cas: Sequence[CaState],
    crls: Sequence[CrlState],
    shards: dict[str, int],
    now: datetime,
    max_age: timedelta | None,
) -> list[str]:
    """What is wrong with the current CRLs: a CA (shard) with none, one past its nextUpdate,
    or (with ``max_age``) one whose thisUpdate is older than that. ``shards``: CA name → count."""
    have = {(c.ca, c.shard): c for c in crls}
    problems = []
    for ca in cas:
        for shard in range(shards.get(ca.name, 1)):
            where = ca.name if shards.get(ca.name, 1) == 1 else f"{ca.name} shard {shard}"
            crl = have.get((ca.name, shard))
            if crl is None:
                problems.append(f"{where}: no CRL published")
            elif crl.next_update <= now:
                problems.append(
                    f"{where}: the CRL is past its nextUpdate ({_iso(crl.next_update)})"
                )
            elif max_age is not None and now - crl.this_update > max_age:
                problems.append(
                    f"{where}: the CRL's thisUpdate ({_iso(crl.this_update)}) is older than "
                    f"{int(max_age.total_seconds())} s"
                )
    return problems


def ocsp_problems(
    cas: Sequence[CaState],
    responders: Sequence[ResponderState],
    stale_responses: int,
    now: datetime,
    min_responder_validity: timedelta,
) -> list[str]:
    """What is wrong with OCSP: a CA without a responder certificate, one that has expired (or
    expires within ``min_responder_validity``), pre-signed responses past their nextUpdate."""
    have = {r.ca: r for r in responders}
    problems = []
    for ca in cas:
        responder = have.get(ca.name)
        if responder is None:
            problems.append(f"{ca.name}: no OCSP responder certificate")
        elif responder.not_after <= now:
            problems.append(
                f"{ca.name}: the OCSP responder certificate expired {_iso(responder.not_after)}"
            )
        elif responder.not_after - now < min_responder_validity:
            problems.append(
                f"{ca.name}: the OCSP responder certificate expires {_iso(responder.not_after)}"
            )
    if stale_responses:
        problems.append(f"{stale_responses} pre-signed OCSP response(s) are stale")
    return problems


def summary(problems: list[str]) -> str:
    """``"ok"`` or the problems in one line."""
    return OK if not problems else "; ".join(problems)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
