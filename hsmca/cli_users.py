"""``hsmca user add|list|disable|passwd``: local users of the compliance view (``/ui``).

Passwords never travel in argv: they are typed twice at a hidden prompt, read from standard
input when it is not a terminal (one line), or read from ``--password-file`` (mode 0600).
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import click

from ca.errors import BadRequest, Conflict, NotFound
from ca.store.ui import get_user, list_users
from ca.users import ROLES, add_user, change_password, check_name, disable_user
from hsmca.cli import Ctx, _actor, handle_errors, main, pass_ctx

_PASSWORD_FILE = click.option(
    "--password-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Read the password from this file (mode 0600; the first line). Default: a hidden "
    "prompt, or standard input when it is not a terminal.",
)


def read_password(password_file: Path | None) -> str:
    """The new password from the file, the terminal (typed twice) or standard input."""
    if password_file is not None:
        return _from_file(password_file)
    if sys.stdin.isatty():
        value: str = click.prompt(
            "Password", hide_input=True, confirmation_prompt="Repeat the password"
        )
        return value
    line = sys.stdin.readline()
    if not line:
        raise BadRequest("no password on standard input")
    return line.rstrip("\r\n")


def _from_file(path: Path) -> str:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise BadRequest(f"password file {path} does not exist") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BadRequest(
            f"password file {path} must have mode 0600 (it is {stat.S_IMODE(st.st_mode):04o})"
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0]:
        raise BadRequest(f"password file {path} is empty")
    return lines[0]


@main.group()
def user() -> None:
    """Manage users of the compliance view (/ui)."""


@user.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES), help="auditor or operator.")
@_PASSWORD_FILE
@pass_ctx
@handle_errors
def user_add(c: Ctx, name: str, role: str, password_file: Path | None) -> None:
    """Create user NAME for the compliance view.

    \b
    Example:
      hsmca user add alice --role auditor            (prompts for the password twice)
      hsmca user add bob --role operator --password-file bob.pw
    """
    check_name(name)
    if get_user(c.auth.db, name) is not None:  # before asking for a password in vain
        raise Conflict(f"a user named {name!r} exists already")
    row = add_user(c.auth, name, role, read_password(password_file), _actor())
    click.echo(f"user {row.name!r} added (role: {row.role})", err=True)


@user.command("list")
@pass_ctx
@handle_errors
def user_list(c: Ctx) -> None:
    """List users: name, role, state, created, last sign-in."""
    rows = list_users(c.auth.db)
    click.echo(f"{'NAME':<24} {'ROLE':<9} {'STATE':<9} {'CREATED':<21} LAST SIGN-IN")
    for r in rows:
        state = "disabled" if r.disabled else "active"
        last = f"{r.last_login_at:%Y-%m-%dT%H:%M:%SZ}" if r.last_login_at else "never"
        click.echo(f"{r.name:<24} {r.role:<9} {state:<9} {r.created_at:%Y-%m-%dT%H:%M:%SZ}  {last}")


@user.command("disable")
@click.argument("name")
@pass_ctx
@handle_errors
def user_disable(c: Ctx, name: str) -> None:
    """Disable user NAME: no more sign-ins; open sessions end at their next request."""
    disable_user(c.auth, name, _actor())
    click.echo(f"user {name!r} disabled", err=True)


@user.command("passwd")
@click.argument("name")
@_PASSWORD_FILE
@pass_ctx
@handle_errors
def user_passwd(c: Ctx, name: str, password_file: Path | None) -> None:
    """Set a new password for user NAME (its open sessions end)."""
    if get_user(c.auth.db, name) is None:  # before asking for a password in vain
        raise NotFound(f"no user named {name!r}")
    change_password(c.auth, name, read_password(password_file), _actor())
    click.echo(f"password of user {name!r} changed", err=True)
