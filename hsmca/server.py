"""``hsmca serve``: two gunicorn arbiters, and the HTTPS server certificate the CA issues to itself.

* HTTPS on ``server.https_bind`` serves the whole app (API, later ACME and the UI). It runs in the
  foreground of ``hsmca serve``. gunicorn applies its TLS settings to every bind of an arbiter, so
  plain HTTP needs an arbiter of its own:
* plain HTTP on ``server.bind`` serves only what RFC 5280 clients fetch over http (CA certificates,
  OCSP, CRLs) and health checks (``create_app(surface="plain")``). It runs in a child process,
  ``python -m hsmca.server plain …``, in its own process group. The parent stops it when it stops
  (SIGTERM, SIGINT, SIGQUIT, or a failure), and the child stops by itself when the parent dies
  without a word (it watches a pipe from the parent for EOF). If the child dies, the parent stops
  too and exits 1.

Workers build their own :class:`ca.authority.Authority` after the fork; the arbiters never open the
HSM. The TLS certificate is therefore checked and renewed in a short-lived child process
(``python -m hsmca.server tls``) before the arbiters start, and by ``hsmca init`` in-process.

The TLS key is the web server's, not a CA key: gunicorn needs a file, so it is an EC P-256 key made
in software and written with mode 0600. The certificate goes through the normal :func:`issue` path
under the ``server`` profile (stored and audited, requester ``hsmca:tls``).
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import os
import signal
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from ca.authority import Authority, serial_hex
from ca.config import ENV_PREFIX, SPECIAL_ENV, AppConfig, check_bind, render_toml
from ca.errors import (
    CAError,
    ConfigError,
    HsmKeyNotFound,
    HsmUnavailable,
    KeyMismatch,
    NotFound,
    StoreError,
)
from ca.issuance import IssuanceRequest, IssuedCertificate, issue

TLS_PROFILE = "server"
TLS_REQUESTER = "hsmca:tls"
#: IP SANs every HTTPS certificate carries, so https://127.0.0.1 and https://[::1] verify.
LOOPBACK_IPS = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
_OUTAGES = (HsmUnavailable, StoreError, KeyMismatch, HsmKeyNotFound, ConfigError)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# --- the configuration a start runs with ------------------------------------------------------


def config_sha256(cfg: AppConfig) -> str:
    """SHA-256 of the effective configuration (file plus overrides) as ``render_toml`` writes it."""
    return hashlib.sha256(render_toml(cfg).encode("utf-8")).hexdigest()


def record_config_loaded(auth: Authority, cfg: AppConfig, source: Path, actor: str) -> str:
    """Audit ``config.loaded`` once per start of ``hsmca serve`` (in the parent, before any
    worker exists); returns the configuration's SHA-256. Override names are recorded, never
    their values."""
    digest = config_sha256(cfg)
    overrides = sorted(n for n in os.environ if n.startswith(ENV_PREFIX) and n not in SPECIAL_ENV)
    auth.audit(
        actor,
        "config.loaded",
        str(source),
        {"sha256": digest, "source": str(source), "env_overrides": overrides},
    )
    return digest


# --- the HTTPS server certificate -------------------------------------------------------------


def require_tls_profile(cfg: AppConfig, https_bind: str | None = None) -> None:
    """Refuse a config that enables HTTPS without the profile its certificate is issued under."""
    https_bind = cfg.server.https_bind if https_bind is None else https_bind
    if https_bind and TLS_PROFILE not in cfg.profiles:
        raise ConfigError(
            f"server.https_bind is set but profile {TLS_PROFILE!r}, under which the CA issues the "
            f"HTTPS certificate, is not configured: add [profiles.{TLS_PROFILE}] to hsmca.toml "
            'or set server.https_bind = "" to run without HTTPS'
        )


def tls_names(cfg: AppConfig) -> tuple[list[str], list[IPAddress]]:
    """The DNS names and IP addresses the HTTPS certificate must carry, in order."""
    dns: list[str] = []
    ips: list[IPAddress] = []
    for name in cfg.server.tls_hostnames:
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            dns.append(name)
            continue
        if ip not in ips:
            ips.append(ip)
    ips += [ip for ip in LOOPBACK_IPS if ip not in ips]
    return dns, ips


def _san_strings(dns: Sequence[str], ips: Sequence[IPAddress]) -> set[str]:
    return {f"dns:{d}" for d in dns} | {f"ip:{ip}" for ip in ips}


def _cert_sans(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return _san_strings(
        [d.lower() for d in ext.get_values_for_type(x509.DNSName)],
        ext.get_values_for_type(x509.IPAddress),  # type: ignore[arg-type]
    )


def _spki(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def renewal_reason(auth: Authority, cfg: AppConfig) -> str | None:
    """Why the HTTPS certificate on disk must be (re)issued, or None if it is fine as it is."""
    server = cfg.server
    cert_path, key_path = cfg.path(server.tls_cert_file), cfg.path(server.tls_key_file)
    for path in (cert_path, key_path):
        if not path.exists():
            return f"{path} does not exist"
    if stat.S_IMODE(key_path.stat().st_mode) & 0o077:
        return f"{key_path} was readable by others (a new key replaces it)"
    try:
        chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
    except ValueError:
        return f"{cert_path} is not a PEM certificate chain"
    leaf = chain[0]
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError):
        return f"{key_path} is not an unencrypted PEM private key"
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        return f"{key_path} does not match {cert_path}"
    not_after = leaf.not_valid_after_utc
    if not_after - auth.now() <= timedelta(days=server.tls_renew_days):
        return (
            f"it expires {not_after:%Y-%m-%d %H:%M}Z, within server.tls_renew_days "
            f"({server.tls_renew_days})"
        )
    if _cert_sans(leaf) != _san_strings(*tls_names(cfg)):
        return "server.tls_hostnames changed"
    issuer_name = auth.profile(TLS_PROFILE).issuer
    try:
        issuer = x509.load_der_x509_certificate(auth.db.get_ca(issuer_name).certificate_der)
        leaf.verify_directly_issued_by(issuer)
    except NotFound:
        return f"its issuing CA {issuer_name!r} does not exist"
    except (ValueError, TypeError, InvalidSignature):
        return f"it was not issued by CA {issuer_name!r}"
    try:
        row = auth.db.get_certificate(serial_hex(leaf.serial_number))
    except NotFound:
        return "it is not in the CA's database"
    if row.status != "issued":
        return f"it is {row.status}"
    return None


def issue_tls_certificate(auth: Authority, cfg: AppConfig) -> tuple[IssuedCertificate, bytes]:
    """Make a P-256 key and have the CA issue its certificate; returns it and the key (PEM)."""
    require_tls_profile(cfg)
    dns, ips = tls_names(cfg)
    key = ec.generate_private_key(ec.SECP256R1())
    # The CN (if any) repeats the first DNS SAN: the policy wants every CN to be one of the SANs.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])] if dns else [])
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ip) for ip in ips]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    request = IssuanceRequest(
        csr.public_bytes(serialization.Encoding.PEM), TLS_PROFILE, TLS_REQUESTER
    )
    try:
        issued = issue(auth, request)
    except _OUTAGES:
        raise
    except CAError as exc:
        names = ", ".join([*dns, *map(str, ips)])
        raise ConfigError(
            f"the CA refused the HTTPS certificate for {names} under profile {TLS_PROFILE!r}: "
            f"{exc} (adjust [profiles.{TLS_PROFILE}] or server.tls_hostnames)"
        ) from None
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return issued, key_pem


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` (mode ``mode``) so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        if mode & 0o077 == 0:
            os.fchmod(fd, mode)  # exactly this, whatever the umask (the key)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_tls_certificate(auth: Authority, cfg: AppConfig) -> IssuedCertificate:
    """Issue a new HTTPS key and certificate and write them to their files.

    The key is written before the certificate; a crash in between leaves a pair that does not
    match, which the next check replaces.
    """
    issued, key_pem = issue_tls_certificate(auth, cfg)
    _write_atomically(cfg.path(cfg.server.tls_key_file), key_pem, 0o600)
    _write_atomically(cfg.path(cfg.server.tls_cert_file), issued.pem_chain(), 0o644)
    return issued


def ensure_tls_certificate(auth: Authority, cfg: AppConfig) -> tuple[str, IssuedCertificate] | None:
    """Renew the HTTPS certificate if :func:`renewal_reason` says so: (reason, new certificate)."""
    reason = renewal_reason(auth, cfg)
    if reason is None:
        return None
    return reason, write_tls_certificate(auth, cfg)


def describe_tls_certificate(cfg: AppConfig, issued: IssuedCertificate) -> str:
    """One line about a newly issued HTTPS certificate."""
    dns, ips = tls_names(cfg)
    line = (
        f"issued HTTPS certificate serial {issued.serial} for {', '.join([*dns, *map(str, ips)])}"
        f" (issuer {issued.issuer}, valid until "
        f"{issued.certificate.not_valid_after_utc:%Y-%m-%d}) -> {cfg.path(cfg.server.tls_cert_file)}"
    )
    lifetime = issued.certificate.not_valid_after_utc - issued.certificate.not_valid_before_utc
    if lifetime <= timedelta(days=cfg.server.tls_renew_days):
        line += (
            f"; warning: server.tls_renew_days ({cfg.server.tls_renew_days}) is not shorter than "
            "the certificate's lifetime, so every start renews it"
        )
    return line


def tls_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """The server context: TLS 1.2 or newer, Python's default (forward-secret, AEAD) ciphers."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=certfile, keyfile=keyfile)
    return context


