"""The ``hsmca`` command line (click). Composition root: wires config, store, HSM and core."""

from __future__ import annotations

import functools
import json
import os
import pwd
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.authority import Authority, normalize_serial
from ca.config import CONFIG_FILE, AppConfig, load_config, render_toml
from ca.errors import AuditChainBroken, CAError, ConfigError, NotFound

if TYPE_CHECKING:
    from ca.audit_key import AuditKeyResult

F = TypeVar("F", bound=Callable[..., Any])


def _default_data_dir() -> Path:
    if os.environ.get("HSMCA_HOME"):
        return Path(os.environ["HSMCA_HOME"])
    if os.geteuid() == 0:
        return Path("/var/lib/hsmca")
    return Path.home() / ".local/share/hsmca"


def _actor() -> str:
    """The audit actor: the real user running the command (not $LOGNAME/$USER, which anyone sets)."""
    try:
        return f"cli:{pwd.getpwuid(os.getuid()).pw_name}"
    except KeyError:
        return f"cli:uid{os.getuid()}"


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"hsmca: error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn: F) -> F:
    """Turn core errors into one line on stderr and exit status 1 (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AuditChainBroken as exc:
            _fail(str(exc), 3)
        except CAError as exc:
            _fail(str(exc))
        except OSError as exc:
            _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))

    return wrapper  # type: ignore[return-value]


class Ctx:
    """Lazily loaded config and authority for a command."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._config: AppConfig | None = None
        self._auth: Authority | None = None

    @property
    def config(self) -> AppConfig:
        if self._config is None:
            if not (self.data_dir / CONFIG_FILE).exists() and not os.environ.get("HSMCA_CONFIG"):
                raise ConfigError(
                    f"{self.data_dir / CONFIG_FILE} not found: run 'hsmca init' or pass --data-dir"
                )
            self._config = load_config(self.data_dir)
        return self._config

    @property
    def auth(self) -> Authority:
        if self._auth is None:
            self._auth = Authority.from_config(self.config)
        return self._auth


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Data directory (config, database, SoftHSM token). Default: $HSMCA_HOME, else /var/lib/hsmca for root or ~/.local/share/hsmca.",
)
@click.version_option(package_name="hsmca")
@click.pass_context
def main(ctx: click.Context, data_dir: Path | None) -> None:
    """hsmca - a private certificate authority whose keys live in a PKCS#11 HSM.

    \b
    Start:     hsmca init && hsmca serve
    Issue:     hsmca issue --csr server.csr --profile server --out server.pem
    Inspect:   hsmca ca list | hsmca cert show SERIAL | hsmca audit verify
    """
    ctx.obj = Ctx((data_dir or _default_data_dir()).absolute())


# --- init -------------------------------------------------------------------------------------


