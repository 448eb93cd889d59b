"""CRL generation: time and peak memory for large CRLs, signed in the HSM.

    python bench/crl.py [--sizes 100000,1000000] [--db-sizes 100000] [--no-lint]

Everything lives in a temporary directory made at run time (a SoftHSM2 token, an SQLite database,
a root CA and two issuing CAs, P-256 and RSA-2048) and removed at the end.

1. ``build``: for each size and path (cryptography's builder, and the fast path of
   ``crl/der.py``), a fresh child process makes that many revoked entries in memory (random
   128-bit serials, revocation dates within 90 days, a mix of reasons), then times
   ``crl.build.build_crl`` (entries → DER signed with the issuing CA's key in SoftHSM, signature
   checked) and reports the child's peak RSS (``ru_maxrss``) before and after. Target: 1M entries
   in under 3 s and 500 MB.
2. ``same``: for each size, both paths on the same entries and times: the TBSCertList bytes must
   be identical (the fast path changes nothing but the speed).
3. ``check``: ``openssl crl -verify`` parses and verifies the fast-path CRL of each size, and
   pkilint's ``lint_crl`` (BR profile) lints the smallest (pkilint is pure Python: minutes for 1M).
4. ``publish``: ``crl.publisher.publish`` end to end from the database (revoked rows read from
   SQLite, CRL built, signed, stored and audited) for ``--db-sizes`` revoked certificates.

A benchmark prints figures; it never fails (exit status 0).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# This file is named like the ``crl`` package: keep its directory off the import path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

TOML = """
[database]
url = ""

[hsm]
module = ""
token_label = "hsmca"
pin_file = "pins/user.pin"
softhsm_conf = "softhsm/softhsm2.conf"

