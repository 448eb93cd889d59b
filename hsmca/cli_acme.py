"""``hsmca acme eab create|list|revoke`` and ``hsmca acme accounts``: external account binding
keys (RFC 8555 §7.3.4) for API clients, and the ACME accounts."""

from __future__ import annotations

from datetime import datetime

import click

from ca.acme.eab import create_key, key_state, revoke_key
from ca.store import acme as store
from hsmca.cli import Ctx, _actor, handle_errors, main, pass_ctx


def _time(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else "-"


@main.group()
def acme() -> None:
    """The ACME server: external account binding keys and accounts."""


@acme.group()
def eab() -> None:
    """External account binding keys: an ACME account made with one acts as its API client."""


@eab.command("create")
@click.option(
    "--client", "client", required=True, help="The API client (hsmca client list) to bind to."
)
@pass_ctx
@handle_errors
def eab_create(c: Ctx, client: str) -> None:
    """Make a single-use EAB key for CLIENT and print its key id and HMAC key.

    The ACME account registered with the key acts as the client: its roles, profiles and name
    rules apply to every order. The key expires after [acme] eab_key_lifetime_hours if unused.

    \b
    Example:
      hsmca client add payments --role enroll --names '.payments.internal'
      hsmca acme eab create --client payments
      certbot register --server https://ca.example/acme/directory \\
          --eab-kid KEY_ID --eab-hmac-key HMAC_KEY
    """
    key, hmac_key = create_key(c.auth, client, _actor())
    click.echo(f"key id:   {key.key_id}")
    click.echo(f"hmac key: {hmac_key}")
    click.echo(
        f"EAB key for client {key.client!r} created, single use, expires {_time(key.expires)}. "
        "Hand both values to the client's ACME client only (certbot --eab-kid/--eab-hmac-key, "
        "lego --eab --kid/--hmac).",
        err=True,
    )


@eab.command("list")
@pass_ctx
@handle_errors
def eab_list(c: Ctx) -> None:
    """List EAB keys: key id, client, created, expires, state (never the HMAC keys)."""
    now = c.auth.now()
    click.echo(f"{'KEY ID':<26} {'CLIENT':<20} {'CREATED':<21} {'EXPIRES':<21} STATE")
    for key in store.list_eab_keys(c.auth.db):
        click.echo(
            f"{key.key_id:<26} {key.client:<20} {_time(key.created_at):<21} "
            f"{_time(key.expires):<21} {key_state(key, now)}"
        )


@eab.command("revoke")
@click.argument("key_id")
@pass_ctx
@handle_errors
def eab_revoke(c: Ctx, key_id: str) -> None:
    """Delete the unused EAB key KEY_ID, so that it binds no account."""
    key = revoke_key(c.auth, key_id, _actor())
    click.echo(f"EAB key {key.key_id} (client {key.client!r}) revoked", err=True)


@acme.command("accounts")
@pass_ctx
@handle_errors
def acme_accounts(c: Ctx) -> None:
    """List ACME accounts: id, status, bound API client, created, contacts."""
    click.echo(f"{'ID':<8} {'STATUS':<12} {'CLIENT':<20} {'CREATED':<21} CONTACT")
    for account in store.list_accounts(c.auth.db):
        click.echo(
            f"{account.id:<8} {account.status:<12} {account.requester or '-':<20} "
            f"{_time(account.created_at):<21} {','.join(account.contact) or '-'}"
        )
