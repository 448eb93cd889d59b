"""``hsmca notices preview``: the expiry notices the next run would send (nothing is sent)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click

from hsmca.cli import Ctx, _fail, handle_errors, main, pass_ctx


@main.group()
def notices() -> None:
    """Expiry notices to certificate owners (webhook, e-mail)."""


@notices.command("preview")
@click.option(
    "--at",
    "at",
    default="",
    help="Evaluate at this UTC time (e.g. 2027-01-31T00:00:00Z) instead of now.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per notice.")
@pass_ctx
@handle_errors
def notices_preview(c: Ctx, at: str, as_json: bool) -> None:
    """List the notices due (owner, window, channel, destination, serials); sends nothing.

    Works whether or not [notices] enabled is set, so a configuration can be checked first.
    """
    from ca.notices_job import _destination, collect

    now = c.auth.now()
    if at:
        try:
            now = datetime.fromisoformat(at.replace("Z", "+00:00"))
        except ValueError:
            _fail(f"--at {at!r} is not an ISO 8601 time")
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
    plan = collect(c.auth, now)
    if not c.config.notices.enabled and not as_json:
        click.echo("([notices] enabled is false: the scheduler sends none of these)", err=True)
    for notice in plan.notices:
        destination = _destination(notice)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "notice_id": notice.notice_id,
                        "owner": notice.owner,
                        "window_days": notice.window.days,
                        "channel": notice.channel,
                        "destination": destination,
                        "serials": notice.serials,
                    },
                    sort_keys=True,
                )
            )
            continue
        shown = ", ".join(destination) if isinstance(destination, list) else destination
        click.echo(
            f"{notice.owner}  {notice.window.days}d  {notice.channel}  {shown or '-'}  "
            f"{len(notice.certificates)} certificate(s): {' '.join(notice.serials)}"
        )
    if not plan.notices and not as_json:
        click.echo("no notices due")