[ca]
organization = "hsmca bench"
"""
ISSUERS = (("bench-ec", "ec:P-256"), ("bench-rsa", "rsa:2048"))
NOW = datetime(2031, 5, 17, 8, 0, 0, tzinfo=UTC)


def _say(text: str = "") -> None:
    print(text, flush=True)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _entries(count: int, seed: int) -> list[tuple[int, int, int]]:
    import random

    rng = random.Random(seed)
    base = int(NOW.timestamp())
    reasons = (0, 1, 3, 4, 5, 9)
    return [
        (rng.getrandbits(128) | 1 << 64, base - rng.randrange(90 * 86400), reasons[i % 6])
        for i in range(count)
    ]


def _spec(auth: Any, issuer: str, number: int = 1) -> Any:
    from crl.build import CrlSpec

    loaded = auth.issuer(issuer)
    return loaded, CrlSpec(loaded.certificate, number, NOW, NOW + timedelta(days=7))


# --- child processes ----------------------------------------------------------------------------


def _authority(tmp: Path) -> Any:
    from ca.authority import Authority
    from ca.config import load_config

    environ = {"SOFTHSM2_CONF": os.environ["SOFTHSM2_CONF"]}
    config = load_config(tmp, environ=environ)
    module = os.environ["BENCH_SOFTHSM_MODULE"]
    config = config.model_copy(update={"hsm": config.hsm.model_copy(update={"module": module})})
    return Authority.from_config(config, environ=environ)


def child_build(tmp: Path, issuer: str, count: int, path: str, out: Path | None) -> dict[str, Any]:
    from crl.build import build_crl

    auth = _authority(tmp)
    loaded, spec = _spec(auth, issuer)
    loaded.key.public_key()  # the HSM session is open before the clock starts
    started = time.perf_counter()
    entries = _entries(count, seed=count)
    made = time.perf_counter() - started
    rss_entries = _maxrss_mb()
    started = time.perf_counter()
    der = build_crl(loaded.key, loaded.hash_algorithm, spec, entries, fast=path == "fast")
    took = time.perf_counter() - started
    if out is not None:
        out.write_bytes(der)
    return {
        "entries_s": made,
        "build_s": took,
        "rss_entries_mb": rss_entries,
        "rss_peak_mb": _maxrss_mb(),
        "bytes": len(der),
    }


def child_same(tmp: Path, issuer: str, count: int) -> dict[str, Any]:
    from cryptography import x509

    from crl.build import build_crl

    auth = _authority(tmp)
    loaded, spec = _spec(auth, issuer)
    entries = _entries(count, seed=count)
    slow = build_crl(loaded.key, loaded.hash_algorithm, spec, entries, fast=False)
    fast = build_crl(loaded.key, loaded.hash_algorithm, spec, entries, fast=True)
    a, b = x509.load_der_x509_crl(slow), x509.load_der_x509_crl(fast)
    return {
        "identical_tbs": a.tbs_certlist_bytes == b.tbs_certlist_bytes,
        "entries": len(b),
        "signature_valid": b.is_signature_valid(loaded.certificate.public_key()),
    }


def _child(args: list[str]) -> None:
    kind, tmp, issuer, count = args[0], Path(args[1]), args[2], int(args[3])
    if kind == "build":
        out = Path(args[5]) if len(args) > 5 else None
        result = child_build(tmp, issuer, count, args[4], out)
    else:
        result = child_same(tmp, issuer, count)
    print(json.dumps(result))


def _run_child(tmp: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --- set-up -------------------------------------------------------------------------------------


def _setup(tmp: Path) -> Any:
    import softhsm
    from ca.authority import Authority
    from ca.config import load_config
    from ca.hierarchy import create_intermediate, create_root

    user_pin, so_pin = softhsm.random_pin(), softhsm.random_pin()
    token = softhsm.create_token(tmp / "softhsm", "hsmca", user_pin, so_pin)
    os.environ["SOFTHSM2_CONF"] = str(token.conf_path)
    os.environ["BENCH_SOFTHSM_MODULE"] = str(token.module)
    softhsm.write_pin_file(tmp / "pins" / "user.pin", user_pin)
    (tmp / "hsmca.toml").write_text(TOML, encoding="utf-8")
    environ = {"SOFTHSM2_CONF": str(token.conf_path)}
    config = load_config(tmp, environ=environ)
    config = config.model_copy(
        update={"hsm": config.hsm.model_copy(update={"module": token.module})}
    )
    auth = Authority.from_config(config, environ=environ)
    auth.db.upgrade()
    create_root(auth, actor="bench")
    for name, key in ISSUERS:
        create_intermediate(auth, name, key=key, actor="bench")
    return auth


def _fill_database(auth: Any, issuer: str, count: int) -> None:
    """``count`` revoked certificate rows of ``issuer`` (placeholder DER: only the columns the
    CRL reads matter), inserted in batches."""
    ca_id = auth.db.get_ca(issuer).id
    now = datetime.now(UTC)
    batch = 20000
    for start in range(0, count, batch):
        rows = []
        for i in range(start, min(count, start + batch)):
            serial = format(secrets.randbits(128) | 1 << 64, "x")
            rows.append(
                {
                    "serial": serial,
                    "issuer_id": ca_id,
                    "subject": "",
                    "sans": "[]",
                    "key_type": "ec:P-256",
                    "not_before": now - timedelta(days=10),
                    "not_after": now + timedelta(days=80),
                    "profile": "server",
                    "requester": "bench",
                    "status": "revoked",
                    "der": b"",
                    "fingerprint_sha256": serial.rjust(64, "0"),
                    "created_at": now - timedelta(days=10),
                    "revoked_at": now - timedelta(seconds=i),
                    "revocation_reason": (0, 1, 4, 5)[i % 4],
                    "crl_shard": 0,
                }
            )
        with auth.db.write() as conn:
            auth.db.add_certificates(conn, rows)


# --- main ---------------------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="entries per CRL")
    parser.add_argument("--db-sizes", default="100000", help="revoked rows for publish()")
    parser.add_argument("--issuers", default="bench-ec,bench-rsa")
    parser.add_argument("--no-lint", action="store_true", help="skip pkilint")
    args = parser.parse_args()
    sizes, db_sizes = _sizes(args.sizes), _sizes(args.db_sizes)
    issuers = [i for i in args.issuers.split(",") if i]
    tmp = Path(tempfile.mkdtemp(prefix="hsmca-bench-crl-"))
    try:
        _say(f"set-up in {tmp}: SoftHSM token, SQLite, root + {', '.join(issuers)}")
        auth = _setup(tmp)
        _say()
        _say("1. build and sign (child process per line; peak RSS of that process)")
        _say(
            f"   {'issuer':<10} {'entries':>9} {'path':<8} {'build+sign':>10} "
            f"{'RSS: entries':>12} {'peak':>8} {'DER':>9}"
        )
        files: dict[int, Path] = {}
        for issuer in issuers:
            for count in sizes:
                for path in ("builder", "fast"):
                    out = tmp / f"{issuer}-{count}.crl" if path == "fast" else None
                    try:
                        r = _run_child(
                            tmp,
                            "build",
                            str(tmp),
                            issuer,
                            str(count),
                            path,
                            *([str(out)] if out else []),
                        )
                    except RuntimeError as exc:
                        _say(f"   {issuer:<10} {count:>9,} {path:<8} failed: {exc}")
                        continue
                    if out is not None and issuer == issuers[0]:
                        files[count] = out
                    _say(
                        f"   {issuer:<10} {count:>9,} {path:<8} {r['build_s']:>9.2f}s "
                        f"{r['rss_entries_mb']:>10.0f}MB {r['rss_peak_mb']:>6.0f}MB "
                        f"{r['bytes'] / 1e6:>7.1f}MB"
                    )
        _say()
        _say("2. the fast path against the builder, same entries and times")
        for count in sizes:
            try:
                r = _run_child(tmp, "same", str(tmp), issuers[0], str(count))
                _say(
                    f"   {count:>9,} entries: TBSCertList identical: {r['identical_tbs']}, "
                    f"signature valid: {r['signature_valid']}, listed: {r['entries']:,}"
                )
            except RuntimeError as exc:
                _say(f"   {count:>9,} entries: failed: {exc}")
        _say()
        _say("3. outside tools on the fast-path CRLs")
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        issuing = tmp / "issuing.pem"
        issuing.write_bytes(
            x509.load_der_x509_certificate(auth.db.get_ca(issuers[0]).certificate_der).public_bytes(
                serialization.Encoding.PEM
            )
        )
        for count, file in sorted(files.items()):
            started = time.perf_counter()
            proc = subprocess.run(
                [
                    "openssl",
                    "crl",
                    "-inform",
                    "DER",
                    "-in",
                    str(file),
                    "-noout",
                    "-verify",
                    "-CAfile",
                    str(issuing),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            verdict = (proc.stdout + proc.stderr).strip().splitlines()
            _say(
                f"   openssl crl -verify, {count:>9,} entries: {verdict[-1] if verdict else '?'} "
                f"(exit {proc.returncode}, {time.perf_counter() - started:.1f}s)"
            )
        if files and not args.no_lint:
            count, file = min(files.items())
            lint = shutil.which("lint_crl") or str(Path(sys.executable).parent / "lint_crl")
            started = time.perf_counter()
            proc = subprocess.run(
                [
                    lint,
                    "lint",
                    "-t",
                    "CRL",
                    "-p",
                    "BR",
                    "-s",
                    "ERROR",
                    "--document-format",
                    "DER",
                    str(file),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            findings = [ln for ln in proc.stdout.splitlines() if "(ERROR)" in ln or "(FATAL)" in ln]
            _say(
                f"   pkilint lint_crl -p BR, {count:>9,} entries: {len(findings)} ERROR/FATAL "
                f"findings (exit {proc.returncode}, {time.perf_counter() - started:.1f}s)"
            )
        _say()
        _say("4. publish() from the database (read rows, build, sign, store, audit)")
        from crl.publisher import publish

        for count in db_sizes:
            issuer = issuers[0]
            started = time.perf_counter()
            _fill_database(auth, issuer, count - _revoked(auth, issuer))
            filled = time.perf_counter() - started
            started = time.perf_counter()
            [published] = publish(auth, issuer)
            took = time.perf_counter() - started
            _say(
                f"   {published.entries:>9,} entries: {took:.2f}s "
                f"(of which build+sign {published.seconds:.2f}s incl. the read; "
                f"{published.size / 1e6:.1f}MB; filling the table took {filled:.1f}s)"
            )
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not fail
        _say(f"benchmark failed: {type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _revoked(auth: Any, issuer: str) -> int:
    from sqlalchemy import func, select

    from ca.store import tables as t

    ca_id = auth.db.get_ca(issuer).id
    with auth.db.read() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(t.Certificate)
                .where(t.Certificate.issuer_id == ca_id, t.Certificate.status == "revoked")
            ).scalar_one()
        )


if __name__ == "__main__":
    sys.exit(main())
