"""``hsmca revoke``, ``hsmca ca revoke`` and ``hsmca crl generate|list``: revocation and CRLs."""

from __future__ import annotations

import json
from datetime import datetime

import click

from ca.authority import Authority, normalize_serial
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
@click.argument("serial")
@click.option(
    "--reason",
    required=True,
    type=click.Choice(LEAF_REASONS),
    help="RFC 5280 reason (unspecified is listed without a reason code).",
)
@click.option("--comment", default="", help="Kept in the audit record.")
@pass_ctx
@handle_errors
def revoke(c: Ctx, serial: str, reason: str, comment: str) -> None:
    """Revoke the certificate with SERIAL (hex, colons allowed).

    The revocation is audited and the certificate's OCSP response refreshed at once; the CRL
    follows within [crl] revocation_delay_seconds (or run 'hsmca crl generate'). A CA's
    certificate is revoked with 'hsmca ca revoke NAME'.
    """
    done = revoke_certificate(
        c.auth, normalize_serial(serial), reason, _actor(), comment=comment, after=_hooks()
    )
    _report(done)


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
