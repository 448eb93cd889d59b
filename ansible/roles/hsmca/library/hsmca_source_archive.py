#!/usr/bin/python
"""Ansible module: pack an hsmca source checkout into a reproducible sdist-like .tar.gz.

The role runs it on the controller (delegate_to: localhost) when ``hsmca_source`` is a directory,
then copies the archive to each host and pip-installs it there. The archive is byte-identical for
identical sources (sorted entries, fixed mtime, owner and modes, gzip without a timestamp), so the
copy task reports a change exactly when the source changed: that is what keeps a second run
unchanged while still deploying an edited checkout. Building from an archive also keeps pip's
in-tree build (``build/``, ``*.egg-info``) out of the checkout.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: hsmca_source_archive
short_description: Pack an hsmca checkout into a reproducible source archive
description:
  - Writes I(dest) only when its content would change; reports C(changed) accordingly.
options:
  src:
    description: The checkout (a directory with pyproject.toml).
    type: path
    required: true
  dest:
    description: The archive to write (.tar.gz).
    type: path
    required: true
  include:
    description: Top-level files and directories of the checkout that go into the archive.
    type: list
    elements: str
    required: true
"""

#: 2000-01-01T00:00:00Z: fixed, and after 1980 so that wheels built from the archive can hold it.
MTIME = 946684800
#: The single top-level directory pip expects in an sdist.
PREFIX = "hsmca-src"
SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
SKIP_SUFFIXES = (".pyc", ".pyo")


def source_files(src: str, include: list[str]) -> list[str]:
    """Relative paths of the files to pack, sorted; missing entries raise FileNotFoundError."""
    out: list[str] = []
    for top in include:
        path = os.path.join(src, top)
        if os.path.isfile(path):
            out.append(top)
        elif os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
                for name in files:
                    if not name.endswith(SKIP_SUFFIXES):
                        out.append(os.path.relpath(os.path.join(root, name), src))
        else:
            raise FileNotFoundError(f"{path}: listed in hsmca_source_include but missing")
    return sorted(set(out))


def pack(src: str, files: list[str]) -> bytes:
    """The archive bytes: only regular files, normalised metadata, deterministic order."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in files:
            path = os.path.join(src, rel)
            info = tarfile.TarInfo(f"{PREFIX}/{rel}")
            info.mtime = MTIME
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as fh:
                data = fh.read()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def write_if_changed(dest: str, data: bytes) -> bool:
    """Atomically replace ``dest`` with ``data`` unless it already holds exactly that."""
    try:
        with open(dest, "rb") as fh:
            if fh.read() == data:
                return False
    except FileNotFoundError:
        pass
    directory = os.path.dirname(dest) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".hsmca-src-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "src": {"type": "path", "required": True},
            "dest": {"type": "path", "required": True},
            "include": {"type": "list", "elements": "str", "required": True},
        },
        supports_check_mode=True,
    )
    src, dest = module.params["src"], module.params["dest"]
    if not os.path.isfile(os.path.join(src, "pyproject.toml")):
        module.fail_json(msg=f"hsmca_source {src} is not a checkout (no pyproject.toml)")
    try:
        files = source_files(src, module.params["include"])
        data = pack(src, files)
        digest = hashlib.sha256(data).hexdigest()
        if module.check_mode:
            try:
                with open(dest, "rb") as fh:
                    changed = fh.read() != data
            except FileNotFoundError:
                changed = True
        else:
            changed = write_if_changed(dest, data)
    except OSError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=changed, dest=dest, sha256=digest, files=len(files))


if __name__ == "__main__":
    main()
