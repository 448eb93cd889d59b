"""``hsmca scheduler run|run-once|jobs``: scheduled work (CRLs, OCSP, recovery, expiries)."""

from __future__ import annotations

import logging
import threading
from datetime import UTC

import click

from hsmca.cli import Ctx, _fail, handle_errors, main, pass_ctx


@main.group()
def scheduler() -> None:
    """Run scheduled jobs (one active scheduler per installation; others stand by)."""


@scheduler.command("jobs")
@pass_ctx
@handle_errors
def scheduler_jobs(c: Ctx) -> None:
    """List the jobs and how often they run."""
    from hsmca.scheduler import jobs

    click.echo(f"{'JOB':<24} EVERY")
    for job in jobs(c.config):
        click.echo(f"{job.name:<24} {int(job.every.total_seconds())} s")


@scheduler.command("status")
@pass_ctx
@handle_errors
def scheduler_status(c: Ctx) -> None:
    """Say which scheduler is active (exit status 1 when none is)."""
    from hsmca.scheduler import lock_file_held, lock_holder

    auth = c.auth
    if auth.db.is_sqlite:
        if lock_file_held(auth):
            click.echo(f"active: a scheduler holds {auth.config.data_dir / 'scheduler.lock'}")
            return
        _fail("no scheduler is active")
        return
    holder = lock_holder(auth)
    if holder is None:
        _fail("no scheduler is active")
        return
    since = holder.since.astimezone(UTC)
    click.echo(
        f"active: {holder.name or 'unnamed session'} from {holder.client} "
        f"(its database session since {since:%Y-%m-%d %H:%M:%S}Z)"
    )


@scheduler.command("run")
@pass_ctx
@handle_errors
def scheduler_run(c: Ctx) -> None:
    """Run the scheduler in the foreground until SIGTERM or ^C."""
    from hsmca.scheduler import _signals_stop, run

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s scheduler %(levelname)s %(message)s"
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    stop = threading.Event()
    with _signals_stop(stop):
        run(c.config, stop)


@scheduler.command("run-once")
@click.option("--job", "names", multiple=True, help="Run only this job (repeatable).")
@pass_ctx
@handle_errors
def scheduler_run_once(c: Ctx, names: tuple[str, ...]) -> None:
    """Run every job once now, in order (for cron or after a restore)."""
    from hsmca.scheduler import jobs, run_all_once

    known = {j.name for j in jobs(c.config)}
    unknown = [n for n in names if n not in known]
    if unknown:
        _fail(f"unknown job(s) {', '.join(unknown)} (have {', '.join(sorted(known))})")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    results = run_all_once(c.auth, names)
    for name, ok in results.items():
        click.echo(f"{name}: {'ok' if ok else 'FAILED (see the log above)'}")
    if not all(results.values()):
        _fail("some jobs failed")
