"""CRL publication: which CRLs are due, and publishing them (signed in the HSM, stored, audited).

Every active CA publishes one full CRL, or ``[crl] shards`` partitions of it (issuing CAs only:
the root's CRL of CA certificates is never partitioned). A CRL (CA, shard) is *due* when

* none was published yet;
* it is older than ``refresh_hours`` (or half its validity, if that is shorter);
* a certificate of its partition was revoked after it was made, and
  ``revocation_delay_seconds`` have passed since the oldest such revocation (so a burst of
  revocations shares one new CRL, and none waits longer than the delay plus one run).

CRL numbers count up from 1 per (CA, shard) and never repeat or go back: the number is the
previous one plus one, and the store transaction refuses it if a concurrent publisher used it.
thisUpdate is the moment the entries were read, nextUpdate thisUpdate + ``validity_hours``
(the root: ``root_validity_days``). Entries of certificates that expired more than
``refresh_hours + validity_hours`` ago are left out (RFC 5280 3.3 lets them go once a CRL issued
after the expiry listed them).

The scheduler calls :func:`run_once`; ``hsmca crl generate`` calls :func:`publish`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from ca.authority import Authority
from ca.errors import BadRequest, CAError, HsmKeyNotFound, HsmUnavailable, KeyMismatch
from ca.store import crls
from ca.store.db import CaRow
from crl.build import CrlSpec, build_crl

log = logging.getLogger("hsmca.crl")


@dataclass(frozen=True)
class PublishedCrl:
    """A CRL just published."""

    ca: str
    shard: int
    number: int
    this_update: datetime
    next_update: datetime
    entries: int
    sha256: str
    url: str
    size: int
    seconds: float  # reading the entries, building and signing


@dataclass(frozen=True)
class DueCrl:
    ca: str
    shard: int
    why: str  # "missing" | "refresh" | "revocation"


def shard_count(auth: Authority, ca_name: str) -> int:
    """How many CRLs CA ``ca_name`` publishes (1, or ``[crl] shards`` for an issuing CA)."""
    return auth.urls_for(ca_name).crl_shards


def validity(auth: Authority, ca: CaRow) -> timedelta:
    cfg = auth.config.crl
    if ca.parent_id is None:
        return timedelta(days=cfg.root_validity_days)
    return timedelta(hours=cfg.validity_hours)


def refresh_interval(auth: Authority, ca: CaRow) -> timedelta:
    """A new CRL at least this often: ``refresh_hours``, or half the validity if shorter."""
    return min(timedelta(hours=auth.config.crl.refresh_hours), validity(auth, ca) / 2)


def retention(auth: Authority) -> timedelta:
    """How long after its expiry a revoked certificate stays listed."""
    cfg = auth.config.crl
    return timedelta(hours=cfg.refresh_hours + cfg.validity_hours)


def due(auth: Authority, now: datetime) -> list[DueCrl]:
    """The CRLs to publish now, of every active CA that has not expired."""
    delay = timedelta(seconds=auth.config.crl.revocation_delay_seconds)
    out = []
    for ca in auth.db.list_cas():
        if ca.status != "active" or ca.not_after <= now:
            continue
        current = crls.current_crls(auth.db, ca.id)
        shards = range(shard_count(auth, ca.name))
        made = [current[(ca.id, s)].created_at for s in shards if (ca.id, s) in current]
        # Revocations newer than the oldest current CRL: few, as CRLs follow them closely.
        recent = crls.revocations_since(auth.db, ca.id, min(made)) if made else []
        single = len(shards) == 1
        for shard in shards:
            meta = current.get((ca.id, shard))
            if meta is None:
                out.append(DueCrl(ca.name, shard, "missing"))
                continue
            if now - meta.created_at >= refresh_interval(auth, ca) or meta.next_update <= now:
                out.append(DueCrl(ca.name, shard, "refresh"))
                continue
            pending = [
                when for s, when in recent if (single or s == shard) and when > meta.created_at
            ]
            if pending and min(pending) <= now - delay:
                out.append(DueCrl(ca.name, shard, "revocation"))
    return out


def publish(
    auth: Authority,
    ca_name: str,
    now: datetime | None = None,
    shards: Iterable[int] | None = None,
    actor: str = "hsmca",
    number_skip: int = 0,
) -> list[PublishedCrl]:
    """Publish new CRLs of CA ``ca_name`` (all its shards, or ``shards``) as of ``now``.

    ``number_skip`` leaves that many CRL numbers unused first (after a restore from backup,
    whose CRLs published since the backup must never have their numbers reused).

    Needs the CA's key: raises HsmUnavailable, HsmKeyNotFound or KeyMismatch when it cannot be
    used, and NotFound for an unknown or revoked CA.
    """
    now = now or auth.now()
    issuer = auth.issuer(ca_name)
    ca = issuer.row
    count = issuer.urls.crl_shards
    wanted = sorted(set(range(count) if shards is None else shards))
    if any(not 0 <= s < count for s in wanted):
        raise BadRequest(f"CA {ca_name!r} publishes CRL shards 0 to {count - 1}")
    this_update = now.replace(microsecond=0)
    next_update = this_update + validity(auth, ca)
    expired_before = now - retention(auth)
    # A barrier: revocations take their time inside the writer lock, so once this process has
    # held it, every revocation timestamped before `now` has committed and will be read below.
    with auth.db.write() as conn:
        numbers = {s: crls.last_crl_number(conn, ca.id, s) + 1 + number_skip for s in wanted}
    published = []
    for shard in wanted:
        started = time.perf_counter()
        entries = crls.revoked_entries(auth.db, ca.id, shard if count > 1 else None, expired_before)
        url = issuer.urls.crl_url(shard)
        spec = CrlSpec(
            issuer.certificate,
            numbers[shard],
            this_update,
            next_update,
            distribution_point=url if count > 1 else None,
        )
        der = build_crl(issuer.key, issuer.hash_algorithm, spec, entries)
        seconds = time.perf_counter() - started
        digest = hashlib.sha256(der).hexdigest()
        with auth.db.write() as conn:
            if crls.last_crl_number(conn, ca.id, shard) >= numbers[shard]:
                log.warning(
                    "CRL %s/%d number %d was published concurrently; this one is discarded",
                    ca.name,
                    shard,
                    numbers[shard],
                )
                continue
            crls.add_crl(
                conn,
                {
                    "issuer_id": ca.id,
                    "shard": shard,
                    "number": numbers[shard],
                    "this_update": this_update,
                    "next_update": next_update,
                    "entries": len(entries),
                    "der": der,
                    "sha256": digest,
                    "created_at": now,
                },
            )
            auth.db.append_audit(
                conn,
                auth.now(),
                actor,
                "crl.published",
                ca.name,
                {
                    "ca": ca.name,
                    "shard": shard,
                    "number": numbers[shard],
                    "this_update": _iso(this_update),
                    "next_update": _iso(next_update),
                    "entries": len(entries),
                    "sha256": digest,
                },
            )
        published.append(
            PublishedCrl(
                ca.name,
                shard,
                numbers[shard],
                this_update,
                next_update,
                len(entries),
                digest,
                url,
                len(der),
                seconds,
            )
        )
        log.info(
            "published CRL %s number %d: %d entries, %d bytes, %.2f s",
            url,
            numbers[shard],
            len(entries),
            len(der),
            seconds,
        )
    return published


def run_once(auth: Authority, now: datetime) -> list[PublishedCrl]:
    """The scheduler's job: publish every CRL that is due; skip CAs whose key is unavailable.

    A CA whose key cannot be used (an offline root token, an HSM outage) is logged and skipped,
    and the other CAs go on; it is due again on the next run.
    """
    by_ca: dict[str, list[int]] = {}
    for item in due(auth, now):
        by_ca.setdefault(item.ca, []).append(item.shard)
    published: list[PublishedCrl] = []
    for name, shards in by_ca.items():
        try:
            published += publish(auth, name, now, shards)
        except (HsmUnavailable, HsmKeyNotFound, KeyMismatch) as exc:
            _log_skipped(auth, name, shards, now, exc)
        except CAError as exc:
            log.error("CRLs of CA %r not published: %s: %s", name, exc.kind, exc)
    return published


def _log_skipped(
    auth: Authority, name: str, shards: Sequence[int], now: datetime, exc: CAError
) -> None:
    """Info while the current CRLs have time left; a warning once one is missing or near expiry."""
    ca = auth.db.get_ca(name)
    current = crls.current_crls(auth.db, ca.id)
    soon = now + 2 * refresh_interval(auth, ca)
    urgent = any(
        (ca.id, s) not in current or current[(ca.id, s)].next_update <= soon for s in shards
    )
    log.log(
        logging.WARNING if urgent else logging.INFO,
        "CRLs of CA %r are due but its key is unavailable (%s)%s",
        name,
        exc,
        "; publish them with: hsmca crl generate --ca " + name if urgent else "",
    )


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
