"""Prometheus metrics: the one module that imports ``prometheus_client``.

Core code calls the small helpers below (:func:`certificate_issued`, :func:`hsm_signed`, …). They
never raise: a metric that cannot be recorded is not a reason to fail an issuance. The metric
objects are built lazily, on first use in a process, so importing the core needs neither
``prometheus_client`` state nor a metrics directory.

Under ``hsmca serve`` every process (gunicorn workers of both listeners, the scheduler) writes its
values to files in ``PROMETHEUS_MULTIPROC_DIR`` (``DATA_DIR/run/metrics``) and a scrape of any
worker sums them (prometheus_client's multiprocess mode). That mode is chosen when
prometheus_client is first imported, so ``hsmca serve`` sets the variable (and empties the
directory) before anything imports it, and its children inherit it. Without the variable (tests,
``hsmca`` commands, a bare gunicorn) the values live in the process and a scrape shows its own.

Values derived from the database (CRL age, certificates about to expire, ACME orders, the audit
chain head) are not counted as things happen: :class:`DatabaseCollector` reads them at scrape
time, one cheap query each, and keeps them a few seconds so that a storm of scrapes costs the
database nothing more.
"""

from __future__ import annotations

import atexit
import bisect
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ca.store.monitoring import Snapshot

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Where ``hsmca serve`` keeps the per-process metric files, below the data directory.
MULTIPROC_SUBDIR = Path("run") / "metrics"

#: Statuses an OCSP request ends with: certificate statuses, OCSP errors, HTTP-level refusals.
OCSP_STATUSES = (
    "good",
    "revoked",
    "unknown",
    "several",
    "malformedRequest",
    "unauthorized",
    "tryLater",
    "internalError",
    "tooLarge",
    "unsupportedMediaType",
    "methodNotAllowed",
    "malformed",
)
#: PKCS#11 operations of ``hsmca_hsm_errors_total`` (ca/keys/pkcs11.py names them).
HSM_OPERATIONS = ("sign", "load", "generate", "attributes")
#: ACME order states (``hsmca_acme_orders`` reports each, 0 when there is none).
ACME_ORDER_STATES = ("pending", "ready", "processing", "valid", "invalid")
#: Buckets (seconds) of the age of served OCSP responses: minutes to the 10-day BR maximum.
_AGE_BUCKETS = (
    60,
    300,
    900,
    3600,
    3 * 3600,
    6 * 3600,
    12 * 3600,
    86400,
    2 * 86400,
    4 * 86400,
    7 * 86400,
    10 * 86400,
)
_HSM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_ISSUANCE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_JOB_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0)


