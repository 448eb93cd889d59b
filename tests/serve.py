"""`hsmca serve` run for real in tests: a started data directory's two listeners on free loopback
ports, and the helpers to wait for them, find their processes and stop them all."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HSMCA = str(Path(sys.executable).parent / "hsmca")


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HSMCA_", "SOFTHSM2_CONF"))}
    return {**base, **(extra or {})}


def run(
    data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HSMCA, "--data-dir", str(data_dir), *args],
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    http_port: int
    https_port: int
    root: Path
    log: Path
    known: set[int] = field(default_factory=set)

    def processes(self) -> set[int]:
        """The processes below serve now (remembered, so orphans can be found later)."""
        below = descendants(self.proc.pid)
        self.known |= below
        return below

    def workers_up(self) -> set[int]:
        """Wait for 2 HTTPS workers, the plain arbiter and its 2 workers, and the scheduler;
        returns their pids."""
        wait_until(lambda: len(self.processes()) == 6, 30, "all workers")
        return self.processes()

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.root))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.processes()
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.kill_leftovers()

    def kill_leftovers(self) -> None:
        if self.proc.poll() is None:
            self.processes()
            self.proc.kill()
            self.proc.wait()
        for pid in self.known:
            if alive(pid) and "hsmca" in cmdline(pid):
                os.kill(pid, signal.SIGKILL)


def start_server(
    data: Path, tmp_path: Path, env: dict[str, str] | None = None, https: bool = True
) -> Server:
    http_port, https_port = free_port(), free_port()
    log = tmp_path / f"serve-{http_port}.log"
    args = [HSMCA, "--data-dir", str(data), "serve", "--bind", f"127.0.0.1:{http_port}"]
    args += ["--https-bind", f"127.0.0.1:{https_port}" if https else "", "--workers", "2"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=clean_env(env), stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, http_port, https_port, data / "root.pem", log)
    ports = [http_port, https_port] if https else [http_port]
    try:
        wait_until(
            lambda: proc.poll() is not None or all(listening(p) for p in ports),
            60,
            "the listeners",
        )
        assert proc.poll() is None, log.read_text()
    except BaseException:
        server.stop()
        raise
    return server


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