_contexts: dict[int, ssl.SSLContext] = {}


def _gunicorn_ssl_context(
    conf: Any, default_factory: Callable[[], ssl.SSLContext]
) -> ssl.SSLContext:
    """gunicorn's ``ssl_context`` hook: one context per worker process (gunicorn asks per
    connection, which would re-read the key file every time), TLS 1.2 at least."""
    pid = os.getpid()
    context = _contexts.get(pid)
    if context is None:
        context = default_factory()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _contexts.clear()
        _contexts[pid] = context
    return context


# --- gunicorn ---------------------------------------------------------------------------------


def listeners(
    cfg: AppConfig, bind: str | None, https_bind: str | None, workers: int | None
) -> tuple[str, str, int]:
    """(plain bind, HTTPS bind or "", workers) from the config and ``hsmca serve``'s options."""
    plain = cfg.server.bind if bind is None else bind
    tls = cfg.server.https_bind if https_bind is None else https_bind
    for option, value in (("--bind", plain), ("--https-bind", tls)):
        if value or option == "--bind":
            try:
                check_bind(value)
            except ValueError as exc:
                raise ConfigError(f"{option}: {exc}") from None
    if tls == plain:
        raise ConfigError("the HTTPS and the plain-HTTP listener need different addresses")
    count = cfg.server.workers if workers is None else workers
    if not 1 <= count <= 64:
        raise ConfigError("--workers must be 1-64")
    require_tls_profile(cfg, tls)
    return plain, tls, count