class _Metrics:
    """This process's metric objects (see the module docstring for why they are lazy)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.issued = Counter(
            "hsmca_certificates_issued", "Certificates issued and stored", ["profile"]
        )
        self.denied = Counter(
            "hsmca_certificates_denied",
            "Certificate requests refused (audited as certificate.denied), by profile and reason "
            "(the first broken policy rule, or the error kind)",
            ["profile", "reason"],
        )
        self.revoked = Counter(
            "hsmca_certificates_revoked", "Certificates revoked, by RFC 5280 reason", ["reason"]
        )
        self.issuance = Histogram(
            "hsmca_issuance_duration_seconds",
            "Time from the policy check to the stored certificate, per issued certificate",
            buckets=_ISSUANCE_BUCKETS,
        )
        self.hsm_sign = Histogram(
            "hsmca_hsm_sign_duration_seconds",
            "Time of one signature in the HSM (PKCS#11 C_Sign, session wait included)",
            ["key_type"],
            buckets=_HSM_BUCKETS,
        )
        self.hsm_errors = Counter(
            "hsmca_hsm_errors",
            "PKCS#11 failures, by operation and kind (the PKCS#11 error, or sessionLost when a "
            "lost session was re-opened and the call retried)",
            ["operation", "kind"],
        )
        self.ocsp = Counter(
            "hsmca_ocsp_requests", "OCSP requests answered, by response status", ["status"]
        )
        self.ocsp_age = Histogram(
            "hsmca_ocsp_response_age_seconds",
            "Age (now - thisUpdate) of the pre-signed OCSP responses served",
            buckets=_AGE_BUCKETS,
        )
        self.job_runs = Counter("hsmca_scheduler_job_runs", "Scheduler job runs", ["job_name"])
        self.job_failures = Counter(
            "hsmca_scheduler_job_failures", "Scheduler job runs that failed", ["job_name"]
        )
        self.job_duration = Histogram(
            "hsmca_scheduler_job_duration_seconds",
            "Duration of scheduler job runs",
            ["job_name"],
            buckets=_JOB_BUCKETS,
        )
        # The OCSP fast path: label lookups done once, not per request.
        self.ocsp_children = {status: self.ocsp.labels(status) for status in OCSP_STATUSES}
        # Known series exist at 0 from the start, so rate() and alerts see the first error.
        for operation in HSM_OPERATIONS:
            self.hsm_errors.labels(operation, "unavailable")


_metrics: _Metrics | None = None
_lock = threading.Lock()
_warned = False


def _m() -> _Metrics:
    global _metrics
    current = _metrics
    if current is None:
        with _lock:
            if _metrics is None:
                _metrics = _Metrics()
            current = _metrics
    return current


def _failed() -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("metrics: a value could not be recorded", exc_info=True)


# --- what the core calls ------------------------------------------------------------------------


def certificate_issued(profile: str, count: int = 1) -> None:
    """``count`` certificates of ``profile`` were issued and stored."""
    try:
        _m().issued.labels(profile).inc(count)
    except Exception:
        _failed()


def certificate_denied(profile: str, reason: str) -> None:
    """A certificate request was refused; ``profile`` must be a configured one (or "other")."""
    try:
        _m().denied.labels(profile, reason).inc()
    except Exception:
        _failed()


def certificate_revoked(reason: str) -> None:
    """A certificate was revoked for ``reason`` (an RFC 5280 reason name)."""
    try:
        _m().revoked.labels(reason).inc()
    except Exception:
        _failed()


def issuance_took(seconds: float, count: int = 1) -> None:
    """``count`` certificates took ``seconds`` each from policy check to storage."""
    try:
        histogram = _m().issuance
        for _ in range(count):
            histogram.observe(seconds)
    except Exception:
        _failed()


def hsm_signed(key_type: str, seconds: float) -> None:
    """One HSM signature with a ``key_type`` ("ec", "rsa") key took ``seconds``."""
    try:
        _m().hsm_sign.labels(key_type).observe(seconds)
    except Exception:
        _failed()


def hsm_error(operation: str, kind: str) -> None:
    """A PKCS#11 call of ``operation`` failed with ``kind``."""
    try:
        _m().hsm_errors.labels(operation, kind).inc()
    except Exception:
        _failed()


def ocsp_answered(status: str, age_seconds: float | None = None) -> None:
    """An OCSP request ended with ``status``; ``age_seconds``: age of the response served.

    Tallied in memory and added to the metrics at most :data:`FLUSH_SECONDS` later (see
    :class:`_OcspTally`)."""
    try:
        tally = _tally
        if tally is None or tally.pid != os.getpid():
            tally = _new_tally()
        tally.add(status, age_seconds)
    except Exception:
        _failed()


#: The most an OCSP answer waits before a scrape sees it.
FLUSH_SECONDS = 1.0


