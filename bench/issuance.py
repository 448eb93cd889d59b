"""Issuance throughput: raw HSM signatures, bare build-and-sign, and stored-and-audited issuance.

    python bench/issuance.py [--seconds N] [--batch N] [--rounds N] [--pool N]

Everything lives in a temporary directory made at run time (a SoftHSM2 token, an SQLite database,
a root CA and two issuing CAs, one P-256 and one RSA-2048) and removed at the end. For each issuer
it measures, interleaved round by round so that machine noise hits every figure alike:

  a. sign      raw HSM signatures (``issuer.key.sign``) over a 256-byte message
  b. build     bare build-and-sign: check CSR, validity, build the leaf, sign in the HSM, verify
               (the CPU and HSM work of issuance, without the database)
  c. issue     ``ca.issuance.issue``: stored and audited, one certificate per call
  d. batch     ``ca.issuance.issue_many`` with ``--batch`` requests per call (group commit)

and prints the median of the per-round rates with the ratios c/b and d/b (target: stored-and-
audited issuance at least 40% of bare build-and-sign). It ends by verifying the audit chain and
counting the stored certificates. A benchmark prints figures; it never fails (exit status 0).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ISSUERS = (("bench-ec", "ec:P-256"), ("bench-rsa", "rsa:2048"))
PROFILE_OF = {"bench-ec": "bench-ec", "bench-rsa": "bench-rsa"}
KINDS = ("sign", "build", "issue", "batch")
LABELS = {
    "sign": "a. HSM signatures (raw)",
    "build": "b. build-and-sign (no DB)",
    "issue": "c. issue(), stored+audited",
    "batch": "d. issue_many(), stored+audited",
}
TARGET = 0.40

TOML = """\
[ca]
root_key = "ec:P-384"
default_issuer = "bench-ec"

[profiles.bench-ec]
description = "benchmark: TLS server leaves from the P-256 issuer"
issuer = "bench-ec"

