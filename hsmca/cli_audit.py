"""``hsmca audit export`` and the offline half of ``hsmca audit verify FILE --root ROOT.pem``."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import click

from hsmca.cli import Ctx, _actor, _fail, audit, handle_errors, pass_ctx

#: Below this many events an export or verification is quick: no progress lines.
PROGRESS_FROM = 1000


def progress_printer(verb: str) -> Callable[[int, int], None]:
    """A progress callback writing ``<verb>: done/total events (n%)`` to stderr, at most once a
    second and once at the end; silent for short runs."""
    last = [0.0]

    def show(done: int, total: int) -> None:
        if total < PROGRESS_FROM:
            return
        now = time.monotonic()
        if done < total and now - last[0] < 1.0:
            return
        last[0] = now
        click.echo(f"{verb}: {done}/{total} events ({100 * done // max(total, 1)}%)", err=True)

    return show


@audit.command("export")
@click.option("--from", "since", metavar="SEQ|TIME", help="First event: a seq or an RFC 3339 time.")
@click.option("--to", "until", metavar="SEQ|TIME", help="Last event: a seq or an RFC 3339 time.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path, allow_dash=True),
    help="The bundle to write (a zip file; '-' for standard output).",
)
@pass_ctx
@handle_errors
def audit_export(c: Ctx, since: str | None, until: str | None, out: Path) -> None:
    """Export audit events, their checkpoints and certificates as one bundle that verifies offline.

    \b
    A time bound selects from the first event at or after it / up to the last event at or
    before it. The bundle format is in docs/audit-verification.md; check it with
    hsmca audit verify FILE --root ROOT.pem (no database needed).
    """
    from ca.audit_export import export_bundle, parse_bound, record_export, resolve_range

    start = parse_bound(since, "--from") if since is not None else None
    end = parse_bound(until, "--to") if until is not None else None
    auth = c.auth
    with auth.db.read() as conn:
        rng = resolve_range(conn, start, end)
    record_export(auth, _actor(), rng, via="cli")
    progress = progress_printer("exporting")
    if str(out) == "-":
        manifest = export_bundle(auth, sys.stdout.buffer, rng=rng, progress=progress)
        sys.stdout.buffer.flush()
    else:
        manifest = _export_to_file(
            out, lambda f: export_bundle(auth, f, rng=rng, progress=progress)
        )
    where = "standard output" if str(out) == "-" else str(out)
    click.echo(
        f"exported events {rng.first_seq} to {rng.last_seq} ({manifest.events} events, "
        f"{manifest.checkpoints} checkpoint(s), {manifest.certificates} certificate(s)) to {where}",
        err=str(out) == "-",
    )


def _export_to_file(out: Path, write: Callable[..., object]) -> object:
    """Write via a temporary file beside ``out``, renamed into place only when complete."""
    directory = out.parent if str(out.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            result = write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # an export is meant to be handed on
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return result


def verify_bundle_command(file: Path | None, root: Path | None) -> None:
    """``hsmca audit verify FILE --root ROOT.pem``: exit 0 if intact, 3 naming the first bad seq."""
    from ca.audit_bundle_verify import BundleUnreadable, load_roots, verify_bundle

    if file is None or root is None:
        _fail("verifying a bundle needs both FILE and --root ROOT.pem", 2)
    assert file is not None and root is not None
    try:
        roots = load_roots(root.read_bytes())
    except ValueError as exc:
        _fail(f"--root {root}: {exc}")
    try:
        report = verify_bundle(file, roots, progress=progress_printer("verifying"))
    except BundleUnreadable as exc:
        _fail(f"{file}: {exc}", 3)
    for warning in report.warnings:
        click.echo(f"hsmca: warning: {warning}", err=True)
    if not report.ok:
        errors = sorted(report.errors, key=lambda f: -1 if f.seq is None else f.seq)
        first = report.first_bad_seq
        located = next((e for e in errors if e.seq == first), None) if first is not None else None
        headline = (
            f"audit bundle broken at seq {first}: {located.what}"
            if located is not None
            else f"audit bundle not verified: {errors[0].what}"
        )
        click.echo(f"hsmca: error: {headline}", err=True)
        for other in errors:
            if other is not located:
                click.echo(f"hsmca: error: {other}", err=True)
        sys.exit(3)
    line = f"audit bundle OK: {report.events} events"
    if report.first_seq is not None:
        line += f" (seq {report.first_seq} to {report.last_seq})"
    if report.last_checkpoint_seq is not None:
        line += (
            f", {report.checkpoints} checkpoint(s) verified (the last at seq "
            f"{report.last_checkpoint_seq}, {report.last_checkpoint_time}), signed by audit "
            f"certificate(s) {', '.join(report.audit_certificates)} chaining to the given root"
        )
    click.echo(line)