class _OcspTally:
    """OCSP counts of this process in plain numbers, flushed to the metrics by a thread.

    OCSP answers from a per-worker cache take about 10 microseconds; a multiprocess counter and
    histogram cost 3 more (a lock and an mmap write per value). Counting under one lock here and
    adding the totals once a second keeps the per-request cost near 0.3 microseconds.
    """

    def __init__(self, m: _Metrics) -> None:
        self.pid = os.getpid()
        self._m = m
        self._lock = threading.Lock()
        self._bounds = [*_AGE_BUCKETS, float("inf")]
        self._status: dict[str, int] = {}
        self._buckets = [0] * len(self._bounds)
        self._sum = 0.0
        thread = threading.Thread(target=self._run, name="metrics-ocsp-flush", daemon=True)
        thread.start()

    def add(self, status: str, age: float | None) -> None:
        with self._lock:
            self._status[status] = self._status.get(status, 0) + 1
            if age is not None:
                self._buckets[bisect.bisect_left(self._bounds, age)] += 1
                self._sum += age

    def flush(self) -> None:
        with self._lock:
            status, buckets, total = self._status, self._buckets, self._sum
            self._status, self._buckets, self._sum = {}, [0] * len(self._bounds), 0.0
        m = self._m
        for name, n in status.items():
            child = m.ocsp_children.get(name)
            (child if child is not None else m.ocsp.labels("other")).inc(n)
        if any(buckets):
            # Histogram keeps one (non-cumulative) value per bucket and the sum; adding n
            # observations at once is what observe() does n times.
            histogram: Any = m.ocsp_age
            for i, n in enumerate(buckets):
                if n:
                    histogram._buckets[i].inc(n)
            histogram._sum.inc(total)

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            try:
                self.flush()
            except Exception:
                _failed()


_tally: _OcspTally | None = None


def _new_tally() -> _OcspTally:
    global _tally
    m = _m()  # outside the lock: _m() takes it too
    with _lock:
        if _tally is None or _tally.pid != os.getpid():  # none yet, or inherited over a fork
            _tally = _OcspTally(m)
        return _tally


def flush() -> None:
    """Add this process's pending OCSP tallies to the metrics now (scrape, exit)."""
    tally = _tally
    if tally is not None and tally.pid == os.getpid():
        try:
            tally.flush()
        except Exception:
            _failed()


atexit.register(flush)


def job_ran(job: str, ok: bool, seconds: float) -> None:
    """Scheduler job ``job`` ran for ``seconds`` and succeeded (``ok``) or failed."""
    try:
        m = _m()
        m.job_runs.labels(job).inc()
        m.job_failures.labels(job).inc(0 if ok else 1)  # the series exists from the first run
        m.job_duration.labels(job).observe(seconds)
    except Exception:
        _failed()


# --- the multiprocess directory -----------------------------------------------------------------


def prepare_multiproc_dir(path: Path) -> Path:
    """Empty (or make) ``path`` and point ``PROMETHEUS_MULTIPROC_DIR`` at it, for this process
    and its children. Call once, at start, before any worker exists: files of a previous run
    would otherwise be summed into this one's counters."""
    path = path.resolve()
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise OSError(f"{path} is not a directory")
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, mode=0o700)
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def mark_process_dead(pid: int) -> None:
    """Drop the live-gauge files of a process that exited (gunicorn ``child_exit``)."""
    if not os.environ.get(MULTIPROC_ENV):
        return
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
    except Exception:
        _failed()


# --- the scrape -----------------------------------------------------------------------------------


class DatabaseCollector:
    """Gauges read from the database at scrape time, cached ``ttl`` seconds (see module doc)."""

    def __init__(
        self,
        read: Callable[[], Snapshot],
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, Snapshot | None] | None = None

    def snapshot(self) -> Snapshot | None:
        """The cached snapshot, read again when older than ``ttl``; None if the read failed."""
        with self._lock:
            cached = self._cached
            if cached is not None and self._clock() - cached[0] < self._ttl:
                return cached[1]
            try:
                snap: Snapshot | None = self._read()
            except Exception as exc:  # the scrape still answers, saying the database is down
                log.warning("metrics: the database could not be read: %s", exc)
                snap = None
            self._cached = (self._clock(), snap)
            return snap

    def collect(self) -> Iterator[Any]:
        """prometheus_client's Collector protocol."""
        yield from families(self.snapshot())


