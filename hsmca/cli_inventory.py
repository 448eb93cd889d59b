"""``hsmca cert list``: the certificate inventory, filtered, as JSON lines or bare serials."""

from __future__ import annotations

import json
from datetime import timedelta

import click

from ca.store.db import CertificateFilter, CertificateRow
from hsmca.cli import Ctx, cert, handle_errors, pass_ctx

_PAGE = 1000


@cert.command("list")
@click.option("--status", type=click.Choice(["issued", "revoked"]), help="Only this status.")
@click.option("--issuer", help="Only certificates issued by this CA.")
@click.option("--profile", help="Only this profile.")
@click.option("--requester", help="Only this requester (API client, ACME's bound client, …).")
@click.option("--owner", help="Only this owner (enrollment metadata).")
@click.option("--name", help="A SAN or subject containing this text.")
@click.option(
    "--expiring-within",
    type=click.IntRange(0, 36525),
    metavar="DAYS",
    help="Only unexpired certificates whose notAfter is within DAYS days.",
)
@click.option("--serials", "serials_only", is_flag=True, help="Print only the serials.")
@pass_ctx
@handle_errors
def cert_list(
    c: Ctx,
    status: str | None,
    issuer: str | None,
    profile: str | None,
    requester: str | None,
    owner: str | None,
    name: str | None,
    expiring_within: int | None,
    serials_only: bool,
) -> None:
    """List issued certificates, oldest first, one JSON object per line.

    With --serials the output feeds 'hsmca revoke --serials-file -', e.g. every certificate a
    compromised CA issued: hsmca cert list --issuer payments --status issued --serials.
    """
    auth = c.auth
    now = auth.now()
    flt = CertificateFilter(
        status=status,
        profile=profile,
        issuer=issuer,
        name=name,
        owner=owner,
        requester=requester,
        expiring_before=None if expiring_within is None else now + timedelta(days=expiring_within),
        now=None if expiring_within is None else now,
    )
    after = 0
    while True:
        rows = auth.db.find_certificates(flt, after_id=after, limit=_PAGE)
        for row in rows:
            click.echo(row.serial if serials_only else json.dumps(_summary(row)))
        if len(rows) < _PAGE:
            return
        after = rows[-1].id


def _summary(row: CertificateRow) -> dict[str, object]:
    out: dict[str, object] = {
        "serial": row.serial,
        "issuer": row.issuer_name,
        "subject": row.subject,
        "sans": row.sans,
        "profile": row.profile,
        "requester": row.requester,
        "owner": row.owner,
        "status": row.status,
        "not_after": f"{row.not_after:%Y-%m-%dT%H:%M:%SZ}",
    }
    if row.revoked_at is not None:
        out["revoked_at"] = f"{row.revoked_at:%Y-%m-%dT%H:%M:%SZ}"
    return out
