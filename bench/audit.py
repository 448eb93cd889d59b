"""Audit chain throughput: appending events, their share of issuance, verifying a long chain.

    python bench/audit.py [--seconds N] [--rounds N] [--events N]

Everything lives in a temporary directory made at run time (a SoftHSM2 token, SQLite databases,
a root and a P-256 issuing CA, an export bundle) and removed at the end. It measures, round by
round and interleaved, so that machine noise hits every figure alike:

  a1. append, 1/tx    ``Database.append_audit``, one event per write transaction (commit each)
  a2. append, 100/tx  ``append_audit`` called 100 times in one write transaction
  b1. issue()         ``ca.issuance.issue`` as it runs, timing the audit appends inside it
  b2. issue(), no audit  the same with the audit appends skipped (bench only: never do this)

then builds a chain of ``--events`` events (default 1,000,000) in a copy of the database with a
bulk insert, a checkpoint signed in the HSM every ``checkpoint_every_events`` (1,000) as the
scheduler signs them, and verifies it:

  c1. database, fast      ``Database.verify_audit_chain`` (raw rows, ``ca.audit.verify_rows``)
  c2. database, entries   ``verify_chain(db.audit_entries())`` (parsed entries)
  c3. reference           the docs' verifier (parse + ``canonical_json`` per event) on the
                          first 100,000 events: the baseline the others are compared with
  c4. export + verify     ``ca.audit_export.export_bundle`` to a file and
                          ``ca.audit_bundle_verify.verify_bundle`` of it (a plain JSON Lines
                          file and ``verify_rows`` if those modules are missing or fail)

It prints the medians (events/s, seconds per million) and the targets: verify 1M events in under
10 s on one core; audit under 10% of in-process issuance time. A benchmark prints figures; it
never fails (exit status 0).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

VERIFY_TARGET_S = 10.0  # per 1M events
AUDIT_SHARE_TARGET = 0.10
REFERENCE_EVENTS = 100_000

TOML = """\
[ca]
root_key = "ec:P-384"
default_issuer = "bench"

[profiles.bench]
description = "benchmark: TLS server leaves"
issuer = "bench"
dns_names = ["."]
"""

#: What a certificate.requested event carries (about 600 bytes of canonical JSON).
REQUESTED_DETAILS: dict[str, Any] = {
    "issuer": "bench",
    "profile": "bench",
    "subject_cn": "svc.bench.internal",
    "sans": ["dns:svc.bench.internal", "dns:svc-alt.bench.internal"],
    "key_type": "ec:P-256",
    "not_before": "2026-01-01T00:00:00Z",
    "not_after": "2026-04-01T00:00:00Z",
    "request_sha256": "0" * 64,
    "ignored_csr_extensions": [],
    "metadata": {"owner": "team-bench", "contact": "bench@corp.test"},
    "profile_sha256": "1" * 64,
    "allowed": True,
    "violations": [],
    "matched": ["dns:svc.bench.internal matches ."],
}


@dataclass
class Figure:
    """One measured quantity: its per-round values and any errors."""

    label: str
    unit: str
    values: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def line(self) -> str:
        if not self.values:
            return f"  {self.label:44} failed" + (f": {self.errors[0]}" if self.errors else "")
        lo, hi = min(self.values), max(self.values)
        return f"  {self.label:44} {_num(self.median)} {self.unit}  [{_num(lo)}–{_num(hi)}]"


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def _say(text: str = "") -> None:
    print(text, flush=True)


def _err(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:200]


# --- machine info -------------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return "?"


def _first_line(*cmd: str) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except Exception:
        return "?"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def _mount_of(path: Path) -> str:
    best = ("", "?", "?")
    try:
        target = str(path.resolve())
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best[0]):
                    best = (mnt, fstype, dev)
    except OSError:
        pass
    return f"{best[1]} ({best[2]} on {best[0]})"


def _machine_info(tmp: Path) -> list[str]:
    try:
        usable = f" ({len(os.sched_getaffinity(0))} usable)"
    except Exception:
        usable = ""
    return [
        f"python        {platform.python_implementation()} {platform.python_version()}",
        f"sqlalchemy    {_version('sqlalchemy')}   SQLite {sqlite3.sqlite_version} "
        "(WAL, synchronous=FULL)",
        f"softhsm       {_first_line('softhsm2-util', '--version')}   "
        f"python-pkcs11 {_version('python-pkcs11')}",
        f"cpus          {os.cpu_count()}{usable}   {_cpu_model()}",
        f"platform      {platform.platform()}",
        f"temp dir fs   {_mount_of(tmp)}",
    ]


# --- set-up -------------------------------------------------------------------------------------


def _setup(tmp: Path) -> Any:
    """Token, config, database, root and issuing CA; returns the Authority."""
    import softhsm
    from ca.audit_key import create_audit_key
    from ca.authority import Authority
    from ca.config import load_config
    from ca.hierarchy import create_intermediate, create_root

    user_pin = softhsm.random_pin()
    token = softhsm.create_token(tmp / "softhsm", "hsmca", user_pin, softhsm.random_pin())
    os.environ["SOFTHSM2_CONF"] = str(token.conf_path)
    softhsm.write_pin_file(tmp / "pins" / "user.pin", user_pin)
    (tmp / "hsmca.toml").write_text(TOML, encoding="utf-8")
    environ = {"SOFTHSM2_CONF": str(token.conf_path)}  # no ambient HSMCA_* variables
    config = load_config(tmp, environ=environ)
    if config.hsm.module != token.module:
        config = config.model_copy(
            update={"hsm": config.hsm.model_copy(update={"module": token.module})}
        )
    auth = Authority.from_config(config, environ=environ)
    auth.db.upgrade()
    create_root(auth, actor="bench")
    create_intermediate(auth, "bench", key="ec:P-256", actor="bench")
    create_audit_key(auth, actor="bench")  # the checkpoints of the long chain (section c)
    return auth


def _csrs(count: int) -> list[bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = []
    for n in range(count):
        name = f"svc-{n}.bench.internal"
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
        )
        out.append(csr.public_bytes(serialization.Encoding.PEM))
    return out


# --- a/b: appending, alone and inside issuance ---------------------------------------------------


class AuditClock:
    """Times the audit appends of one Database by wrapping ``append_audit_many`` on the instance
    (``append_audit`` and every caller go through it); can also skip them (b2)."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.real = db.append_audit_many
        self.seconds = 0.0
        self.skip = False
        db.append_audit_many = self._append

    def _append(self, conn: Any, now: Any, events: Any) -> Any:
        if self.skip:
            return []
        start = time.perf_counter()
        try:
            return self.real(conn, now, events)
        finally:
            self.seconds += time.perf_counter() - start


