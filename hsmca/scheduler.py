"""Scheduled work: each job is a ``run_once(auth, now)`` of the core, run by APScheduler here.

Only one scheduler is active per installation, whatever the number of nodes: it first takes the
scheduler lock (``flock`` on a file beside the SQLite database; a session-level advisory lock on
PostgreSQL) and waits as a standby until it gets it, trying every ``[scheduler]
standby_poll_seconds``. The active one checks as often that its lock's database session is still
alive: if it is not, the lock is gone (a standby may hold it already), so it stops its jobs and
stands by. Jobs never run inside gunicorn workers. docs/scaling.md has the several-node picture.

``python -m hsmca.scheduler`` is what ``hsmca serve`` starts beside gunicorn; ``hsmca scheduler
run`` runs it in the foreground and ``hsmca scheduler run-once`` runs every job once (cron, tests).
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from ca import metrics
from ca.authority import Authority
from ca.config import AppConfig, load_config
from ca.errors import CAError

log = logging.getLogger("hsmca.scheduler")

_LOCK_KEY = 0x6873_6D63_6101  # "hsmca" + 1: the PostgreSQL advisory lock of the scheduler


@dataclass(frozen=True)
class Job:
    """A job: its name, how often it runs, and the core function it calls."""

    name: str
    every: timedelta
    run: Callable[[Authority, datetime], object]


def _recover_intents(auth: Authority, now: datetime) -> object:
    from ca.issuance import recover_intents

    return recover_intents(auth, older_than=timedelta(seconds=60))


def _expire_requests(auth: Authority, now: datetime) -> object:
    from ca.enrollment import expire_requests

    return expire_requests(auth, now)


def _acme_recover(auth: Authority, now: datetime) -> object:
    from ca.acme.recovery import run_once

    return run_once(auth, now)


def _publish_crls(auth: Authority, now: datetime) -> object:
    from crl.publisher import run_once

    return run_once(auth, now)


def _ocsp_responders(auth: Authority, now: datetime) -> object:
    from ocsp.responders import run_once

    return run_once(auth, now)


def _ocsp_presign(auth: Authority, now: datetime) -> object:
    from ocsp.presign import run_once

    return run_once(auth, now)


def _audit_checkpoint(auth: Authority, now: datetime) -> object:
    from ca.checkpoints import run_once

    return run_once(auth, now)


def _expiry_notices(auth: Authority, now: datetime) -> object:
    from ca.notices_job import run_once

    return run_once(auth, now)


def jobs(config: AppConfig) -> list[Job]:
    """Every scheduled job of an installation.

    The CRL job runs often but publishes only what is due (missing, old, or a revocation
    older than ``[crl] revocation_delay_seconds``), so its interval bounds that delay.
    """
    crl_every = max(5, min(60, config.crl.revocation_delay_seconds // 2 or 5))
    return [
        Job("recover-intents", timedelta(seconds=60), _recover_intents),
        Job("expire-requests", timedelta(seconds=60), _expire_requests),
        Job("acme-recover", timedelta(seconds=30), _acme_recover),
        Job("ocsp-responders", timedelta(hours=1), _ocsp_responders),
        Job("ocsp-presign", timedelta(minutes=5), _ocsp_presign),
        Job("publish-crls", timedelta(seconds=crl_every), _publish_crls),
        # Signs only when due ([audit] checkpoint_every_events / _seconds); cheap otherwise.
        Job("audit-checkpoint", timedelta(seconds=5), _audit_checkpoint),
        # Does nothing unless [notices] enabled; sends each (certificate, window) once.
        Job("expiry-notices", timedelta(minutes=config.notices.every_minutes), _expiry_notices),
    ]


def run_job(auth: Authority, job: Job) -> bool:
    """Run one job now; failures are logged, never raised (the next run tries again)."""
    started = time.monotonic()
    try:
        result = job.run(auth, auth.now())
    except CAError as exc:
        log.warning("job %s failed: %s: %s", job.name, exc.kind, exc)
        metrics.job_ran(job.name, False, time.monotonic() - started)
        return False
    except Exception:
        log.exception("job %s failed", job.name)
        metrics.job_ran(job.name, False, time.monotonic() - started)
        return False
    took = time.monotonic() - started
    # A run that carried on past errors of some CAs (a report's ``errors``) failed for them.
    metrics.job_ran(job.name, not getattr(result, "errors", None), took)
    if isinstance(result, (list, tuple, set, dict)) and result:
        log.info("job %s: %d item(s) in %.2f s", job.name, len(result), took)
    return True


def run_all_once(auth: Authority, names: Sequence[str] = ()) -> dict[str, bool]:
    """Run every job (or those named) once, in order; returns job name → success."""
    chosen = [j for j in jobs(auth.config) if not names or j.name in names]
    return {job.name: run_job(auth, job) for job in chosen}


class SchedulerLock:
    """The single-active-scheduler lock (see the module docstring).

    On PostgreSQL the lock is a property of one database session: if that session ends (the
    connection broke, the server restarted, an administrator terminated the backend) the lock
    is gone and a standby elsewhere may already hold it. :meth:`held` asks the session.
    """

    def __init__(self, auth: Authority) -> None:
        self.auth = auth
        self._fd: int | None = None
        self._conn: Any = None
        self._mutex = threading.Lock()  # job threads and the watchdog share the lock's session
        self._warned = False

    def try_acquire(self) -> bool:
        """Take the lock if it is free; False if another scheduler holds it or the database is
        unreachable (a standby keeps trying)."""
        if self.auth.db.is_sqlite:
            path = self.auth.config.data_dir / "scheduler.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            self._fd = fd
            return True
        try:
            conn = self.auth.db.engine.connect()
        except SQLAlchemyError as exc:
            self._unreachable(exc)
            return False
        try:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _LOCK_KEY}).scalar()
            if got:  # who holds it, for pg_stat_activity and `hsmca scheduler status`
                conn.execute(
                    text("SELECT set_config('application_name', :n, false)"), {"n": holder_name()}
                )
            conn.commit()
        except SQLAlchemyError as exc:
            self._unreachable(exc)
            conn.invalidate()
            conn.close()
            return False
        self._warned = False
        if got:
            self._conn = conn  # the lock lives as long as this session
            return True
        conn.close()
        return False

    def _unreachable(self, exc: SQLAlchemyError) -> None:
        # Once per outage: a standby retries every few seconds.
        if not self._warned:
            log.warning("scheduler lock: database unreachable: %s", _first_line(exc))
            self._warned = True

    def held(self) -> bool:
        """Whether this scheduler still holds the lock (PostgreSQL: its session is alive and
        still owns the advisory lock). A flock on a local file cannot be lost."""
        if self._fd is not None:
            return True
        with self._mutex:
            if self._conn is None:
                return False
            try:
                owned = self._conn.execute(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                        " AND pid = pg_backend_pid() AND granted"
                        " AND ((classid::bigint << 32) | objid::bigint) = :k"
                    ),
                    {"k": _LOCK_KEY},
                ).scalar()
                self._conn.commit()
            except SQLAlchemyError as exc:
                log.error("scheduler lock: its database session is gone: %s", _first_line(exc))
                self._drop()
                return False
            if not owned:
                log.error("scheduler lock: no longer held by this session")
                self._drop()
                return False
            return True

    def _drop(self) -> None:
        try:
            # Pooled connections outlive close(): end the session so the lock goes with it.
            self._conn.invalidate()
            self._conn.close()
        except SQLAlchemyError:
            pass
        self._conn = None

    def release(self) -> None:
        """Give the lock up (the file lock closed; the PostgreSQL session ended)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with self._mutex:
            if self._conn is not None:
                self._drop()