def families(snap: Snapshot | None) -> Iterator[Any]:
    """The metric families of a database snapshot (``hsmca_database_up`` 0 when None)."""
    from prometheus_client.core import GaugeMetricFamily

    up = GaugeMetricFamily(
        "hsmca_database_up", "Whether the last read of the database-derived metrics succeeded"
    )
    up.add_metric([], 0.0 if snap is None else 1.0)
    yield up
    if snap is None:
        return
    now = snap.taken_at.timestamp()
    crl_age = GaugeMetricFamily(
        "hsmca_crl_age_seconds",
        "Seconds since thisUpdate of the current CRL",
        labels=["ca", "shard"],
    )
    crl_next = GaugeMetricFamily(
        "hsmca_crl_next_update_timestamp_seconds",
        "nextUpdate of the current CRL (Unix time)",
        labels=["ca", "shard"],
    )
    crl_size = GaugeMetricFamily(
        "hsmca_crl_size_bytes", "Size of the current CRL (DER)", labels=["ca", "shard"]
    )
    for crl in snap.crls:
        labels = [crl.ca, str(crl.shard)]
        crl_age.add_metric(labels, now - crl.this_update.timestamp())
        crl_next.add_metric(labels, crl.next_update.timestamp())
        crl_size.add_metric(labels, float(crl.size_bytes))
    yield from (crl_age, crl_next, crl_size)

    responder = GaugeMetricFamily(
        "hsmca_ocsp_responder_expiry_timestamp_seconds",
        "notAfter of the current OCSP responder certificate of each CA (Unix time)",
        labels=["ca"],
    )
    for r in snap.responders:
        responder.add_metric([r.ca], r.not_after.timestamp())
    yield responder
    stale = GaugeMetricFamily(
        "hsmca_ocsp_stale_responses",
        "Pre-signed OCSP responses of unexpired certificates that are past nextUpdate",
    )
    stale.add_metric([], float(snap.stale_ocsp_responses))
    yield stale

    expiring = GaugeMetricFamily(
        "hsmca_certificates_expiring",
        "Unrevoked, unexpired certificates whose notAfter is within the given number of days",
        labels=["profile", "days"],
    )
    soonest = GaugeMetricFamily(
        "hsmca_certificates_soonest_expiry_timestamp_seconds",
        "The earliest notAfter of the unrevoked, unexpired certificates of a profile (Unix time)",
        labels=["profile"],
    )
    for e in snap.expiry:
        for days, count in e.within.items():
            expiring.add_metric([e.profile, str(days)], float(count))
        if e.soonest is not None:
            soonest.add_metric([e.profile], e.soonest.timestamp())
    yield from (expiring, soonest)

    orders = GaugeMetricFamily("hsmca_acme_orders", "ACME orders by state", labels=["state"])
    counts = {state: 0 for state in ACME_ORDER_STATES} | dict(snap.acme_orders)
    for state, count in counts.items():
        orders.add_metric([state], float(count))
    yield orders

    audit = snap.audit
    head = GaugeMetricFamily("hsmca_audit_chain_head_seq", "Sequence number of the newest event")
    head.add_metric([], float(audit.head_seq))
    yield head
    checkpoint = GaugeMetricFamily(
        "hsmca_audit_checkpoint_seq", "Sequence number the newest signed checkpoint covers"
    )
    checkpoint.add_metric([], float(audit.checkpoint_seq))
    yield checkpoint
    since = GaugeMetricFamily(
        "hsmca_audit_seconds_since_checkpoint",
        "Seconds since the newest signed checkpoint (since the first event when there is none)",
    )
    since.add_metric([], audit.seconds_since_checkpoint(snap.taken_at))
    yield since
    interval = GaugeMetricFamily(
        "hsmca_audit_checkpoint_interval_seconds",
        "[audit] checkpoint_every_seconds: how often a checkpoint is due while events come",
    )
    interval.add_metric([], float(audit.interval_seconds))
    yield interval


class _Default:
    """This process's own metrics, for a scrape outside multiprocess mode."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client import REGISTRY

        _m()  # the metric families exist (at zero) from the first scrape on
        yield from REGISTRY.collect()


def exposition(extra: Iterable[Any] = (), accept: str = "") -> tuple[bytes, str]:
    """The body and content type of a scrape: every process's metrics when in multiprocess mode
    (else this process's), plus ``extra`` collectors."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    flush()
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Default())
    for collector in extra:
        registry.register(collector)
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
