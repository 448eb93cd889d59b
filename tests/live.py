"""A real gunicorn server serving ``web:create_app()`` for a data directory, for tests and benches.

The listening socket is bound here (127.0.0.1, a port the kernel picks) and handed to gunicorn as
``fd://N``, so there is no window in which another process could take the port. The server runs
as a child process with ``HSMCA_HOME`` pointing at the data directory and its output going to
``gunicorn.log`` beside it; :func:`live_server` waits for ``/healthz`` and stops the server (by
its own pid) on exit. Nothing here uses ``hsmca serve``: the tests exercise the WSGI app exactly
as gunicorn runs it, forked workers and threads included.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests


class ServerFailed(RuntimeError):
    """The server did not come up (or died); the message ends with the tail of its log."""


@dataclass
class LiveServer:
    """A running gunicorn master and where to reach it."""

    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log_path: Path
    _log_mark: int = field(default=0, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def log_text(self, since: int = 0) -> str:
        """The server's output (gunicorn and the app's stderr) from byte offset ``since``."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the master (it stops its workers), SIGKILL its process group if it lingers."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            # The master was started in its own session: its group is exactly it and its workers.
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)


def gunicorn_command(
    fd: int, workers: int = 2, threads: int = 8, app: str = "web:create_app()"
) -> list[str]:
    """The gunicorn command line serving ``app`` on the inherited, listening socket ``fd``."""
    import gunicorn.config

    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"fd://{fd}",
        "--workers",
        str(workers),
        "--worker-class",
        "gthread",
        "--threads",
        str(threads),
        "--timeout",
        "60",
        "--graceful-timeout",
        "5",
        "--log-level",
        "info",
    ]
    if any(s.name == "control_socket_disable" for s in gunicorn.config.KNOWN_SETTINGS):
        # gunicorn >= 25 opens a control socket at one fixed path per user; several servers
        # side by side (tests in parallel, a bench beside a test run) must not share it.
        argv.append("--no-control-socket")
    return [*argv, app]


def start_server(
    data_dir: Path,
    *,
    workers: int = 2,
    threads: int = 8,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 60.0,
    log_path: Path | None = None,
) -> LiveServer:
    """Start gunicorn for ``data_dir`` and return once ``/healthz`` answers 200."""
    data_dir = Path(data_dir).resolve()
    log_path = log_path or data_dir / "gunicorn.log"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("HSMCA_")}
    child_env.update(env or {})
    child_env["HSMCA_HOME"] = str(data_dir)
    child_env.setdefault("PYTHONUNBUFFERED", "1")

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(256)
        port = int(sock.getsockname()[1])
        with open(log_path, "ab") as log:
            mark = log.tell()
            process = subprocess.Popen(
                gunicorn_command(sock.fileno(), workers, threads),
                cwd=data_dir,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=[sock.fileno()],
                start_new_session=True,
            )
    finally:
        sock.close()  # the child holds its own copy
    server = LiveServer(process, port, data_dir, log_path, mark)
    try:
        _wait_ready(server, ready_timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: LiveServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not server.alive():
            raise ServerFailed(
                f"gunicorn exited with status {server.process.returncode} before answering\n"
                + _tail(server.log_text(server._log_mark))
            )
        try:
            resp = requests.get(server.url("/healthz"), timeout=2)
            if resp.status_code == 200:
                return
            last = f"/healthz answered {resp.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise ServerFailed(
        f"gunicorn did not answer /healthz within {timeout:g} s ({last})\n"
        + _tail(server.log_text(server._log_mark))
    )


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


@contextmanager
def live_server(data_dir: Path, **kwargs: object) -> Iterator[LiveServer]:
    """:func:`start_server` as a context manager that always stops the server."""
    server = start_server(data_dir, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