[profiles.bench-rsa]
description = "benchmark: TLS server leaves from the RSA-2048 issuer"
issuer = "bench-rsa"
"""


@dataclass
class Cell:
    """One (issuer, measurement) pair: its per-round rates and any errors."""

    issuer: str
    kind: str
    rates: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None


def _say(text: str = "") -> None:
    print(text, flush=True)


def _err(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


# --- machine info ------------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return "?"


def _softhsm_version() -> str:
    tool = shutil.which("softhsm2-util")
    if not tool:
        return "?"
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "?"
    except Exception:
        return "?"


def _filesystem_of(path: Path) -> str:
    """The mount (fstype, device) holding ``path``: fsync cost depends on it."""
    try:
        best = ("", "?", "?")
        target = str(path.resolve())
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best[0]):
                    best = (mnt, fstype, dev)
        return f"{best[1]} ({best[2]} on {best[0]})"
    except Exception:
        return "?"


def _machine_info(tmp: Path) -> list[str]:
    import sqlite3

    try:
        affinity = len(os.sched_getaffinity(0))
    except Exception:
        affinity = None
    cpus = f"{os.cpu_count()}" + (f" ({affinity} usable)" if affinity is not None else "")
    cpu_model = "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except Exception:
        pass
    return [
        f"python        {platform.python_implementation()} {platform.python_version()} "
        f"({sys.executable})",
        f"cryptography  {_version('cryptography')}   ({_openssl_version()})",
        f"python-pkcs11 {_version('python-pkcs11')}   SoftHSM {_softhsm_version()}",
        f"sqlalchemy    {_version('sqlalchemy')}   "
        f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=FULL)",
        f"cpus          {cpus}   {cpu_model}",
        f"platform      {platform.platform()}",
        f"temp dir fs   {_filesystem_of(tmp)}",
    ]


def _openssl_version() -> str:
    try:
        from cryptography.hazmat.backends.openssl.backend import backend

        return str(backend.openssl_version_text())
    except Exception:
        return "?"


# --- set-up -------------------------------------------------------------------------------------


def _make_csrs(count: int) -> list[bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    pems = []
    for n in range(count):
        name = f"svc-{n}.bench.internal"
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        pems.append(csr.public_bytes(serialization.Encoding.PEM))
    return pems


def _setup(tmp: Path) -> Any:
    """Token, config, database, root and the two issuing CAs; returns the Authority."""
    import softhsm
    from ca.authority import Authority
    from ca.config import load_config
    from ca.hierarchy import create_intermediate, create_root

    user_pin, so_pin = softhsm.random_pin(), softhsm.random_pin()
    token = softhsm.create_token(tmp / "softhsm", "hsmca", user_pin, so_pin)
    os.environ["SOFTHSM2_CONF"] = str(token.conf_path)
    softhsm.write_pin_file(tmp / "pins" / "user.pin", user_pin)
    (tmp / "hsmca.toml").write_text(TOML, encoding="utf-8")
    # A clean environment: ambient HSMCA_* variables must not redirect the benchmark.
    environ = {"SOFTHSM2_CONF": str(token.conf_path)}
    config = load_config(tmp, environ=environ)
    if config.hsm.module != token.module:
        config = config.model_copy(
            update={"hsm": config.hsm.model_copy(update={"module": token.module})}
        )
    auth = Authority.from_config(config, environ=environ)
    auth.db.upgrade()
    create_root(auth, actor="bench")
    for name, key in ISSUERS:
        create_intermediate(auth, name, key=key, actor="bench")
    return auth


# --- the measurements ------------------------------------------------------------------------


class Workload:
    """One callable per (issuer, kind); each call does one unit of work and returns its count."""

    def __init__(self, auth: Any, csrs: list[bytes], batch: int) -> None:
        self.auth = auth
        self.csrs = csrs
        self.batch = batch
        self._next = 0
        self.issued = 0  # certificates issue()/issue_many() returned, failed rounds included

    def _csr(self) -> bytes:
        csr = self.csrs[self._next % len(self.csrs)]
        self._next += 1
        return csr

    def step(self, issuer_name: str, kind: str) -> Callable[[], int]:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, padding

        from ca.csr import check_csr
        from ca.issuance import IssuanceRequest, issue, issue_many, new_serial
        from ca.policy import Requester, decide
        from ca.x509build import build_leaf, leaf_validity

        auth = self.auth
        operator = Requester.operator("bench")
        issuer = auth.issuer(issuer_name)
        profile_name = PROFILE_OF[issuer_name]
        profile = auth.profile(profile_name)
        if profile.issuer != issuer_name:
            raise RuntimeError(
                f"profile {profile_name!r} issues from {profile.issuer!r}, not {issuer_name!r}"
            )
        data = os.urandom(256)

        if kind == "sign":
            if isinstance(issuer.key, ec.EllipticCurvePrivateKey):
                algorithm = ec.ECDSA(hashes.SHA256())

                def sign() -> int:
                    issuer.key.sign(data, algorithm)
                    return 1
            else:
                pad, digest = padding.PKCS1v15(), hashes.SHA256()

                def sign() -> int:
                    issuer.key.sign(data, pad, digest)
                    return 1

            return sign

        if kind == "build":

            def build() -> int:
                facts = check_csr(self._csr())
                now = auth.now()
                decision = decide(facts, profile, operator, now)
                not_before, not_after = leaf_validity(profile, now, issuer.certificate)
                builder = build_leaf(
                    facts,
                    decision,
                    profile,
                    issuer.certificate,
                    new_serial(),
                    not_before,
                    not_after,
                    issuer.urls,
                )
                cert = builder.sign(issuer.key, issuer.hash_algorithm)
                cert.verify_directly_issued_by(issuer.certificate)
                return 1

            return build

        if kind == "issue":

            def one() -> int:
                issue(auth, IssuanceRequest(self._csr(), profile_name, "bench"))
                self.issued += 1
                return 1

            return one

        if kind == "batch":

            def many() -> int:
                reqs = [
                    IssuanceRequest(self._csr(), profile_name, "bench") for _ in range(self.batch)
                ]
                results = issue_many(auth, reqs)
                self.issued += sum(1 for r in results if not isinstance(r, Exception))
                denied = [r for r in results if isinstance(r, Exception)]
                if denied:
                    raise RuntimeError(
                        f"{len(denied)} of {len(reqs)} requests denied: {_err(denied[0])}"
                    )
                return len(results)

            return many

        raise ValueError(kind)


def _run_for(fn: Callable[[], int], seconds: float) -> tuple[int, float]:
    """Call ``fn`` until ``seconds`` have passed (at least once); return (units, elapsed)."""
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        done += fn()
        now = time.perf_counter()
        if now >= deadline:
            return done, now - start


# --- report ---------------------------------------------------------------------------------------


def _fmt_rate(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "—"


def _report(cells: dict[tuple[str, str], Cell], batch: int, rounds: int, seconds: float) -> None:
    _say()
    _say(
        f"Medians of {rounds} rounds of ~{seconds:g} s per figure (per-round min–max in brackets)."
    )
    _say("Units: signatures/s for (a), certificates/s for (b)-(d).")
    _say()
    names = [n for n, _ in ISSUERS]
    keys = dict(ISSUERS)
    head = f"{'':34}" + "".join(f"{f'{n} ({keys[n]})':>30}" for n in names)
    _say(head)
    _say("-" * len(head))
    for kind in KINDS:
        label = LABELS[kind] + (f" ×{batch}" if kind == "batch" else "")
        row = f"{label:34}"
        for n in names:
            c = cells[(n, kind)]
            if c.rates:
                txt = f"{_fmt_rate(c.median)} [{min(c.rates):,.0f}–{max(c.rates):,.0f}]"
            else:
                txt = "failed"
            row += f"{txt:>30}"
        _say(row)
    _say("-" * len(head))

    def ratio_row(label: str, num: str) -> None:
        row = f"{label:34}"
        for n in names:
            b, x = cells[(n, "build")].median, cells[(n, num)].median
            if b and x is not None:
                r = x / b
                txt = f"{r:.0%} {'ok' if r >= TARGET else 'BELOW target'}"
            else:
                txt = "—"
            row += f"{txt:>30}"
        _say(row)

    ratio_row(f"c/b (target >= {TARGET:.0%})", "issue")
    ratio_row(f"d/b (target >= {TARGET:.0%})", "batch")

    row = f"{'c: time per issue() call':34}"
    for n in names:
        m = cells[(n, "issue")].median
        row += f"{(f'{1e6 / m:,.0f} µs' if m else '—'):>30}"
    _say(row)
    row = f"{'b: time per build-and-sign':34}"
    for n in names:
        m = cells[(n, "build")].median
        row += f"{(f'{1e6 / m:,.0f} µs' if m else '—'):>30}"
    _say(row)
    row = f"{'c - b: storage+audit per cert':34}"
    for n in names:
        bm, cm = cells[(n, "build")].median, cells[(n, "issue")].median
        row += f"{(f'{1e6 / cm - 1e6 / bm:,.0f} µs' if bm and cm else '—'):>30}"
    _say(row)
    row = f"{'d: time per cert in a batch':34}"
    for n in names:
        m = cells[(n, "batch")].median
        row += f"{(f'{1e6 / m:,.0f} µs' if m else '—'):>30}"
    _say(row)

    failures = [(k, c) for k, c in cells.items() if c.errors]
    if failures:
        _say()
        _say("Errors:")
        for (n, kind), c in failures:
            for e in dict.fromkeys(c.errors):
                _say(f"  {n} {kind}: {e} (x{c.errors.count(e)})")


def _verify(auth: Any, issued: int) -> None:
    from ca.audit import verify_chain
    from ca.store import tables as t

    _say()
    try:
        stored = auth.db.count(t.Certificate)
        cas = len(auth.db.list_cas())
        intermediates = cas - 1  # the intermediates' certificates are stored too, the root's is not
        _say(
            f"Stored certificates: {stored:,} in the database "
            f"({issued:,} issued by this run + {intermediates} intermediate CA certificates)"
            + ("" if stored == issued + intermediates else "  MISMATCH")
        )
        issued_events = len(auth.db.audit_events("certificate.issued"))
        _say(
            f"certificate.issued audit events: {issued_events:,}"
            + ("" if issued_events == issued else "  MISMATCH")
        )
    except Exception as exc:
        _say(f"counting stored certificates failed: {_err(exc)}")
    try:
        start = time.perf_counter()
        n = verify_chain(auth.db.audit_entries())
        _say(
            f"Audit chain verified: {n:,} events, no gap or edit "
            f"({time.perf_counter() - start:.2f} s)"
        )
    except Exception as exc:
        _say(f"AUDIT CHAIN VERIFICATION FAILED: {_err(exc)}")


# --- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="length of one round of one figure (default 1)"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds per figure; medians are reported (default 5)"
    )
    parser.add_argument(
        "--batch", type=int, default=32, help="requests per issue_many() call (default 32)"
    )
    parser.add_argument(
        "--pool", type=int, default=200, help="pre-generated P-256 CSRs (default 200)"
    )
    args = parser.parse_args(argv)
    seconds = max(0.05, args.seconds)
    rounds = max(1, args.rounds)
    batch = max(1, args.batch)
    pool = max(1, args.pool)

    tmp = Path(tempfile.mkdtemp(prefix="hsmca-bench-"))
    auth = None
    cells: dict[tuple[str, str], Cell] = {(n, k): Cell(n, k) for n, _ in ISSUERS for k in KINDS}
    try:
        _say("hsmca issuance benchmark")
        for line in _machine_info(tmp):
            _say(f"  {line}")
        _say(
            f"  settings      {rounds} rounds x {seconds:g} s x {len(cells)} figures "
            f"(~{rounds * seconds * len(cells):.0f} s measuring), batch {batch}, {pool} CSRs"
        )
        _say()

        t0 = time.perf_counter()
        try:
            auth = _setup(tmp)
        except Exception as exc:
            _say(f"SET-UP FAILED: {_err(exc)}")
            traceback.print_exc(file=sys.stdout)
            return
        _say(
            f"set-up: token, database, root (ec:P-384), bench-ec (ec:P-256), bench-rsa (rsa:2048) "
            f"in {time.perf_counter() - t0:.1f} s"
        )
        t0 = time.perf_counter()
        csrs = _make_csrs(pool)
        _say(f"pre-generated {len(csrs)} P-256 CSRs in {time.perf_counter() - t0:.1f} s")

        work = Workload(auth, csrs, batch)
        steps: dict[tuple[str, str], Callable[[], int]] = {}
        for key, cell in cells.items():
            try:
                steps[key] = work.step(*key)
                steps[key]()  # warm up: loads the issuer, opens sessions, fills caches
            except Exception as exc:
                cell.errors.append(f"set-up/warm-up: {_err(exc)}")
                _say(f"  {key[0]} {key[1]}: warm-up failed: {_err(exc)}")

        order = [k for k in cells if k in steps]
        _say(f"measuring {len(order)} figures, interleaved, {rounds} rounds ...")
        for r in range(rounds):
            # Rotate the order each round so no figure always runs first or last.
            shift = (r * 3) % len(order) if order else 0
            this_round = order[shift:] + order[:shift]
            parts = []
            for key in this_round:
                cell = cells[key]
                try:
                    done, elapsed = _run_for(steps[key], seconds)
                    cell.rates.append(done / elapsed)
                    parts.append(f"{key[0][6:]}/{key[1]} {done / elapsed:,.0f}")
                except Exception as exc:
                    cell.errors.append(_err(exc))
                    parts.append(f"{key[0][6:]}/{key[1]} ERROR")
                    _say(f"  round {r + 1}: {key[0]} {key[1]} failed: {_err(exc)}")
            _say(f"  round {r + 1}/{rounds}: " + ", ".join(parts))

        _report(cells, batch, rounds, seconds)
        _verify(auth, work.issued)
    except KeyboardInterrupt:
        _say("interrupted")
    except Exception as exc:  # a benchmark never fails
        _say(f"UNEXPECTED ERROR: {_err(exc)}")
        traceback.print_exc(file=sys.stdout)
    finally:
        if auth is not None:
            for closer in (auth.keys.close, auth.db.dispose):
                try:
                    closer()
                except Exception:
                    pass
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:  # --help, or a usage error already printed by argparse
        pass
    except BaseException as exc:  # noqa: BLE001 - exit 0 whatever happens
        print(f"UNEXPECTED ERROR: {_err(exc)}", flush=True)
    sys.exit(0)
