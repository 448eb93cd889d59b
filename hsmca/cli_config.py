"""``hsmca config check|reference``: validate the configuration, print its reference."""

from __future__ import annotations

from pathlib import Path

import click

from hsmca.cli import Ctx, handle_errors, main, pass_ctx


@main.group()
def config() -> None:
    """Check the configuration file and print the reference of every setting."""


@config.command("check")
@pass_ctx
@handle_errors
def config_check(c: Ctx) -> None:
    """Load hsmca.toml (and HSMCA_* overrides) strictly; exit 1 naming the first bad key.

    \b
    Example: hsmca config check && systemctl restart hsmca
    """
    cfg = c.config
    profiles = ", ".join(sorted(cfg.profiles)) or "none"
    click.echo(f"{c.data_dir / 'hsmca.toml'}: ok (profiles: {profiles})")


@config.command("reference")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the Markdown here instead of standard output.",
)
def config_reference(out: Path | None) -> None:
    """Print every section and key with its type, default, bounds and meaning (Markdown).

    This is how docs/config-reference.md is made: hsmca config reference --out docs/config-reference.md
    """
    from ca.config_reference import render_reference

    text = render_reference()
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
