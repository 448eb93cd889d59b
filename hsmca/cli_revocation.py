"""``hsmca revoke``, ``hsmca ca revoke`` and ``hsmca crl generate|list``: revocation and CRLs."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import TextIO

import click

from ca.authority import Authority, normalize_serial
from ca.mass_revocation import parse_serial_list, revoke_many
from ca.revocation import CA_REASONS, LEAF_REASONS, AfterRevoke, Revocation, revoke_ca
from ca.revocation import revoke as revoke_certificate
from hsmca.cli import Ctx, _actor, ca, handle_errors, main, pass_ctx


def _hooks() -> tuple[AfterRevoke, ...]:
    from web.hooks import after_revoke_hooks  # the same hooks as the REST API's

    return after_revoke_hooks()


def _report(done: Revocation) -> None:
    what = (
        f"CA {done.ca!r} (certificate {done.serial})" if done.ca else f"certificate {done.serial}"
    )
    click.echo(
        f"revoked {what} at {done.revoked_at:%Y-%m-%dT%H:%M:%SZ}, reason {done.reason}; "
        f"it will be listed in the CRL of {done.issuer!r}",
        err=True,
    )
    for error in done.hook_errors:
        click.echo(f"hsmca: warning: after revocation: {error}", err=True)


@main.command()
@click.argument("serial", required=False)
@click.option(
    "--reason",
    required=True,
    type=click.Choice(LEAF_REASONS),
    help="RFC 5280 reason (unspecified is listed without a reason code).",
)
@click.option("--comment", default="", help="Kept in the audit record.")
@click.option(
    "--serials-file",
    type=click.File("r"),
    help="Revoke every serial in this file (one per line, or 'hsmca cert list' JSON lines; "
    "'-' reads standard input) instead of SERIAL.",
)
@click.option(
    "--dry-run", is_flag=True, help="With --serials-file: check the list, revoke nothing."
)
@pass_ctx
@handle_errors
def revoke(
    c: Ctx,
    serial: str | None,
    reason: str,
    comment: str,
    serials_file: TextIO | None,
    dry_run: bool,
) -> None:
    """Revoke the certificate with SERIAL (hex, colons allowed), or every one in a list.

    The revocation is audited and the certificate's OCSP response refreshed at once; the CRL
    follows within [crl] revocation_delay_seconds (or run 'hsmca crl generate'). A CA's
    certificate is revoked with 'hsmca ca revoke NAME'.

    A list is revoked one certificate per transaction, then recorded as a whole
    (certificate.bulk_revocation); if the run stops, run it again with the same list: what is
    revoked already is skipped. Exit 1 when a serial is unknown or refused.
    """
    if (serial is None) == (serials_file is None):
        raise click.UsageError("give either SERIAL or --serials-file")
    if serials_file is None:
        if dry_run:
            raise click.UsageError("--dry-run goes with --serials-file")
        done = revoke_certificate(
            c.auth, normalize_serial(str(serial)), reason, _actor(), comment=comment, after=_hooks()
        )
        _report(done)
        return
    _revoke_list(c, serials_file, reason, comment, dry_run)


def _revoke_list(c: Ctx, source: TextIO, reason: str, comment: str, dry_run: bool) -> None:
    listed = parse_serial_list(source)
    for number, text in listed.bad_lines:
        click.echo(f"hsmca: error: line {number}: not a serial: {text!r}", err=True)
    if listed.bad_lines:
        raise click.exceptions.Exit(1)  # nothing revoked: fix the list first
    if not listed.serials:
        raise click.UsageError("the list holds no serials")
    if dry_run:
        click.echo(f"{len(listed.serials)} serial(s), list sha256 {listed.sha256}; nothing revoked")
        return
    outcome = revoke_many(
        c.auth, listed, reason, _actor(), comment=comment, after=_hooks(), progress=_progress()
    )
    for unknown in outcome.unknown:
        click.echo(f"hsmca: error: no certificate with serial {unknown}", err=True)
    for refused, why in outcome.refused:
        click.echo(f"hsmca: error: {refused} not revoked: {why}", err=True)
    click.echo(
        f"revoked {len(outcome.revoked)}, already revoked {len(outcome.already_revoked)}, "
        f"unknown {len(outcome.unknown)}, refused {len(outcome.refused)} "
        f"(list sha256 {listed.sha256})",
        err=True,
    )
    if outcome.hook_errors:
        click.echo(
            f"hsmca: warning: {outcome.hook_errors} OCSP refresh(es) failed; the scheduler "
            "re-signs them (ocsp-presign)",
            err=True,
        )
    for issuer in outcome.issuers:
        click.echo(f"publish the CRL now with: hsmca crl generate --ca {issuer}", err=True)
    if not outcome.complete:
        raise click.exceptions.Exit(1)


def _progress() -> Callable[[int, int], None]:
    """A progress line on stderr every 100 certificates (and at the end) of lists over 100."""

    def show(done: int, total: int) -> None:
        if total > 100 and (done % 100 == 0 or done == total):
            end = "\n" if done == total else "\r"
            click.echo(f"revoking: {done}/{total} ({100 * done // total}%)", nl=False, err=True)
            click.echo(end, nl=False, err=True)

    return show


@ca.command("revoke")
@click.argument("name")
@click.option(
    "--reason",
    required=True,
    type=click.Choice(CA_REASONS),
    help="RFC 5280 reason (e.g. cACompromise, keyCompromise, cessationOfOperation).",
)
@click.option("--comment", default="", help="Kept in the audit record.")
@pass_ctx
@handle_errors
def ca_revoke(c: Ctx, name: str, reason: str, comment: str) -> None:
    """Revoke issuing CA NAME: it stops issuing and joins its parent's (the root's) CRL.

    Publish the root's CRL afterwards: hsmca crl generate --ca ROOT (a root operation; the
    scheduler does it on its own only while the root's key is available).
    """
    done = revoke_ca(c.auth, name, reason, _actor(), comment=comment, after=_hooks())
    _report(done)
    click.echo(f"publish the CRL now with: hsmca crl generate --ca {done.issuer}", err=True)


@main.group()
def crl() -> None:
    """Publish and inspect CRLs."""


@crl.command("generate")
@click.option("--ca", "ca_name", required=True, help="The CA whose CRL(s) to publish.")
@click.option(
    "--shard",
    "shards",
    type=int,
    multiple=True,
    help="Only this partition (repeatable). Default: every one.",
)
@pass_ctx
@handle_errors
def crl_generate(c: Ctx, ca_name: str, shards: tuple[int, ...]) -> None:
    """Publish new CRLs of a CA now, signed in the HSM (e.g. the root's, on an offline token)."""
    from crl.publisher import publish

    for p in publish(c.auth, ca_name, shards=shards or None, actor=_actor()):
        click.echo(
            f"published {p.url}: number {p.number}, {p.entries} entries, {p.size} bytes, "
            f"next update {p.next_update:%Y-%m-%dT%H:%M:%SZ}"
        )


@crl.command("list")
@pass_ctx
@handle_errors
def crl_list(c: Ctx) -> None:
    """The current CRL of every CA and partition (JSON lines)."""
    from ca.store import crls

    auth: Authority = c.auth
    names = {x.id: x.name for x in auth.db.list_cas()}
    for (issuer_id, shard), meta in sorted(crls.current_crls(auth.db).items()):
        name = names.get(issuer_id, str(issuer_id))
        click.echo(
            json.dumps(
                {
                    "ca": name,
                    "shard": shard,
                    "url": auth.urls_for(name).crl_url(shard),
                    "number": meta.number,
                    "this_update": _iso(meta.this_update),
                    "next_update": _iso(meta.next_update),
                    "entries": meta.entries,
                    "sha256": meta.sha256,
                }
            )
        )


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