@main.command()
@click.option(
    "--public-url",
    default=None,
    help="http base URL put in AIA/CDP (default http://127.0.0.1:8080).",
)
@click.option(
    "--root-key", default=None, help="Root key type, e.g. ec:P-384 (default) or rsa:4096."
)
@click.option("--issuing-key", default=None, help="Issuing CA key type, e.g. ec:P-256 (default).")
@pass_ctx
@handle_errors
def init(c: Ctx, public_url: str | None, root_key: str | None, issuing_key: str | None) -> None:
    """Create the data directory, HSM token, database, root CA, issuing CA and HTTPS certificate.

    On the embedded default a SoftHSM2 token is made in DATA_DIR/softhsm with random user and SO
    PINs in DATA_DIR/pins (mode 0600). With another PKCS#11 module, write hsmca.toml first
    ([hsm] module, token_label, pin_file) and the token must exist. The CA then issues the
    certificate of its own HTTPS listener (profile server; key in DATA_DIR/tls, mode 0600).
    """
    from ca.hierarchy import create_intermediate, create_root
    from hsmca.server import describe_tls_certificate, require_tls_profile, write_tls_certificate

    data = c.data_dir
    os.umask(0o077)  # the database, token store and PIN files are for this user only
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    cfg_path = data / CONFIG_FILE
    if not cfg_path.exists():
        _write_embedded_config(data, public_url, root_key, issuing_key)
        click.echo(f"wrote {cfg_path}")
    elif public_url or root_key or issuing_key:
        raise ConfigError(f"{cfg_path} exists: edit it instead of passing options")
    cfg = c.config
    require_tls_profile(cfg)  # before any key is made
    if cfg.hsm.softhsm_conf:
        _make_softhsm_tokens(cfg)
    auth = c.auth
    click.echo("database: applying migrations ...")
    revision = auth.db.upgrade()
    click.echo(f"database: at revision {revision} ({_safe_url(cfg.database_url)})")
    if auth.db.list_cas():
        raise ConfigError(f"{data} is already initialised (CAs exist); see 'hsmca ca list'")
    click.echo(
        f"root CA {cfg.ca.root_name!r}: generating {cfg.ca.root_key} key in token {cfg.root_token_label!r} ..."
    )
    root = create_root(auth, actor=_actor())
    click.echo(f"root CA {root.name!r}: {root.certificate.subject.rfc4514_string()}")
    click.echo(
        f"issuing CA {cfg.ca.intermediate_name!r}: generating {cfg.ca.intermediate_key} key "
        f"in token {cfg.hsm.token_label!r} ..."
    )
    inter = create_intermediate(
        auth, cfg.ca.intermediate_name, common_name=cfg.ca.intermediate_common_name, actor=_actor()
    )
    click.echo(f"issuing CA {inter.name!r}: {inter.certificate.subject.rfc4514_string()}")
    from crl.publisher import publish  # the first CRLs, so that a fresh install serves them

    for name in (root.name, inter.name):
        for published in publish(auth, name, actor=_actor()):
            click.echo(f"crl: published {published.url} (number {published.number})")
    from ca.audit_key import create_audit_key  # signs checkpoints; made before OCSP pre-signs

    click.echo(f"audit: {_describe_audit_key(create_audit_key(c.auth, actor=_actor()))}")
    from ocsp import set_up as set_up_ocsp  # responders + pre-signed responses: OCSP answers now

    ocsp_done = set_up_ocsp(auth, actor=_actor())
    for ca_name, serial in ocsp_done.responders.created.items():
        click.echo(f"ocsp: responder for CA {ca_name!r} (serial {serial})")
    click.echo(f"ocsp: {ocsp_done.presigned.signed} response(s) pre-signed")
    if cfg.server.https_bind:
        try:
            issued = write_tls_certificate(auth, cfg)
        except ConfigError as exc:
            raise ConfigError(
                f"{exc}. The CAs exist: once this is fixed, 'hsmca serve' issues the certificate"
            ) from None
        click.echo(f"https: {describe_tls_certificate(cfg, issued)}")
    from ca.checkpoints import sign_checkpoint  # the state of a new CA, signed at once

    first = sign_checkpoint(auth, actor=_actor())
    if first is not None:
        click.echo(f"audit: checkpoint signed at seq {first.checkpoint.seq}")
    click.echo(f"done. Start the CA with: hsmca --data-dir {data} serve")


