"""Expiry notices: what one run of the job costs, when notices are due and when none are.

    python bench/expiry_notices.py [--expiring 2000] [--owners 50] [--valid 2000]

A temporary SoftHSM2 token, SQLite database, root and issuing CA (``hsmca init`` in a temporary
data directory); ``--expiring`` certificates of 10 days spread over ``--owners`` owners, and
``--valid`` of 90 days (in no window); a local HTTP receiver. Then:

* ``collect`` (planning only, what ``hsmca notices preview`` runs), before anything was sent;
* the first ``run_once``: one signed POST per owner, each recorded with its audit event;
* a second ``run_once`` with nothing due: the steady-state cost of every later run, which still
  reads every certificate in a window and its records.

A benchmark prints figures; it never fails (exit status 0).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# bench/crl.py is named like the ``crl`` package: keep this directory off the import path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

HSMCA = str(Path(sys.executable).parent / "hsmca")


def _say(text: str = "") -> None:
    print(text, flush=True)


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


def _issue(auth: Any, count: int, owners: int, days: int, prefix: str) -> None:
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

    from ca.issuance import IssuanceRequest, issue_many

    key = ec.generate_private_key(ec.SECP256R1())
    requests = []
    for i in range(count):
        name = f"{prefix}{i}.bench.internal"
        csr = (
            CertificateSigningRequestBuilder()
            .subject_name(Name([NameAttribute(NameOID.COMMON_NAME, name)]))
            .add_extension(SubjectAlternativeName([DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        requests.append(
            IssuanceRequest(
                csr.public_bytes(serialization.Encoding.DER),
                "server",
                "bench",
                validity_days=days,
                metadata={"owner": f"team-{i % owners}"},
            )
        )
    for start in range(0, count, 32):
        issue_many(auth, requests[start : start + 32])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--expiring", type=int, default=2000, help="10-day certificates")
    parser.add_argument("--owners", type=int, default=50, help="owners they are spread over")
    parser.add_argument("--valid", type=int, default=2000, help="90-day certificates")
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory(prefix="hsmca-bench-") as tmp:
        data = Path(tmp) / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HSMCA_", "SOFTHSM2_CONF"))}
        done = subprocess.run(
            [HSMCA, "--data-dir", str(data), "init"], env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"hsmca init failed: {done.stderr.strip()}")
        os.environ.pop("SOFTHSM2_CONF", None)
        secret = data / "notices.secret"
        secret.write_text("bench-secret\n")
        secret.chmod(0o600)
        overrides = {
            "HSMCA_NOTICES_ENABLED": "true",
            "HSMCA_NOTICES_WEBHOOK_URL": f"http://127.0.0.1:{server.server_address[1]}/hook",
            "HSMCA_NOTICES_WEBHOOK_SECRET_FILE": "notices.secret",
        }
        from ca.authority import Authority
        from ca.config import load_config
        from ca.notices_job import collect, run_once

        auth = Authority.from_config(load_config(data, environ=overrides), environ={})
        _say(f"setting up: {args.expiring} expiring + {args.valid} valid certificates …")
        _issue(auth, args.expiring, args.owners, 10, "soon")
        _issue(auth, args.valid, args.owners, 90, "later")
        now = auth.now()

        started = time.perf_counter()
        plan = collect(auth, now)
        planned = time.perf_counter() - started
        _say(
            f"collect: {len(plan.notices)} notices over {args.expiring} certificates in "
            f"{planned * 1000:.0f} ms"
        )
        started = time.perf_counter()
        sent = run_once(auth, now)
        first = time.perf_counter() - started
        _say(
            f"first run_once: {len(sent)} notices POSTed and recorded in {first * 1000:.0f} ms "
            f"({first / max(1, len(sent)) * 1000:.1f} ms per notice)"
        )
        started = time.perf_counter()
        again = run_once(auth, now)
        idle = time.perf_counter() - started
        _say(f"second run_once (nothing due): {len(again)} notices in {idle * 1000:.0f} ms")
        auth.db.dispose()
    server.shutdown()


if __name__ == "__main__":
    main()