def _run_for(fn: Callable[[], int], seconds: float) -> tuple[int, float]:
    done, start = 0, time.perf_counter()
    while True:
        done += fn()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done, elapsed


def _appenders(auth: Any) -> dict[str, Callable[[], int]]:
    db = auth.db

    def one() -> int:
        with db.write() as conn:
            db.append_audit(
                conn, auth.now(), "bench", "certificate.requested", "ab12", REQUESTED_DETAILS
            )
        return 1

    def hundred() -> int:
        with db.write() as conn:
            now = auth.now()
            for _ in range(100):
                db.append_audit(
                    conn, now, "bench", "certificate.requested", "ab12", REQUESTED_DETAILS
                )
        return 100

    return {"a1": one, "a2": hundred}


def measure_appends_and_issuance(auth: Any, rounds: int, seconds: float) -> None:
    from ca.issuance import IssuanceRequest, issue

    figures = {
        "a1": Figure("a1. append_audit, 1 event per transaction", "events/s"),
        "a2": Figure("a2. append_audit, 100 events per transaction", "events/s"),
        "b1": Figure("b1. issue(), with audit", "certs/s"),
        "b2": Figure("b2. issue(), audit appends skipped", "certs/s"),
    }
    share = Figure("b1: time in audit appends / issue() time", "%")
    clock = AuditClock(auth.db)
    pool = _csrs(100)
    counter = iter(range(10**12))

    def issue_one() -> int:
        issue(auth, IssuanceRequest(pool[next(counter) % len(pool)], "bench", "bench"))
        return 1

    steps = _appenders(auth)
    for step in (*steps.values(), issue_one):
        step()  # warm-up: HSM sessions, the issuer, statement caches
    order = ["a1", "a2", "b1", "b2"]
    _say(f"a/b: {rounds} rounds x {len(order)} figures x {seconds:g} s ...")
    for r in range(rounds):
        shift = r % len(order)
        for key in order[shift:] + order[:shift]:
            try:
                clock.skip = key == "b2"
                clock.seconds = 0.0
                done, elapsed = _run_for(steps.get(key, issue_one), seconds)
                figures[key].values.append(done / elapsed)
                if key == "b1":
                    share.values.append(100 * clock.seconds / elapsed)
            except Exception as exc:
                figures[key].errors.append(_err(exc))
            finally:
                clock.skip = False
        _say(
            f"  round {r + 1}/{rounds}: "
            + ", ".join(
                f"{k} {_num(f.values[-1]) if f.values else 'ERROR'}" for k, f in figures.items()
            )
        )
    _say()
    _say("Appending (SQLite, WAL, synchronous=FULL: every transaction is a durable commit):")
    for f in figures.values():
        _say(f.line())
    _say(share.line())
    b1, b2 = figures["b1"].median, figures["b2"].median
    measured = share.median
    if measured is not None:
        verdict = "ok" if measured / 100 < AUDIT_SHARE_TARGET else "ABOVE target"
        _say(f"  audit's share of issuance time (measured inside b1): {measured:.1f}%  {verdict}")
    if b1 and b2:
        added = b2 / b1 - 1
        _say(
            f"  b2/b1: issuance without audit is {added:+.1%} faster "
            f"({1e6 / b1:,.0f} µs vs {1e6 / b2:,.0f} µs per certificate; the commit is shared)"
        )
    _say(f"  target: audit adds < {AUDIT_SHARE_TARGET:.0%} to in-process issuance time")
    try:
        n = auth.db.verify_audit_chain()
        _say(f"  the bench CA's own chain verifies: {n:,} events")
    except Exception as exc:
        _say(f"  THE BENCH CA'S CHAIN DOES NOT VERIFY: {_err(exc)}")