def _write_embedded_config(
    data: Path, public_url: str | None, root_key: str | None, issuing_key: str | None
) -> None:
    from ca.config import AppConfig, CaConfig, HsmConfig, ServerConfig

    try:
        from softhsm import find_module

        module = find_module()
    except Exception as exc:  # noqa: BLE001 - report any reason SoftHSM is missing
        raise ConfigError(str(exc)) from None
    base = AppConfig(data_dir=data)
    try:
        cfg = base.model_copy(
            update={
                "server": ServerConfig(public_base_url=public_url) if public_url else base.server,
                "hsm": HsmConfig(module=module, softhsm_conf="softhsm/softhsm2.conf"),
                "ca": CaConfig(
                    root_key=root_key or base.ca.root_key,
                    intermediate_key=issuing_key or base.ca.intermediate_key,
                ),
            }
        )
    except ValueError as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    fd = os.open(data / CONFIG_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(fd, "w") as fh:
        fh.write(render_toml(cfg))


def _make_softhsm_tokens(cfg: AppConfig) -> None:
    from softhsm import create_token, random_pin, token_exists, write_config, write_pin_file

    conf = cfg.path(cfg.hsm.softhsm_conf)
    if not conf.exists():
        write_config(conf.parent)
    os.environ.setdefault("SOFTHSM2_CONF", str(conf))
    tokens = [(cfg.hsm.token_label, cfg.hsm.pin_file)]
    if cfg.root_token_label != cfg.hsm.token_label:
        tokens.append((cfg.root_token_label, cfg.hsm.root_pin_file or cfg.hsm.pin_file))
    for label, pin_file in tokens:
        if token_exists(conf, label):
            continue
        click.echo(f"softhsm: creating token {label!r} in {conf.parent} ...")
        pin_path = cfg.path(pin_file)
        user_pin = pin_path.read_text().strip() if pin_path.exists() else random_pin()
        so_pin = random_pin()
        write_pin_file(pin_path, user_pin)
        write_pin_file(
            cfg.path(
                cfg.hsm.so_pin_file if label == cfg.hsm.token_label else f"pins/{label}-so.pin"
            ),
            so_pin,
        )
        create_token(conf.parent, label, user_pin, so_pin)


def _safe_url(url: str) -> str:
    """A database URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


# --- ca ---------------------------------------------------------------------------------------


@main.group()
def ca() -> None:
    """Manage the CA hierarchy (root and issuing CAs)."""


@ca.command("list")
@pass_ctx
@handle_errors
def ca_list(c: Ctx) -> None:
    """List the CAs: name, parent, key type, validity, subject."""
    cas = c.auth.db.list_cas()
    by_id = {x.id: x.name for x in cas}
    click.echo(f"{'NAME':<16} {'PARENT':<12} {'KEY':<10} {'NOT AFTER':<21} SUBJECT")
    for x in cas:
        parent = by_id.get(x.parent_id, "-") if x.parent_id else "-"
        click.echo(
            f"{x.name:<16} {parent:<12} {x.key_type:<10} {x.not_after:%Y-%m-%dT%H:%M:%SZ}  {x.subject}"
        )


@ca.command("show")
@click.argument("name")
@click.option("--pem", is_flag=True, help="Print only the certificate in PEM.")
@pass_ctx
@handle_errors
def ca_show(c: Ctx, name: str, pem: bool) -> None:
    """Show one CA (or its certificate with --pem)."""
    row = c.auth.db.get_ca(name)
    cert = x509.load_der_x509_certificate(row.certificate_der)
    if pem:
        click.echo(cert.public_bytes(serialization.Encoding.PEM).decode(), nl=False)
        return
    info = {
        "name": row.name,
        "subject": row.subject,
        "issuer": cert.issuer.rfc4514_string(),
        "serial": row.serial,
        "not_before": f"{row.not_before:%Y-%m-%dT%H:%M:%SZ}",
        "not_after": f"{row.not_after:%Y-%m-%dT%H:%M:%SZ}",
        "key_type": row.key_type,
        "key": {"token": row.key_token, "label": row.key_label, "id": row.key_id},
        "sha256_fingerprint": row.fingerprint_sha256,
        "status": row.status,
    }
    click.echo(json.dumps(info, indent=2))


@ca.command("create-intermediate")
@click.argument("name")
@click.option(
    "--cn", "common_name", default=None, help="Common name (default: '<organization> NAME CA')."
)
@click.option(
    "--key", default=None, help="Key type: ec:P-256, ec:P-384, rsa:2048, rsa:3072, rsa:4096."
)
@click.option("--days", type=int, default=None, help="Validity in days.")
@click.option("--parent", default=None, help="Signing CA (default: the root).")
@pass_ctx
@handle_errors
def ca_create_intermediate(
    c: Ctx,
    name: str,
    common_name: str | None,
    key: str | None,
    days: int | None,
    parent: str | None,
) -> None:
    """Create an issuing CA NAME signed by the root (or --parent); its key is generated in the HSM."""
    from ca.hierarchy import create_intermediate

    click.echo(
        f"generating {key or c.config.ca.intermediate_key} key in token {c.config.hsm.token_label!r} ..."
    )
    created = create_intermediate(c.auth, name, common_name, key, days, parent, actor=_actor())
    click.echo(f"created CA {created.name!r}: {created.certificate.subject.rfc4514_string()}")
    # Revocation services for the new CA now, rather than at the scheduler's next runs.
    from crl.publisher import publish
    from ocsp import set_up as set_up_ocsp

    for published in publish(c.auth, created.name, actor=_actor()):
        click.echo(f"crl: published {published.url} (number {published.number})")
    for ca_name, serial in set_up_ocsp(c.auth, actor=_actor()).responders.created.items():
        click.echo(f"ocsp: responder for CA {ca_name!r} (serial {serial})")


# --- issuance ---------------------------------------------------------------------------------


@main.command()
@click.option(
    "--csr",
    "csr_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSR file (PEM or DER).",
)
@click.option("--profile", required=True, help="Issuance profile (e.g. server, client).")
@click.option("--days", type=int, default=None, help="Validity in days (default: the profile's).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write certificate + chain (PEM) here instead of stdout.",
)
@pass_ctx
@handle_errors
def issue(c: Ctx, csr_path: Path, profile: str, days: int | None, out: Path | None) -> None:
    """Issue a certificate from a CSR under a profile; prints the certificate and chain in PEM."""
    from ca.csr import MAX_CSR_BYTES
    from ca.issuance import IssuanceRequest, recover_intents
    from ca.issuance import issue as issue_certificate

    with open(csr_path, "rb") as fh:
        data = fh.read(MAX_CSR_BYTES + 1)  # never read an arbitrarily large file
    auth = c.auth
    recover_intents(auth, older_than=timedelta(minutes=5))
    issued = issue_certificate(auth, IssuanceRequest(data, profile, _actor(), days))
    pem = issued.pem_chain()
    if out:
        out.write_bytes(pem)
        click.echo(
            f"issued serial {issued.serial} (profile {issued.profile}, issuer {issued.issuer}) -> {out}",
            err=True,
        )
    else:
        click.echo(pem.decode(), nl=False)
        click.echo(
            f"issued serial {issued.serial} (profile {issued.profile}, issuer {issued.issuer})",
            err=True,
        )


@main.group()
def cert() -> None:
    """Inspect issued certificates."""


@cert.command("show")
@click.argument("serial")
@click.option("--pem", is_flag=True, help="Print only the certificate in PEM.")
@pass_ctx
@handle_errors
def cert_show(c: Ctx, serial: str, pem: bool) -> None:
    """Show the certificate with SERIAL (hex, colons allowed)."""
    row = c.auth.db.get_certificate(normalize_serial(serial))
    if pem:
        cert_obj = x509.load_der_x509_certificate(row.der)
        click.echo(cert_obj.public_bytes(serialization.Encoding.PEM).decode(), nl=False)
        return
    info = {
        "serial": row.serial,
        "issuer": row.issuer_name,
        "subject": row.subject,
        "sans": row.sans,
        "key_type": row.key_type,
        "not_before": f"{row.not_before:%Y-%m-%dT%H:%M:%SZ}",
        "not_after": f"{row.not_after:%Y-%m-%dT%H:%M:%SZ}",
        "profile": row.profile,
        "requester": row.requester,
        "status": row.status,
        "sha256_fingerprint": row.fingerprint_sha256,
        "issued_at": f"{row.created_at:%Y-%m-%dT%H:%M:%SZ}",
    }
    if row.revoked_at is not None:
        from ca.revocation import REASON_NAMES

        info["revoked_at"] = f"{row.revoked_at:%Y-%m-%dT%H:%M:%SZ}"
        code = row.revocation_reason
        info["revocation_reason"] = REASON_NAMES.get(code, str(code)) if code is not None else None
    if row.owner or row.meta:
        info["owner"] = row.owner
        info["metadata"] = row.meta
    click.echo(json.dumps(info, indent=2))


# --- audit, db --------------------------------------------------------------------------------


@main.group()
def audit() -> None:
    """Inspect and verify the audit chain."""


@audit.command("verify")
@click.argument(
    "file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--root",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With FILE: the root certificate (PEM) the bundle's audit certificate must chain to.",
)
@pass_ctx
@handle_errors
def audit_verify(c: Ctx, file: Path | None, root: Path | None) -> None:
    """Verify the live audit chain, its signed checkpoints and the witness file.

    With FILE (an export bundle) and --root ROOT.pem: verify the bundle offline instead, no
    database needed. Exit 3 naming the first bad seq and what is wrong (see
    docs/audit-chain.md and docs/audit-verification.md).
    """
    if file is not None or root is not None:
        from hsmca.cli_audit import verify_bundle_command

        verify_bundle_command(file, root)
        return
    run_live_verify(c)


def run_live_verify(c: Ctx) -> None:
    """`hsmca audit verify` on the configured database: progress on stderr, exit 3 if broken."""
    from ca.audit_verify import verify_live

    report = verify_live(c.auth, progress=_progress_line())
    for warning in report.warnings:
        click.echo(f"hsmca: warning: {warning}", err=True)
    if not report.ok:
        where = report.first_bad_seq
        _fail(
            f"audit chain broken at seq {where}: {report.problem}"
            if where is not None
            else f"audit chain not verified: {report.problem}",
            3,
        )
    line = f"audit chain OK: {report.events} events"
    if report.last_checkpoint_seq is not None:
        line += (
            f", {report.checkpoints} checkpoint(s) verified (the last at seq "
            f"{report.last_checkpoint_seq}, {report.last_checkpoint_time})"
        )
    if report.witnessed:
        line += f", {report.witnessed} witnessed"
    click.echo(line)
    if report.last_checkpoint_seq is not None and report.unsigned_events:
        click.echo(f"{report.unsigned_events} event(s) after the last checkpoint not yet signed")


def _progress_line() -> Callable[[int, int], None]:
    """A progress callback: a percentage line on stderr, for long chains only."""

    def show(done: int, total: int) -> None:
        if total >= 50_000:
            end = "\n" if done >= total else "\r"
            click.echo(
                f"verifying: {done}/{total} events ({100 * done // total}%)", nl=False, err=True
            )
            click.echo(end, nl=False, err=True)

    return show


@audit.command("checkpoint")
@pass_ctx
@handle_errors
def audit_checkpoint(c: Ctx) -> None:
    """Sign a checkpoint of the chain head now with the audit key, and write it to the witnesses."""
    from ca.checkpoints import sign_checkpoint

    signed = sign_checkpoint(c.auth, actor=_actor())
    if signed is None:
        raise NotFound("no checkpoint signed: no audit key (hsmca audit key create) or no events")
    cp = signed.checkpoint
    click.echo(f"checkpoint signed: seq {cp.seq} hash {cp.hash} at {cp.time} (key {cp.key_serial})")
    for name, count in signed.witnesses.written.items():
        click.echo(f"witness {name}: {count} written")
    for name, error in signed.witnesses.errors.items():
        click.echo(f"hsmca: warning: witness {name} failed: {error}", err=True)


@audit.group("key")
def audit_key() -> None:
    """The audit key that signs checkpoints (in the HSM; certificate from the issuing CA)."""


@audit_key.command("create")
@click.option("--force", is_flag=True, help="Make a new key even if the current one is valid.")
@pass_ctx
@handle_errors
def audit_key_create(c: Ctx, force: bool) -> None:
    """Create the audit key and its certificate unless a current one exists (idempotent)."""
    from ca.audit_key import create_audit_key

    click.echo(_describe_audit_key(create_audit_key(c.auth, actor=_actor(), force=force)))


def _describe_audit_key(result: AuditKeyResult) -> str:
    cert = result.certificate
    what = "created" if result.created else "exists"
    return (
        f"audit key {what}: {result.key_ref.label} in token {result.key_ref.token_label!r}, "
        f"certificate serial {result.serial} valid until {cert.not_valid_after_utc:%Y-%m-%d}"
        + ("" if result.created else f" ({result.reason})")
    )


@main.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@pass_ctx
@handle_errors
def db_upgrade(c: Ctx) -> None:
    """Apply Alembic migrations up to the newest schema."""
    c.auth.db.create_sqlite_parent()
    revision = c.auth.db.upgrade()
    click.echo(f"database at revision {revision}")


@db.command("status")
@pass_ctx
@handle_errors
def db_status(c: Ctx) -> None:
    """Show the schema revision against this hsmca's newest; exit 1 if they differ."""
    from ca.store.migrate import schema_status

    status = schema_status(c.auth.db.engine)
    click.echo(f"database revision: {status.current or '(none)'}")
    click.echo(f"newest migration:  {status.head}")
    for revision in status.pending:
        click.echo(f"pending:           {revision}")
    problem = status.problem()
    if problem:
        _fail(problem)
    click.echo("up to date")


# --- serve ------------------------------------------------------------------------------------


@main.command()
@click.option(
    "--bind", default=None, help="Plain-HTTP host:port (default: [server] bind, 127.0.0.1:8080)."
)
@click.option(
    "--https-bind",
    default=None,
    help='HTTPS host:port (default: [server] https_bind, 127.0.0.1:8443); "" for none.',
)
@click.option("--workers", type=int, default=None, help="gunicorn worker processes per listener.")
@click.option(
    "--no-scheduler",
    is_flag=True,
    help="Do not start the scheduler beside the servers (run 'hsmca scheduler run' elsewhere).",
)
@pass_ctx
@handle_errors
def serve(
    c: Ctx, bind: str | None, https_bind: str | None, workers: int | None, no_scheduler: bool
) -> None:
    """Run the CA's servers: HTTPS (API) and plain HTTP (CA certificates, OCSP, CRLs).

    Two gunicorn arbiters: HTTPS in the foreground, plain HTTP in a child process, and the
    scheduler (CRLs, OCSP, recovery, expiries) in another; SIGTERM or SIGINT stops them all.
    The HTTPS certificate is renewed first if it is missing, expires within [server]
    tls_renew_days, or no longer matches tls_hostnames.
    """
    from ca.issuance import recover_intents
    from ca.metrics import MULTIPROC_SUBDIR, prepare_multiproc_dir
    from ca.store.migrate import schema_status
    from hsmca.server import listeners, record_config_loaded, run_servers

    cfg = c.config
    plain_bind, tls_bind, n_workers = listeners(cfg, bind, https_bind, workers)
    # Before any process imports prometheus_client or forks: every worker, the plain-HTTP
    # arbiter and the scheduler write their metrics there, and a scrape sums them.
    prepare_multiproc_dir(c.data_dir / MULTIPROC_SUBDIR)
    auth = c.auth
    schema_problem = schema_status(auth.db.engine).problem()
    if schema_problem:  # before anything reads a table the code expects
        raise ConfigError(schema_problem)
    resolved = recover_intents(auth, older_than=timedelta(seconds=60))
    if resolved:
        click.echo(
            f"recovered {len(resolved)} interrupted issuance(s): {', '.join(resolved)}", err=True
        )
    try:
        auth.db.get_ca(cfg.ca.default_issuer)
    except NotFound:
        raise ConfigError(
            f"issuing CA {cfg.ca.default_issuer!r} does not exist; run 'hsmca init'"
        ) from None
    source = Path(os.environ.get("HSMCA_CONFIG") or c.data_dir / CONFIG_FILE)
    record_config_loaded(auth, cfg, source.resolve(), _actor())  # once per start, not per worker
    auth.db.dispose()  # no database connection crosses the fork into workers
    os.environ["HSMCA_HOME"] = str(c.data_dir)
    # Workers (and the plain-HTTP child) load the config again: give them the listeners in use.
    os.environ.update(HSMCA_SERVER_BIND=plain_bind, HSMCA_SERVER_HTTPS_BIND=tls_bind)
    if tls_bind:
        # In a child process: this one forks the workers and must never open the HSM itself.
        checked = subprocess.run([sys.executable, "-m", "hsmca.server", "tls"], check=False)
        if checked.returncode != 0:
            sys.exit(1)  # the child printed the reason
    from hsmca.scheduler import start_child

    scheduler = None if no_scheduler else start_child()
    try:
        status = run_servers(
            plain_bind,
            tls_bind,
            n_workers,
            cfg.server.threads,
            cfg.server.timeout_seconds,
            cfg.path(cfg.server.tls_cert_file),
            cfg.path(cfg.server.tls_key_file),
        )
    finally:
        if scheduler is not None:
            scheduler.stop()
    if status:
        sys.exit(status)


# Command groups defined in their own modules register themselves on import.
from hsmca import (  # noqa: E402, F401
    cli_acme,
    cli_audit,
    cli_backup,
    cli_clients,
    cli_config,
    cli_inventory,
    cli_notices,
    cli_revocation,
    cli_scheduler,
    cli_users,
)

if __name__ == "__main__":  # pragma: no cover
    main()
