"""Witnesses: copies of every audit checkpoint outside the database.

A checkpoint is stored in the database first, then written to each configured witness
(``[audit] witness_file``, ``witness_syslog``, ``witness_webhook``). A witness kept on other
storage (another host, WORM storage, a log collector) shows a database that was rolled back or
truncated: it holds checkpoints the database no longer has.

* The **file** is append-only JSON Lines, one :meth:`Checkpoint.to_json` object per line, written
  with ``O_APPEND`` and ``fsync``. It is its own bookmark: the next write starts after the seq of
  its last line, so checkpoints missed while it was unwritable are appended at the next run.
* **syslog** gets one line ``hsmca audit checkpoint {json}`` per checkpoint (facility ``user``,
  priority ``notice``); the stdlib module never reports failure, so there is nothing to retry.
* The **webhook** gets one ``POST`` with the checkpoint JSON per checkpoint; a failure is logged
  and the checkpoint is not sent again (the file is the witness with catch-up).
"""

from __future__ import annotations

import json
import logging
import os
import syslog
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ca.checkpoint import Checkpoint

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_SECONDS = 5.0
_TAIL_CHUNK = 64 * 1024


class WitnessError(Exception):
    """A witness could not be written (the checkpoint itself is safe in the database)."""


@dataclass(frozen=True)
class WitnessLine:
    """One line of a witness file: its number and the checkpoint, or why it is not one."""

    number: int
    checkpoint: Checkpoint | None
    error: str = ""


@dataclass(frozen=True)
class WitnessFile:
    """A witness file as read, line by line."""

    lines: tuple[WitnessLine, ...] = ()

    @property
    def checkpoints(self) -> list[Checkpoint]:
        return [line.checkpoint for line in self.lines if line.checkpoint is not None]


def checkpoint_line(checkpoint: Checkpoint) -> bytes:
    """The witness file line of ``checkpoint`` (compact JSON, sorted keys, newline)."""
    text = json.dumps(checkpoint.to_json(), sort_keys=True, separators=(",", ":"))
    return text.encode("ascii") + b"\n"


def parse_line(number: int, raw: bytes) -> WitnessLine:
    """One witness file line (without its newline)."""
    try:
        return WitnessLine(number, Checkpoint.from_json(json.loads(raw)))
    except (ValueError, UnicodeDecodeError) as exc:
        return WitnessLine(number, None, str(exc) or "not JSON")


def read_witness_file(path: Path) -> WitnessFile:
    """Every line of the witness file at ``path`` (a missing file has none)."""
    try:
        with path.open("rb") as fh:
            lines = tuple(
                parse_line(number, raw.rstrip(b"\n"))
                for number, raw in enumerate(fh, start=1)
                if raw.strip()
            )
    except FileNotFoundError:
        return WitnessFile()
    return WitnessFile(lines)


def last_witnessed_seq(path: Path) -> int:
    """The seq of the newest whole checkpoint line of the file (0: none), reading from the end."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return 0
    try:
        offset = os.fstat(fd).st_size
        tail = b""
        while offset > 0:
            step = min(_TAIL_CHUNK, offset)
            offset -= step
            tail = os.pread(fd, step, offset) + tail
            lines = tail.split(b"\n")
            # The last piece is empty or a torn write; the first may be cut by the chunk edge.
            whole = lines[:-1] if offset == 0 else lines[1:-1]
            for raw in reversed(whole):
                parsed = parse_line(0, raw) if raw.strip() else None
                if parsed is not None and parsed.checkpoint is not None:
                    return parsed.checkpoint.seq
        return 0
    finally:
        os.close(fd)


def append_to_file(path: Path, checkpoints: Sequence[Checkpoint]) -> int:
    """Append ``checkpoints`` as lines with ``O_APPEND`` and ``fsync``; returns how many.

    A torn last line (a crash mid-write) is ended first, so the new lines stay whole.
    """
    if not checkpoints:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        size = os.fstat(fd).st_size
        torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        payload = (b"\n" if torn else b"") + b"".join(checkpoint_line(c) for c in checkpoints)
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_dir(path.parent)
    return len(checkpoints)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def send_syslog(checkpoint: Checkpoint) -> None:
    """One syslog line per checkpoint (ident ``hsmca``, facility user, priority notice)."""
    syslog.openlog("hsmca", syslog.LOG_PID, syslog.LOG_USER)
    text = json.dumps(checkpoint.to_json(), sort_keys=True, separators=(",", ":"))
    syslog.syslog(syslog.LOG_NOTICE, f"hsmca audit checkpoint {text}")


def post_webhook(
    url: str, checkpoint: Checkpoint, timeout: float = WEBHOOK_TIMEOUT_SECONDS
) -> None:
    """POST the checkpoint JSON to ``url``; WitnessError unless the answer is 2xx."""
    body = json.dumps(checkpoint.to_json(), sort_keys=True).encode("ascii")
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "hsmca-audit-witness"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only (config)
            status = response.status
    except urllib.error.HTTPError as exc:
        raise WitnessError(f"webhook answered {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WitnessError(f"webhook unreachable: {reason}") from None
    if not 200 <= status < 300:
        raise WitnessError(f"webhook answered {status}")
