"""``hsmca backup`` and ``hsmca restore``: the database and configuration, never key material.

The token is backed up with the HSM's own tooling (docs/backup-restore.md). A restore checks the
whole file first, loads it into an empty database in one transaction at the backup's schema
revision, upgrades to this hsmca's schema, verifies the audit chain (dropping everything again if
it fails), records ``restore.completed`` and publishes fresh CRLs whose numbers skip past any the
old installation may have published after the backup.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ca.config import CONFIG_FILE, AppConfig, load_config, render_toml
from ca.errors import AuditChainBroken, CAError, ConfigError, StoreError
from hsmca.cli import Ctx, _actor, _safe_url, handle_errors, main, pass_ctx

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

    from ca.audit_verify import VerifyReport
    from ca.authority import Authority
    from ca.store.backup import BackupFile

#: Below this many rows a backup or restore is quick: no progress lines.
PROGRESS_FROM = 20_000
_RESTORING = ".hsmca.toml.restoring"


def row_progress(verb: str) -> Callable[[int, int], None]:
    """A progress callback writing ``<verb>: done/total rows (n%)`` to stderr, at most once a
    second and once at the end; silent for small databases."""
    last = [float("-inf"), -1.0]  # (when printed, rows then): the first line at once

    def show(done: int, total: int) -> None:
        if total < PROGRESS_FROM:
            return
        now = time.monotonic()
        if (done < total and now - last[0] < 1.0) or (done >= total and last[1] >= total):
            return
        last[0], last[1] = now, done
        click.echo(f"{verb}: {done}/{total} rows ({100 * done // max(total, 1)}%)", err=True)

    return show


def _config_source(c: Ctx) -> Path:
    return Path(os.environ.get("HSMCA_CONFIG") or c.data_dir / CONFIG_FILE)


def _scripts() -> ScriptDirectory:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from ca.store.migrate import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg)


def _script_head() -> str:
    return str(_scripts().get_current_head())


def _known_revision(revision: str) -> bool:
    from alembic.util.exc import CommandError

    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:
        return False


# --- backup -------------------------------------------------------------------------------------


@main.command("backup")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The backup file to write (a zip; mode 0600, written atomically).",
)
@pass_ctx
@handle_errors
def backup(c: Ctx, out: Path) -> None:
    """Back up the database and hsmca.toml into one file (never keys, PINs or the token).

    \b
    Safe while the CA runs: every table is read in one consistent snapshot. The HSM token is
    backed up with the HSM's own tooling (SoftHSM: copy its token directory; see
    docs/backup-restore.md). Restore with: hsmca --data-dir NEW restore FILE
    """
    from ca.store.backup import write_backup
    from ca.store.migrate import current_revision

    cfg = c.config
    auth = c.auth
    engine = auth.db.engine
    revision = current_revision(engine)
    head = _script_head()
    if revision != head:
        raise ConfigError(
            f"the database is at revision {revision or 'none'}, this hsmca at {head}: "
            "run 'hsmca db upgrade' first"
        )
    config_text = _config_source(c).read_text(encoding="utf-8")
    manifest, digest = write_backup(
        engine,
        out,
        config_text=config_text,
        hsmca_version=version("hsmca"),
        alembic_revision=head,
        now=auth.now(),
        progress=row_progress("backing up"),
    )
    details = {
        "file": str(out.absolute()),
        "sha256": digest,
        "created": manifest.created,
        "alembic_revision": manifest.alembic_revision,
        "dialect": manifest.dialect,
        "audit_head_seq": manifest.audit_head[0] if manifest.audit_head else 0,
        "audit_head_hash": manifest.audit_head[1] if manifest.audit_head else "",
        "rows": manifest.row_counts,
    }
    try:
        # After the snapshot, in its own transaction: the backup never holds its own event.
        auth.audit(_actor(), "backup.created", str(out.absolute()), details)
    except BaseException:
        with contextlib.suppress(OSError):
            out.unlink()  # no backup without its audit event
        raise
    rows = sum(manifest.row_counts.values())
    seq = manifest.audit_head[0] if manifest.audit_head else 0
    click.echo(
        f"backup written to {out}: {rows} rows in {len(manifest.tables)} tables, audit head seq "
        f"{seq}, revision {manifest.alembic_revision} ({manifest.dialect}), sha256 {digest}"
    )
    cfg_note = f" ({'; '.join(manifest.config_notes)})" if manifest.config_notes else ""
    click.echo(
        f"not included: keys and the token ({cfg.hsm.module}), PINs, TLS key{cfg_note}",
        err=True,
    )


# --- restore ------------------------------------------------------------------------------------


def _with_database_url(config_text: str, url: str, data: Path) -> str:
    """The restored config pointing at ``url`` (the rest of the file unchanged if possible)."""
    import json
    import tomllib

    raw = tomllib.loads(config_text)
    old = raw.get("database", {}).get("url") if isinstance(raw.get("database"), dict) else None
    if isinstance(old, str) and old:
        replaced = config_text.replace(json.dumps(old), json.dumps(url))
        if tomllib.loads(replaced).get("database", {}).get("url") == url:
            return replaced
    raw.setdefault("database", {})["url"] = url
    try:
        cfg = AppConfig.model_validate({**raw, "data_dir": data})
    except ValueError as exc:
        raise ConfigError(f"the backup's hsmca.toml: {str(exc).splitlines()[0]}") from None
    return render_toml(cfg)


@main.command("restore")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--data-dir",
    "target",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The data directory to restore into (default: the global --data-dir).",
)
@click.option(
    "--database-url",
    default=None,
    help="Restore into this database and write it into hsmca.toml (no password here: use "
    "~/.pgpass or HSMCA_DATABASE_URL).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace a non-empty database and an existing hsmca.toml.",
)
@click.option(
    "--crl-number-skip",
    type=click.IntRange(min=0),
    default=None,
    help="CRL numbers to leave unused after the restored ones (default: enough for every CRL "
    "the scheduler can have published since the backup, plus 100).",
)
@pass_ctx
@handle_errors
def restore(
    c: Ctx,
    file: Path,
    target: Path | None,
    database_url: str | None,
    force: bool,
    crl_number_skip: int | None,
) -> None:
    """Restore a backup into a fresh data directory and an empty database.

    \b
    The HSM token must be restored first (the same keys: the restore checks them), with the
    PIN files or HSMCA_HSM_PIN. Nothing is changed unless the whole file verifies; a failed
    restore leaves an empty database. See docs/backup-restore.md.
    """
    from ca.store.backup import open_backup

    data = (target or c.data_dir).absolute()
    if os.environ.get("HSMCA_CONFIG"):
        raise ConfigError("unset HSMCA_CONFIG: a restore writes DATA_DIR/hsmca.toml")
    if database_url and "@" in database_url:
        from sqlalchemy.engine import make_url

        if make_url(database_url).password is not None:
            raise ConfigError(
                "--database-url must not carry a password (other users see the command line): "
                "use ~/.pgpass or HSMCA_DATABASE_URL"
            )
    click.echo(f"checking {file} ...", err=True)
    opened = open_backup(file, progress=row_progress("checking"))
    try:
        _restore(c, opened, data, database_url, force, crl_number_skip)
    finally:
        opened.close()


def _restore(
    c: Ctx,
    opened: BackupFile,
    data: Path,
    database_url: str | None,
    force: bool,
    crl_number_skip: int | None,
) -> None:
    from ca.authority import Authority
    from ca.store.backup import (
        BackupError,
        audit_head,
        created_time,
        drop_everything,
        existing_rows,
        load_rows,
        reflect,
    )
    from ca.store.backup import (
        crl_number_skip as default_skip,
    )
    from ca.store.migrate import upgrade

    m = opened.manifest
    if not _known_revision(m.alembic_revision):
        raise BackupError(
            f"the backup's schema revision {m.alembic_revision} (hsmca {m.hsmca_version}) is "
            "unknown to this hsmca: restore with that version or newer"
        )
    cfg_path = data / CONFIG_FILE
    if cfg_path.exists() and not force:
        raise ConfigError(f"{cfg_path} exists: restore into a fresh data directory (or --force)")
    config_text = opened.config_text
    if database_url:
        config_text = _with_database_url(config_text, database_url, data)
    os.umask(0o077)
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    staged = data / _RESTORING
    staged.unlink(missing_ok=True)
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(config_text)
    try:
        cfg = load_config(data, path=staged)
        auth = Authority.from_config(cfg)
        _check_keys(auth, opened)
        db = auth.db
        db.create_sqlite_parent()
        where = _safe_url(cfg.database_url)
        present = existing_rows(db.engine)
        if present and not force:
            listing = ", ".join(f"{name}: {n}" for name, n in present.items())
            raise ConfigError(
                f"the database {where} is not empty ({listing}); restore into an empty "
                "database, or pass --force to replace it"
            )
        if reflect(db.engine).tables:
            click.echo(f"database: dropping the existing tables of {where}", err=True)
            drop_everything(db.engine)
        click.echo(f"database: creating the schema at revision {m.alembic_revision} ...", err=True)
        try:
            upgrade(db.engine, m.alembic_revision)
            with db.write() as conn:
                loaded = load_rows(conn, opened, progress=row_progress("restoring"))
                if audit_head(conn) != m.audit_head:
                    raise BackupError("the restored audit head differs from the backup's")
            revision = upgrade(db.engine, "head")
            report = _verify(auth)
        except BaseException:
            db.dispose()
            drop_everything(db.engine)
            click.echo(f"database: restore failed, {where} left empty", err=True)
            raise
        now = auth.now()
        skip = (
            crl_number_skip if crl_number_skip is not None else default_skip(created_time(m), now)
        )
        auth.audit(
            _actor(),
            "restore.completed",
            str(opened.path.absolute()),
            {
                "file": str(opened.path.absolute()),
                "sha256": opened.sha256,
                "backup_created": m.created,
                "backup_hsmca_version": m.hsmca_version,
                "backup_revision": m.alembic_revision,
                "backup_dialect": m.dialect,
                "revision": revision,
                "audit_head_seq": m.audit_head[0] if m.audit_head else 0,
                "rows": loaded,
                "crl_number_skip": skip,
            },
        )
        os.replace(staged, cfg_path)
    finally:
        staged.unlink(missing_ok=True)
    rows = sum(loaded.values())
    click.echo(
        f"restored {rows} rows from {opened.path} (backup of {m.created}, hsmca "
        f"{m.hsmca_version}, {m.dialect}) into {where} at revision {revision}"
    )
    click.echo(f"audit chain OK: {report.events} events, {report.checkpoints} checkpoint(s)")
    for warning in report.warnings:
        click.echo(f"hsmca: warning: {warning}", err=True)
    _publish_crls(auth, skip)
    click.echo(f"wrote {cfg_path}. Start the CA with: hsmca --data-dir {data} serve")


def _check_keys(auth: Authority, opened: BackupFile) -> None:
    """Before anything is changed: the token must hold the key of every active CA of the
    backup, matching its certificate (a different token is refused). A token that cannot be
    reached (no PIN yet, an offline root) is only warned about."""
    from cryptography import x509

    from ca.authority import same_public_key
    from ca.errors import HsmKeyNotFound, HsmUnavailable, KeyMismatch
    from ca.keys import KeyRef
    from ca.store import tables as t
    from ca.store.backup import BackupError, parse_row

    entry = opened.manifest.table(t.CertificateAuthority.__tablename__)
    if entry is None:
        return
    for line in opened.lines(entry):
        try:
            row = parse_row(line, entry.columns)
            cert = x509.load_der_x509_certificate(row["certificate_der"])
            ref = KeyRef(row["key_token"], row["key_label"], row["key_id"])
        except (ValueError, KeyError) as exc:
            raise BackupError(f"a CA of the backup is malformed: {exc}") from None
        if row.get("status") != "active":
            continue
        name = row["name"]
        try:
            key = auth.keys.load(ref)
        except HsmKeyNotFound:
            raise KeyMismatch(
                f"token {ref.token_label!r} holds no key {ref.label!r} of CA {name!r}: restore "
                "the CA's token first (this is another token, or not restored yet)"
            ) from None
        except (HsmUnavailable, ConfigError) as exc:
            click.echo(
                f"hsmca: warning: the key of CA {name!r} cannot be checked ({exc}); the "
                "restored CA needs it to sign",
                err=True,
            )
            continue
        if not same_public_key(key.public_key(), cert.public_key()):
            raise KeyMismatch(
                f"the key {ref.label!r} in token {ref.token_label!r} does not match the "
                f"certificate of CA {name!r}: this is not the CA's token"
            )


class RestoredChainBroken(AuditChainBroken):
    """The restored audit chain does not verify (exit 3, like ``hsmca audit verify``)."""

    def __init__(self, report: VerifyReport) -> None:
        where = report.first_bad_seq
        CAError.__init__(
            self,
            f"restored audit chain broken at seq {where}: {report.problem}"
            if where is not None
            else f"restored audit chain not verified: {report.problem}",
        )
        self.seq = where or 0
        self.reason = report.problem


def _verify(auth: Authority) -> VerifyReport:
    """Verify the restored chain and its signed checkpoints; raise if it is broken.

    The witness file is compared afterwards and only warned about: a backup is older than the
    witness by design, so checkpoints signed after it are expected to lie beyond the head.
    """
    from ca.audit_verify import verify_live
    from hsmca.cli_audit import progress_printer

    cfg = auth.config
    no_witness = cfg.model_copy(update={"audit": cfg.audit.model_copy(update={"witness_file": ""})})
    report = verify_live(replace(auth, config=no_witness), progress=progress_printer("verifying"))
    if not report.ok:
        raise RestoredChainBroken(report)
    if cfg.audit.witness_file:
        witnessed = verify_live(auth)
        if not witnessed.ok:
            click.echo(
                f"hsmca: warning: the witness file disagrees with the restored chain "
                f"({witnessed.problem}): events recorded after the backup are not in it",
                err=True,
            )
    return report


def _publish_crls(auth: Authority, skip: int) -> None:
    """Fresh CRLs of every active CA, numbered past any published after the backup."""
    from crl.publisher import publish

    now = auth.now()
    for ca_row in auth.db.list_cas():
        if ca_row.status != "active" or ca_row.not_after <= now:
            continue
        try:
            for p in publish(auth, ca_row.name, now=now, actor=_actor(), number_skip=skip):
                click.echo(f"crl: published {p.url} (number {p.number})")
        except (CAError, StoreError) as exc:
            click.echo(
                f"hsmca: warning: CRLs of CA {ca_row.name!r} not published ({exc}); publish them "
                f"with 'hsmca crl generate --ca {ca_row.name}' once its key is reachable, and "
                "make sure its CRL numbers go past any served after the backup",
                err=True,
            )
