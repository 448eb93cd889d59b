"""``GET /metrics`` (Prometheus text format) and the freshness checks of ``GET /readyz``.

Counters and histograms are recorded by the core through :mod:`ca.metrics`; under ``hsmca serve``
a scrape of any worker sums every process's values (multiprocess mode, see that module). The
database-derived gauges are read at scrape time by one :class:`ca.metrics.DatabaseCollector` per
process, cached ``[monitoring] metrics_cache_seconds``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import timedelta

from flask import Flask, Response, request

from ca import health, metrics
from ca.authority import Authority
from ca.errors import CAError
from ca.store import monitoring
from crl.publisher import shard_count


def install_metrics(app: Flask, authority: Callable[[], Authority]) -> None:
    """Add ``/metrics`` to ``app``."""
    state: dict[str, object] = {}
    lock = threading.Lock()

    def read() -> monitoring.Snapshot:
        auth = authority()
        return monitoring.snapshot(
            auth.db,
            auth.now(),
            tuple(auth.config.profiles),
            auth.config.audit.checkpoint_every_seconds,
        )

    def collector() -> metrics.DatabaseCollector:
        with lock:
            current = state.get("collector")
            if (
                not isinstance(current, metrics.DatabaseCollector)
                or state.get("pid") != os.getpid()
            ):
                ttl = authority().config.monitoring.metrics_cache_seconds
                current = metrics.DatabaseCollector(read, ttl)
                state.update(collector=current, pid=os.getpid())
            return current

    @app.get("/metrics")
    def metrics_view() -> Response:
        """Every metric, in the format the scraper asks for (Prometheus text by default)."""
        body, content_type = metrics.exposition([collector()], request.headers.get("Accept", ""))
        resp = Response(body, content_type=content_type)
        resp.headers["Cache-Control"] = "no-store"
        return resp


def freshness_checks(auth: Authority) -> dict[str, str]:
    """The ``crl`` and ``ocsp`` checks of ``/readyz``: "ok" or what is stale and why."""
    cfg = auth.config.monitoring
    now = auth.now()
    try:
        cas = monitoring.active_cas(auth.db, now)
    except CAError as exc:
        return {"crl": str(exc), "ocsp": str(exc)}
    checks: dict[str, str] = {}
    try:
        crl_max_age = (
            timedelta(seconds=cfg.crl_max_age_seconds) if cfg.crl_max_age_seconds else None
        )
        shards = {ca.name: shard_count(auth, ca.name) for ca in cas}
        crls = monitoring.crl_states(auth.db, cas)
        checks["crl"] = health.summary(health.crl_problems(cas, crls, shards, now, crl_max_age))
    except CAError as exc:
        checks["crl"] = str(exc)
    try:
        ocsp_max_age = (
            timedelta(seconds=cfg.ocsp_max_age_seconds) if cfg.ocsp_max_age_seconds else None
        )
        responders = monitoring.responder_states(auth.db, cas)
        stale = monitoring.stale_ocsp_responses(auth.db, now, ocsp_max_age)
        margin = timedelta(hours=cfg.ocsp_responder_min_validity_hours)
        checks["ocsp"] = health.summary(health.ocsp_problems(cas, responders, stale, now, margin))
    except CAError as exc:
        checks["ocsp"] = str(exc)
    return checks
