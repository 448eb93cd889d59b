"""Mass revocation: certificates revoked per second, one audited transaction each.

    python bench/revocation.py [--count 400]

A temporary SoftHSM2 token, SQLite database, root and issuing CA (``hsmca init`` in a temporary
data directory); ``--count`` certificates issued with ``issue_many``; then, on two halves of them:

* ``revoke`` (baseline): :func:`ca.revocation.revoke` per certificate, no after-revoke hooks: a
  database transaction with its audit event, fsynced;
* ``revoke_many``: what ``hsmca revoke --serials-file`` runs: the same, plus the OCSP response
  of each certificate re-signed in the HSM at once, plus the run's summary event.

Prints each one's median time per certificate and rate, and the ratio of the two (the share of
the OCSP re-signing). A benchmark prints figures; it never fails (exit status 0).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# bench/crl.py is named like the ``crl`` package: keep this directory off the import path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

HSMCA = str(Path(sys.executable).parent / "hsmca")


def _say(text: str = "") -> None:
    print(text, flush=True)


def _setup(data: Path, count: int) -> tuple[Any, list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HSMCA_", "SOFTHSM2_CONF"))}
    done = subprocess.run(
        [HSMCA, "--data-dir", str(data), "init"], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"hsmca init failed: {done.stderr.strip()}")
    os.environ.pop("SOFTHSM2_CONF", None)
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509 import (
        CertificateSigningRequestBuilder,
        DNSName,
        Name,
        NameAttribute,
        SubjectAlternativeName,
    )
    from cryptography.x509.oid import NameOID

    from ca.authority import Authority
    from ca.config import load_config
    from ca.issuance import IssuanceRequest, issue_many

    auth = Authority.from_config(load_config(data, environ={}), environ={})
    key = ec.generate_private_key(ec.SECP256R1())
    requests = []
    for i in range(count):
        name = f"svc{i}.bench.internal"
        csr = (
            CertificateSigningRequestBuilder()
            .subject_name(Name([NameAttribute(NameOID.COMMON_NAME, name)]))
            .add_extension(SubjectAlternativeName([DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        requests.append(
            IssuanceRequest(csr.public_bytes(serialization.Encoding.DER), "server", "bench")
        )
    serials: list[str] = []
    for start in range(0, count, 32):
        serials += [i.serial for i in issue_many(auth, requests[start : start + 32])]
    return auth, serials


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=400, help="certificates issued (default 400)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hsmca-bench-") as tmp:
        data = Path(tmp) / "data"
        _say(f"setting up: hsmca init, {args.count} certificates issued …")
        auth, serials = _setup(data, args.count)
        from ca.mass_revocation import SerialList, revoke_many
        from ca.revocation import revoke
        from web.hooks import after_revoke_hooks

        half = len(serials) // 2
        plain: list[float] = []
        for serial in serials[:half]:
            started = time.perf_counter()
            revoke(auth, serial, "superseded", "bench")
            plain.append(time.perf_counter() - started)

        marks: list[float] = [time.perf_counter()]
        outcome = revoke_many(
            auth,
            SerialList(tuple(serials[half:]), ()),
            "keyCompromise",
            "bench",
            after=after_revoke_hooks(),
            progress=lambda _done, _total: marks.append(time.perf_counter()),
        )
        bulk = [b - a for a, b in zip(marks, marks[1:], strict=False)]
        base, many = statistics.median(plain), statistics.median(bulk)
        _say(
            f"revoke (baseline, no OCSP re-sign): {len(plain)} certificates, median "
            f"{base * 1000:.1f} ms each, {1 / base:.0f}/s"
        )
        _say(
            f"revoke_many (OCSP re-signed each):  {len(outcome.revoked)} certificates, median "
            f"{many * 1000:.1f} ms each, {1 / many:.0f}/s"
        )
        _say(f"ratio revoke_many / revoke: {many / base:.2f}")
        _say(f"10,000 certificates at that rate: {10_000 * many / 60:.1f} min")
        auth.db.dispose()


if __name__ == "__main__":
    main()
