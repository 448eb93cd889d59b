"""``hsmca client add|list|rotate|disable``: the REST API's clients and their bearer tokens."""

from __future__ import annotations

import click

from ca.clients import create_client, disable_client, rotate_token
from ca.policy import ROLES
from hsmca.cli import Ctx, _actor, handle_errors, main, pass_ctx


def _split(values: tuple[str, ...]) -> list[str]:
    """Repeatable options that also accept comma-separated lists."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


@main.group()
def client() -> None:
    """Manage REST API clients (requesters) and their bearer tokens."""


@client.command("add")
@click.argument("name")
@click.option(
    "--role",
    "roles",
    multiple=True,
    required=True,
    help=f"Role, repeatable or comma-separated: {', '.join(ROLES)}.",
)
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    help="Profile the client may use (repeatable). Default: every profile.",
)
@click.option(
    "--names",
    "names",
    multiple=True,
    help="Own name restriction (repeatable): host.example, .suffix, *.one-label, CIDR, URI or "
    "email pattern. Default: only the profile's rules apply.",
)
@pass_ctx
@handle_errors
def client_add(
    c: Ctx, name: str, roles: tuple[str, ...], profiles: tuple[str, ...], names: tuple[str, ...]
) -> None:
    """Create client NAME and print its bearer token (shown only this once).

    \b
    Example:
      hsmca client add payments --role enroll --profile server --names '*.payments.internal'
    """
    row, token = create_client(
        c.auth, name, _split(roles), _split(profiles), _split(names), _actor()
    )
    click.echo(token)
    click.echo(
        f"client {row.name!r} created (roles: {', '.join(row.roles)}). The token above is shown "
        "once and only its hash is stored: keep it in a secret store.",
        err=True,
    )


@client.command("list")
@pass_ctx
@handle_errors
def client_list(c: Ctx) -> None:
    """List clients: name, state, roles, profiles, name rules."""
    rows = c.auth.db.list_clients()
    click.echo(f"{'NAME':<20} {'STATE':<9} {'ROLES':<24} {'PROFILES':<20} NAMES")
    for r in rows:
        state = "disabled" if r.disabled else "active"
        click.echo(
            f"{r.name:<20} {state:<9} {','.join(r.roles):<24} "
            f"{','.join(r.profiles) or '*':<20} {','.join(r.names) or '(profile rules)'}"
        )


@client.command("rotate")
@click.argument("name")
@pass_ctx
@handle_errors
def client_rotate(c: Ctx, name: str) -> None:
    """Give client NAME a new bearer token and print it (shown only this once).

    The old token stops working (within 5 s on running servers); roles, profiles and name
    rules stay as they are. Audited as client.token_rotated.
    """
    token = rotate_token(c.auth, name, _actor())
    click.echo(token)
    click.echo(
        f"client {name!r} has a new token; the old one no longer works. The token above is "
        "shown once: keep it in a secret store.",
        err=True,
    )


@client.command("disable")
@click.argument("name")
@pass_ctx
@handle_errors
def client_disable(c: Ctx, name: str) -> None:
    """Disable client NAME: its token stops working (within 5 s on running servers)."""
    disable_client(c.auth, name, _actor())
    click.echo(f"client {name!r} disabled", err=True)