class _HsmcaArbiter(Arbiter):  # type: ignore[misc]
    """An arbiter that stops its companion (the plain-HTTP arbiter) as soon as it is told to stop,
    so both shut down gracefully side by side."""

    def __init__(self, app: Any, stop_companion: Callable[[], None] | None) -> None:
        super().__init__(app)
        self.stop_companion = stop_companion

    def _stop_companion(self) -> None:
        if self.stop_companion is not None:
            self.stop_companion()

    def handle_term(self) -> None:
        self._stop_companion()
        super().handle_term()

    def handle_int(self) -> None:
        self._stop_companion()
        super().handle_int()

    def handle_quit(self) -> None:
        self._stop_companion()
        super().handle_quit()


class _HsmcaServer(BaseApplication):  # type: ignore[misc]
    def __init__(
        self,
        options: dict[str, Any],
        surface: str,
        stop_companion: Callable[[], None] | None = None,
    ) -> None:
        self.options = options
        self.surface = surface
        self.stop_companion = stop_companion
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Built in the worker (no preload): nothing touches the HSM before the fork.
        if self.surface == "all":
            from hsmca.wsgi import app

            return app
        from web import create_app

        return create_app(surface="plain")

    def run(self) -> None:
        try:
            _HsmcaArbiter(self, self.stop_companion).run()
        except RuntimeError as exc:
            print(f"hsmca: error: {exc}", file=sys.stderr)
            sys.exit(1)


def gunicorn_options(
    listener: str, bind: str, workers: int, threads: int, timeout: int
) -> dict[str, Any]:
    """Options shared by both arbiters; ``listener`` ("https" or "http") prefixes access logs."""
    return {
        "bind": [bind],
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads,
        "timeout": timeout,
        "preload_app": False,
        "accesslog": "-",
        "errorlog": "-",
        "proc_name": f"hsmca-{listener}",
        "control_socket_disable": True,  # no socket outside the data directory
        "child_exit": _child_exit,
        # Access logs never show query strings or headers that might carry tokens.
        "access_log_format": listener + ' %(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms',
    }


def _child_exit(_server: Any, worker: Any) -> None:
    """gunicorn ``child_exit`` hook (in the arbiter): a dead worker's live gauges go with it."""
    from ca.metrics import mark_process_dead

    mark_process_dead(worker.pid)


def run_plain(bind: str, workers: int, threads: int, timeout: int) -> None:
    """Serve the plain-HTTP surface on ``bind`` in the foreground until stopped."""
    _HsmcaServer(gunicorn_options("http", bind, workers, threads, timeout), "plain").run()


