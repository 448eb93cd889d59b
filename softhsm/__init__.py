"""SoftHSM2 tooling for development, tests and the embedded default.

:func:`create_token` writes a ``softhsm2.conf`` from the template beside this file and initialises a
token in a given directory with ``softhsm2-util --init-token``. The PINs are typed into
softhsm2-util's prompts through a pseudo-terminal, so they never appear in any process's argv.
Only ``hsmca init`` (for the embedded default) and the tests use it; the running CA talks to
any PKCS#11 module, SoftHSM or not, through ``ca.keys.pkcs11``.
"""

from __future__ import annotations

import os
import pty
import re
import secrets
import select
import shutil
import string
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

#: Where Debian's softhsm2 package puts the PKCS#11 module.
DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
_TEMPLATE = Path(__file__).with_name("softhsm2.conf.in")


class SoftHsmError(RuntimeError):
    """softhsm2-util is missing or failed; the message never carries a PIN."""


@dataclass(frozen=True)
class SoftHsmToken:
    """A SoftHSM2 token made by :func:`create_token`."""

    conf_path: Path  # export SOFTHSM2_CONF=<this> before loading the module
    token_dir: Path
    label: str
    module: str = DEFAULT_MODULE


def find_module() -> str:
    """The SoftHSM2 PKCS#11 module on this machine (Debian path first)."""
    for candidate in (
        DEFAULT_MODULE,
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    ):
        if os.path.exists(candidate):
            return candidate
    raise SoftHsmError("SoftHSM2 is not installed (apt-get install softhsm2)")


def random_pin(length: int = 24) -> str:
    """A random PIN from letters and digits."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def write_pin_file(path: Path, pin: str) -> None:
    """Write ``pin`` to ``path`` with mode 0600 (created that way, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, pin.encode() + b"\n")
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def write_config(directory: Path) -> Path:
    """Write ``softhsm2.conf`` in ``directory`` with its token store in ``directory/tokens``."""
    directory = directory.resolve()
    token_dir = directory / "tokens"
    token_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = directory / "softhsm2.conf"
    conf.write_text(_TEMPLATE.read_text().replace("@TOKEN_DIR@", str(token_dir)))
    return conf


def create_token(directory: Path, label: str, user_pin: str, so_pin: str) -> SoftHsmToken:
    """Create and initialise a token labelled ``label`` in ``directory`` (config + token store).

    Several tokens may live in one directory (the root may have its own); the config is shared.
    """
    tool = shutil.which("softhsm2-util")
    if tool is None:
        raise SoftHsmError("softhsm2-util not found (apt-get install softhsm2)")
    directory = Path(directory)
    conf = directory.resolve() / "softhsm2.conf"
    if not conf.exists():
        conf = write_config(directory)
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    _run_with_prompts(
        [tool, "--init-token", "--free", "--label", label],
        env,
        answers=[so_pin, so_pin, user_pin, user_pin],
    )
    return SoftHsmToken(conf, conf.parent / "tokens", label, find_module())


def _run_with_prompts(argv: list[str], env: dict[str, str], answers: list[str]) -> str:
    """Run ``argv`` on a pseudo-terminal, answering each PIN prompt in turn; return its output."""
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is our controlling terminal
        try:
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    output = b""
    pending = list(answers)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                output += chunk
                # Answer each "PIN:" prompt once, in order.
                while pending and output.count(b"PIN:") > len(answers) - len(pending):
                    os.write(fd, pending.pop(0).encode() + b"\n")
            else:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    pid = 0
                    break
        else:
            raise SoftHsmError(f"{os.path.basename(argv[0])} did not finish within 60 s")
    finally:
        os.close(fd)
        if pid:
            _, status = os.waitpid(pid, 0)
    text = output.decode(errors="replace")
    for secret in answers:
        text = text.replace(secret, "***")
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or "ERROR" in text:
        lines = [ln.strip() for ln in text.splitlines() if "ERROR" in ln]
        raise SoftHsmError(
            f"{os.path.basename(argv[0])} failed (exit {code}): {'; '.join(lines) or text.strip()[-200:]}"
        )
    return text


def token_exists(conf_path: Path, label: str) -> bool:
    """Whether a token labelled ``label`` exists in the SoftHSM store of ``conf_path``."""
    tool = shutil.which("softhsm2-util")
    if tool is None:
        return False
    result = subprocess.run(
        [tool, "--show-slots"],
        env=dict(os.environ, SOFTHSM2_CONF=str(conf_path)),
        capture_output=True,
        text=True,
        check=False,
    )
    return re.search(rf"Label:\s+{re.escape(label)}\s*$", result.stdout, re.MULTILINE) is not None