# --- c: a long chain ------------------------------------------------------------------------------


def build_chain_database(path: Path, events: int, auth: Any = None, every: int = 0) -> float:
    """A database (the real schema) holding a valid chain of ``events`` events; returns seconds.

    The chain is computed in Python with the fast event encoding (``ca.audit.event_bytes``) and
    bulk-inserted: pairs of certificate.requested (~600 bytes) and certificate.issued events, with
    a non-ASCII subject now and then. With ``auth`` (whose database is copied first, so its CAs
    and audit key come along), ``ca.checkpoints.sign_checkpoint`` signs a real checkpoint in the
    HSM after every ``every`` events, as the scheduler does with ``checkpoint_every_events``.
    """
    from ca.audit import GENESIS_HASH, canonical_json, event_bytes, rfc3339
    from ca.checkpoints import sign_checkpoint
    from ca.store.db import Database

    long_auth = None
    if auth is not None:
        source = sqlite3.connect(auth.db.url.removeprefix("sqlite:///"))
        target = sqlite3.connect(path)
        source.backup(target)
        source.close()
        target.close()
        long_auth = replace(auth, db=Database(f"sqlite:///{path}"))
    else:
        db = Database(f"sqlite:///{path}")
        db.upgrade()
        db.dispose()
    start = time.perf_counter()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA synchronous=OFF")  # a bulk load: durability does not matter here
    head = con.execute("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (head[0], bytes.fromhex(head[1])) if head else (0, GENESIS_HASH)
    last = seq + events
    time_text = rfc3339(datetime.now(UTC)) if long_auth else "2026-01-01T00:00:00.000000Z"
    batch = every - 1 if long_auth and every > 1 else 50_000  # the checkpoint is one event too
    sha256 = hashlib.sha256
    while seq < last:
        rows: list[tuple[Any, ...]] = []
        first, end = seq + 1, min(last, seq + batch)
        for seq in range(first, end + 1):
            serial = format(0x1000_0000_0000_0000 + seq // 2, "x")
            if seq % 2:
                action = "certificate.requested"
                details = {**REQUESTED_DETAILS, "serial": serial}
            else:
                action = "certificate.issued"
                details = {
                    "serial": serial,
                    "issuer": "bench",
                    "profile": "bench",
                    "fingerprint_sha256": sha256(serial.encode()).hexdigest(),
                }
            if seq % 1000 == 0:
                details["note"] = 'Zürich ✓ "quoted" \\ tab\t'
            text = canonical_json(details).decode("utf-8")
            digest = sha256(prev + event_bytes(seq, time_text, "bench", action, serial, text))
            rows.append(
                (seq, time_text, "bench", action, serial, text, prev.hex(), digest.hexdigest())
            )
            prev = digest.digest()
        con.execute("BEGIN")
        con.executemany("INSERT INTO audit_events VALUES (?,?,?,?,?,?,?,?)", rows)
        con.execute("COMMIT")
        if long_auth is not None and seq < last:
            sign_checkpoint(long_auth, actor="bench")
            head = con.execute(
                "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            seq, prev = head[0], bytes.fromhex(head[1])
    con.close()
    if long_auth is not None:
        long_auth.db.dispose()
    return time.perf_counter() - start


def reference_verify(rows: Iterator[tuple[Any, ...]], limit: int) -> int:
    """The verifier of docs/audit-chain.md: parse details, re-encode the event, hash."""
    from ca.audit import GENESIS_HASH

    prev, n = GENESIS_HASH, 0
    for seq, time_, actor, action, subject, details, prev_hex, hash_hex in rows:
        event = {
            "seq": seq,
            "time": time_,
            "actor": actor,
            "action": action,
            "subject": subject,
            "details": json.loads(details),
        }
        data = json.dumps(
            event, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
        digest = hashlib.sha256(prev + data).digest()
        if prev_hex != prev.hex() or digest.hex() != hash_hex:
            raise RuntimeError(f"reference verifier: broken at seq {seq}")
        prev, n = digest, n + 1
        if n == limit:
            break
    return n


def _timed(fn: Callable[[], int]) -> tuple[int, float]:
    start = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - start


def _export_and_verify(auth: Any, db_path: Path, out: Path) -> tuple[str, int, float, float]:
    """(how, events, export seconds, verify seconds) through the export bundle, or through a
    plain JSON Lines file and ``verify_rows`` when the bundle modules are missing or fail."""
    from ca.store.db import Database

    long_auth = replace(auth, db=Database(f"sqlite:///{db_path}"))
    try:
        from cryptography import x509

        from ca.audit_bundle_verify import verify_bundle
        from ca.audit_export import export_bundle

        start = time.perf_counter()
        with open(out, "wb") as fh:
            export_bundle(long_auth, fh)
        exported = time.perf_counter() - start
        root = x509.load_der_x509_certificate(auth.db.get_ca("root").certificate_der)
        start = time.perf_counter()
        report = verify_bundle(out, [root])
        verified = time.perf_counter() - start
        errors = [f for f in report.errors if f.seq is not None]
        if errors:
            raise RuntimeError(f"bundle verification found: {errors[0]}")
        return "bundle (events.jsonl in a zip)", report.events, exported, verified
    except Exception as exc:
        _say(f"  export bundle unavailable ({_err(exc)}): using a plain JSON Lines file")
    finally:
        long_auth.db.dispose()
    return ("plain JSON Lines", *_plain_jsonl(db_path, out.with_suffix(".jsonl")))


def _plain_jsonl(db_path: Path, out: Path) -> tuple[int, float, float]:
    from ca.audit import canonical_json, verify_rows
    from ca.store.db import Database

    db = Database(f"sqlite:///{db_path}")
    start = time.perf_counter()
    with open(out, "wb") as fh:
        for seq, time_, actor, action, subject, details, prev_hex, hash_hex in db.audit_rows():
            fh.write(
                canonical_json(
                    {
                        "seq": seq,
                        "time": time_,
                        "actor": actor,
                        "action": action,
                        "subject": subject,
                        "details": json.loads(details),
                        "prev_hash": prev_hex,
                        "hash": hash_hex,
                    }
                )
                + b"\n"
            )
    exported = time.perf_counter() - start
    db.dispose()

    def rows() -> Iterator[tuple[Any, ...]]:
        with open(out, "rb") as fh:
            for line in fh:
                e = json.loads(line)
                yield (
                    e["seq"],
                    e["time"],
                    e["actor"],
                    e["action"],
                    e["subject"],
                    canonical_json(e["details"]).decode("utf-8"),
                    e["prev_hash"],
                    e["hash"],
                )

    start = time.perf_counter()
    n = verify_rows(rows())
    return n, exported, time.perf_counter() - start


def measure_verification(auth: Any, tmp: Path, events: int, rounds: int) -> None:
    from ca.audit import verify_chain
    from ca.store.db import Database

    path = tmp / "long.db"
    every = auth.config.audit.checkpoint_every_events
    _say(
        f"c: building a chain of {events:,} events (bulk insert), with a checkpoint signed in "
        f"the HSM every {every:,} events as the scheduler signs them ..."
    )
    built = build_chain_database(path, events, auth, every)
    size = path.stat().st_size
    with sqlite3.connect(path) as con:
        (signed,) = con.execute("SELECT count(*) FROM audit_checkpoints").fetchone()
    _say(
        f"  built in {built:.1f} s ({events / built:,.0f} events/s), {size / 1e6:,.0f} MB, "
        f"{signed:,} checkpoints"
    )
    db = Database(f"sqlite:///{path}")
    figures = {
        "c1": Figure("c1. database, fast (verify_audit_chain)", "events/s"),
        "c2": Figure("c2. database, entries (verify_chain)", "events/s"),
        "c3": Figure(f"c3. reference (first {min(events, REFERENCE_EVENTS):,} events)", "events/s"),
    }
    runs: dict[str, Callable[[], int]] = {
        "c1": db.verify_audit_chain,
        "c2": lambda: verify_chain(db.audit_entries()),
        "c3": lambda: reference_verify(db.audit_rows(), REFERENCE_EVENTS),
    }
    for r in range(rounds):
        parts = []
        for key in list(runs)[r % 3 :] + list(runs)[: r % 3]:
            try:
                n, seconds = _timed(runs[key])
                figures[key].values.append(n / seconds)
                parts.append(f"{key} {seconds:.2f} s")
            except Exception as exc:
                figures[key].errors.append(_err(exc))
                parts.append(f"{key} ERROR {_err(exc)}")
        _say(f"  round {r + 1}/{rounds}: " + ", ".join(parts))
    db.dispose()

    export = Figure("c4. export bundle, written", "events/s")
    bundle = Figure("c4. export bundle, verified offline", "events/s")
    how = "?"
    try:
        how, n, exported, verified = _export_and_verify(auth, path, tmp / "export.zip")
        export.values.append(n / exported)
        bundle.values.append(n / verified)
        _say(
            f"  export ({how}): {n:,} events written in {exported:.2f} s, verified in {verified:.2f} s"
        )
    except Exception as exc:
        bundle.errors.append(_err(exc))
        traceback.print_exc(file=sys.stdout)

    _say()
    _say(f"Verification of a {events:,}-event chain (one core; medians of {rounds} rounds):")
    for f in (*figures.values(), export, bundle):
        _say(f.line())
    reference = figures["c3"].median
    for f in (*figures.values(), bundle):
        rate = f.median
        if not rate:
            continue
        per_million = 1e6 / rate
        verdict = "ok" if per_million < VERIFY_TARGET_S else "ABOVE target"
        ratio = f"  ({rate / reference:.1f}x reference)" if reference else ""
        _say(f"  {f.label[:3]} 1M events in {per_million:5.2f} s  {verdict}{ratio}")
    _say(f"  target: verify 1M events in < {VERIFY_TARGET_S:g} s on one core")


# --- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="one round of a/b (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per figure (default 3)")
    parser.add_argument(
        "--events", type=int, default=1_000_000, help="length of the chain to verify (1,000,000)"
    )
    args = parser.parse_args(argv)
    seconds, rounds, events = max(0.1, args.seconds), max(1, args.rounds), max(2, args.events)
    tmp = Path(tempfile.mkdtemp(prefix="hsmca-bench-audit-"))
    auth = None
    try:
        _say("hsmca audit benchmark")
        for line in _machine_info(tmp):
            _say(f"  {line}")
        _say(f"  settings      {rounds} rounds, {seconds:g} s per a/b figure, {events:,} events")
        _say()
        start = time.perf_counter()
        try:
            auth = _setup(tmp)
        except Exception as exc:
            _say(f"SET-UP FAILED: {_err(exc)}")
            traceback.print_exc(file=sys.stdout)
            return
        _say(
            f"set-up: token, database, root (ec:P-384), bench (ec:P-256) in "
            f"{time.perf_counter() - start:.1f} s"
        )
        for section in (
            lambda: measure_appends_and_issuance(auth, rounds, seconds),
            lambda: measure_verification(auth, tmp, events, rounds),
        ):
            try:
                section()
            except Exception as exc:  # one section failing still lets the other report
                _say(f"SECTION FAILED: {_err(exc)}")
                traceback.print_exc(file=sys.stdout)
            _say()
    except KeyboardInterrupt:
        _say("interrupted")
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
    except SystemExit:  # --help, or a usage error argparse printed
        pass
    except BaseException as exc:  # noqa: BLE001 - exit 0 whatever happens
        print(f"UNEXPECTED ERROR: {_err(exc)}", flush=True)
    sys.exit(0)