def run_servers(
    bind: str,
    https_bind: str,
    workers: int,
    threads: int,
    timeout: int,
    certfile: Path,
    keyfile: Path,
) -> int:
    """Run plain HTTP on ``bind`` (child process) and HTTPS on ``https_bind`` (here) until
    stopped; returns the exit status. Without ``https_bind`` only plain HTTP runs, here."""
    if not https_bind:
        run_plain(bind, workers, threads, timeout)
        return 0
    try:
        tls_context(str(certfile), str(keyfile))  # fail here, once, rather than per connection
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot use {certfile} with {keyfile}: {exc}") from None
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hsmca.server",
            "plain",
            "--bind",
            bind,
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--timeout",
            str(timeout),
        ],
        stdin=subprocess.PIPE,  # never written: its EOF tells the child that this process is gone
        process_group=0,  # a terminal's ^C reaches this process, which stops the child in order
    )
    stopping = threading.Event()
    failed = threading.Event()

    def watch() -> None:
        child.wait()
        if not stopping.is_set():
            failed.set()
            print(
                f"hsmca: error: the plain-HTTP listener on {bind} stopped; stopping HTTPS too",
                file=sys.stderr,
                flush=True,
            )
            os.kill(os.getpid(), signal.SIGTERM)

    def stop_child() -> None:
        stopping.set()
        if child.poll() is None:
            child.terminate()

    def post_fork(_server: Any, _worker: Any) -> None:
        # Workers must not hold the pipe open, or the child would outlive a killed parent.
        if child.stdin is not None:
            child.stdin.close()

    options = gunicorn_options("https", https_bind, workers, threads, timeout)
    options.update(
        certfile=str(certfile),
        keyfile=str(keyfile),
        ssl_context=_gunicorn_ssl_context,
        post_fork=post_fork,
    )
    threading.Thread(target=watch, name="plain-http-watch", daemon=True).start()
    status: int = 0
    owner = os.getpid()
    try:
        _HsmcaServer(options, "all", stop_companion=stop_child).run()
    except SystemExit as exc:
        if os.getpid() != owner:
            raise  # a worker leaving: gunicorn forks inside run(), so its exit comes through here
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        if os.getpid() == owner:
            stopping.set()
            _stop_child(child, timeout)
    return 1 if failed.is_set() else status


def _stop_child(child: subprocess.Popen[bytes], timeout: int) -> None:
    if child.poll() is None:
        child.terminate()
    try:
        child.wait(timeout=timeout + 5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    if child.stdin is not None:
        child.stdin.close()


# --- python -m hsmca.server -------------------------------------------------------------------


def _exit_when_parent_goes(_server: Any) -> None:
    """gunicorn ``when_ready`` hook of the plain arbiter: stop when stdin (the parent's pipe)
    reaches EOF, i.e. when ``hsmca serve`` has gone, however it went."""

    def watch() -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _plain_main(args: argparse.Namespace) -> int:
    options = gunicorn_options("http", args.bind, args.workers, args.threads, args.timeout)
    options["when_ready"] = _exit_when_parent_goes
    _HsmcaServer(options, "plain").run()
    return 0


def _tls_main(_args: argparse.Namespace) -> int:
    from ca.config import load_config

    try:
        cfg = load_config(Path(os.environ.get("HSMCA_HOME", ".")))
        require_tls_profile(cfg)
        auth = Authority.from_config(cfg)
        try:
            renewed = ensure_tls_certificate(auth, cfg)
        finally:
            close = getattr(auth.keys, "close", None)
            if close is not None:
                close()
            auth.db.dispose()
    except CAError as exc:
        print(f"hsmca: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"hsmca: error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 1
    if renewed is not None:
        reason, issued = renewed
        print(f"tls: {reason}: {describe_tls_certificate(cfg, issued)}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hsmca.server plain|tls`` (used by ``hsmca serve``; not a user interface)."""
    parser = argparse.ArgumentParser(prog="python -m hsmca.server")
    commands = parser.add_subparsers(dest="command", required=True)
    plain = commands.add_parser("plain", help="run the plain-HTTP arbiter (child of hsmca serve)")
    plain.add_argument("--bind", required=True)
    plain.add_argument("--workers", type=int, required=True)
    plain.add_argument("--threads", type=int, required=True)
    plain.add_argument("--timeout", type=int, required=True)
    plain.set_defaults(run=_plain_main)
    tls = commands.add_parser("tls", help="check the HTTPS certificate; renew it if needed")
    tls.set_defaults(run=_tls_main)
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