def holder_name() -> str:
    """How the active scheduler names itself (PostgreSQL ``application_name``, at most 63 bytes)."""
    return f"hsmca-scheduler {socket.gethostname()} pid {os.getpid()}"[:63]


@dataclass(frozen=True)
class LockHolder:
    """The active scheduler as the database sees it."""

    name: str
    client: str
    since: datetime


def lock_holder(auth: Authority) -> LockHolder | None:
    """Who holds the scheduler lock on PostgreSQL (None: nobody, every scheduler stands by or
    none runs). SQLite has one node: see :func:`lock_file_held`."""
    with auth.db.read() as conn:
        row = conn.execute(
            text(
                "SELECT a.application_name, coalesce(host(a.client_addr), 'local'),"
                " a.backend_start FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted"
                # Advisory locks belong to one database; a cluster may hold several installations.
                " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND ((l.classid::bigint << 32) | l.objid::bigint) = :k"
            ),
            {"k": _LOCK_KEY},
        ).first()
    return None if row is None else LockHolder(str(row[0]), str(row[1]), row[2])


def lock_file_held(auth: Authority) -> bool:
    """Whether a scheduler holds the SQLite installation's lock file now."""
    path = auth.config.data_dir / "scheduler.lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # (closing also drops the lock this check may have taken)
    return False


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@contextmanager
def _signals_stop(stop: threading.Event) -> Iterator[None]:
    def handler(_signo: int, _frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run(config: AppConfig, stop: threading.Event) -> int:
    """Take the scheduler lock (waiting as a standby), then run the jobs until ``stop`` is set.

    Every ``[scheduler] standby_poll_seconds`` a standby tries the lock and the active scheduler
    checks it still holds it; one that lost it (its database session ended) stops its jobs and
    stands by again, since a standby elsewhere may already be running them.
    """
    poll = config.scheduler.standby_poll_seconds
    auth = Authority.from_config(config)
    try:
        while not stop.is_set():
            lock = SchedulerLock(auth)
            if not _stand_by(lock, stop, poll):
                break
            _run_active(auth, lock, stop, poll)
    finally:
        auth.db.dispose()
    return 0


def _stand_by(lock: SchedulerLock, stop: threading.Event, poll: float) -> bool:
    """Wait until ``lock`` is ours (True) or ``stop`` is set (False)."""
    announced = False
    while not lock.try_acquire():
        if not announced:
            log.info("another scheduler is active; standing by (trying every %g s)", poll)
            announced = True
        if stop.wait(poll):
            return False
    return True


def _run_active(auth: Authority, lock: SchedulerLock, stop: threading.Event, poll: float) -> None:
    """Run the jobs while ``lock`` is held and ``stop`` is not set."""
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    def guarded(job: Job) -> bool:
        # Checked before each run too: no job starts once the loss of the lock is visible.
        return run_job(auth, job) if lock.held() else False

    log.info("scheduler active: %s", ", ".join(j.name for j in jobs(auth.config)))
    scheduler = BackgroundScheduler(timezone="UTC")
    for job in jobs(auth.config):
        scheduler.add_job(
            guarded,
            IntervalTrigger(seconds=job.every.total_seconds()),
            args=(job,),
            id=job.name,
            coalesce=True,
            max_instances=1,
            next_run_time=datetime.now().astimezone(),  # once at start, then on the interval
        )
    scheduler.start()
    try:
        while not stop.wait(poll):
            if not lock.held():
                log.error("scheduler lock lost: stopping the jobs and standing by")
                break
    finally:
        scheduler.shutdown(wait=True)
        lock.release()


def _exit_when_stdin_closes(stop: threading.Event) -> None:
    """Under ``hsmca serve`` stdin is a pipe from the parent: EOF means the parent is gone."""

    def watch() -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        stop.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


@dataclass
class SchedulerChild:
    """The scheduler process ``hsmca serve`` runs beside gunicorn."""

    process: subprocess.Popen[bytes]

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()
        metrics.mark_process_dead(self.process.pid)


def start_child() -> SchedulerChild:
    """Start ``python -m hsmca.scheduler`` (configuration from HSMCA_HOME, as the servers)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "hsmca.scheduler", "--parent-pipe"],
        stdin=subprocess.PIPE,  # never written: its EOF tells the child this process is gone
        process_group=0,  # ^C reaches hsmca serve, which stops the scheduler in order
    )
    return SchedulerChild(process)


def main() -> int:
    """``python -m hsmca.scheduler`` (started by ``hsmca serve``; configuration from HSMCA_HOME)."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s scheduler %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    stop = threading.Event()
    if "--parent-pipe" in sys.argv:
        _exit_when_stdin_closes(stop)
    try:
        config = load_config(Path(os.environ.get("HSMCA_HOME", ".")))
    except CAError as exc:
        print(f"hsmca: error: {exc}", file=sys.stderr)
        return 1
    with _signals_stop(stop):
        return run(config, stop)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
