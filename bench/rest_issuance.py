"""REST issuance throughput: ``POST /api/v1/certificates`` on real gunicorn, beside in-process issuance.

    python bench/rest_issuance.py [--clients 8] [--seconds 15] [--rounds 3] [--pool 400]

Everything lives in a temporary directory made at run time (a SoftHSM2 token, an SQLite database,
a root CA and a P-256 issuing CA, an API client) and removed at the end. gunicorn serves
``web:create_app()`` on 127.0.0.1 with ``[server] workers`` x ``threads`` gthread threads (``tests/live.py``; ``--workers``/``--threads``), and
this process measures, interleaved round by round so that machine noise hits every figure alike:

  rest    ``--clients`` threads, each on its own keep-alive HTTP connection, POST pre-generated
          P-256 CSRs as JSON for ``--seconds``: certificates/s and the p50/p99 latency
  issue   ``ca.issuance.issue`` in this process, one at a time (stored and audited)
  queue   ``ca.batching.IssuanceQueue`` in this process, ``--clients`` threads (group commit,
          what each gunicorn worker does behind the API)

and prints the medians over the rounds with the ratios rest/issue and rest/queue. The load
generator runs on the same machine as the server; its own CPU use is printed beside the figures.
It ends by counting the stored certificates and verifying the audit chain. A benchmark prints
figures; it never fails (exit status 0).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import issuance as base  # noqa: E402  (bench/issuance.py: machine info, CSRs, messages)

KINDS = ("rest", "issue", "queue")
PROFILE = "bench"
CLIENT = "bench-client"

TOML = """\
[server]
public_base_url = "http://pki.bench.test"

[hsm]
module = "{module}"
softhsm_conf = "{softhsm_conf}"

[ca]
root_key = "ec:P-384"
intermediate_key = "ec:P-256"

[profiles.{profile}]
description = "benchmark: TLS server leaves from the P-256 issuer"
dns_names = [".bench.internal"]
"""

_say = base._say
_err = base._err


@dataclass
class Cell:
    """One measurement's per-round rates, latencies and errors."""

    kind: str
    rates: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @staticmethod
    def _median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    @property
    def rate(self) -> float | None:
        return self._median(self.rates)


@dataclass
class Run:
    """What one timed run did."""

    done: int
    elapsed: float
    latencies: list[float]
    cpu: float
    errors: list[str]


# --- set-up -------------------------------------------------------------------------------------


def _setup(tmp: Path) -> tuple[Any, str]:
    """Token, config, database, root and issuing CA, the API client; returns (Authority, token)."""
    import softhsm
    from ca.authority import Authority
    from ca.clients import create_client
    from ca.config import load_config
    from ca.hierarchy import create_intermediate, create_root

    user_pin = softhsm.random_pin()
    token = softhsm.create_token(tmp / "softhsm", "hsmca", user_pin, softhsm.random_pin())
    os.environ["SOFTHSM2_CONF"] = str(token.conf_path)
    softhsm.write_pin_file(tmp / "pins" / "user.pin", user_pin)
    (tmp / "hsmca.toml").write_text(
        TOML.format(module=token.module, softhsm_conf=token.conf_path, profile=PROFILE),
        encoding="utf-8",
    )
    environ = {"SOFTHSM2_CONF": str(token.conf_path)}
    config = load_config(tmp, environ=environ)
    auth = Authority.from_config(config, environ=environ)
    auth.db.upgrade()
    create_root(auth, actor="bench")
    create_intermediate(auth, config.ca.intermediate_name, actor="bench")
    _, bearer = create_client(auth, CLIENT, ["enroll"], [PROFILE], [], actor="bench")
    return auth, bearer


def _make_csrs(count: int) -> list[bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pems = []
    for n in range(count):
        name = f"svc-{n}.bench.internal"
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
        )
        pems.append(csr.public_bytes(serialization.Encoding.PEM))
    return pems


# --- the measurements ---------------------------------------------------------------------------


class Pool:
    """Hands out pre-generated CSRs round-robin to any number of threads."""

    def __init__(self, csrs: list[bytes]) -> None:
        self.csrs = csrs
        self.bodies = [
            json.dumps({"csr": c.decode(), "profile": PROFILE}).encode("utf-8") for c in csrs
        ]
        self._lock = threading.Lock()
        self._next = 0

    def index(self) -> int:
        with self._lock:
            self._next += 1
            return self._next % len(self.csrs)


def _threads(
    count: int, seconds: float, one: Callable[[int], None], setup: Callable[[], Any] | None = None
) -> Run:
    """Run ``one(thread_no)`` in ``count`` threads until ``seconds`` pass; per-call latencies."""
    latencies: list[list[float]] = [[] for _ in range(count)]
    errors: list[str] = []
    start_gate = threading.Barrier(count + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        mine = latencies[i]
        start_gate.wait()
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at[0]:
                return
            try:
                one(i)
            except Exception as exc:  # counted, not fatal: a benchmark reports what happened
                errors.append(_err(exc))
                continue
            mine.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    cpu0 = time.process_time()
    start = time.perf_counter()
    stop_at[0] = start + seconds
    start_gate.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    flat = [x for lst in latencies for x in lst]
    return Run(len(flat), elapsed, flat, cpu, errors)


class RestLoad:
    """``clients`` keep-alive HTTP connections posting enrollments to the live server."""

    def __init__(self, port: int, bearer: str, pool: Pool, clients: int) -> None:
        self.port = port
        self.pool = pool
        self.clients = clients
        self.headers = {
            "Authorization": f"Bearer {bearer}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self.conns: list[http.client.HTTPConnection | None] = [None] * clients
        self.created = 0
        self._lock = threading.Lock()

    def _conn(self, i: int) -> http.client.HTTPConnection:
        conn = self.conns[i]
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.conns[i] = conn
        return conn

    def one(self, i: int) -> None:
        body = self.pool.bodies[self.pool.index()]
        reused = self.conns[i] is not None
        try:
            status, data = self._post(i, body)
        except (OSError, http.client.HTTPException):
            if not reused:
                raise
            # gunicorn closes idle keep-alive connections (2 s): retry once on a new one, as
            # any HTTP client library does.
            status, data = self._post(i, body)
        if status != 201:
            raise RuntimeError(f"HTTP {status}: {data[:200]!r}")
        with self._lock:
            self.created += 1

    def _post(self, i: int, body: bytes) -> tuple[int, bytes]:
        conn = self._conn(i)
        try:
            conn.request("POST", "/api/v1/certificates", body=body, headers=self.headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            self.conns[i] = None
            raise

    def run(self, seconds: float) -> Run:
        return _threads(self.clients, seconds, self.one)

    def close(self) -> None:
        for conn in self.conns:
            if conn is not None:
                conn.close()


class InProcess:
    """``ca.issuance.issue`` one at a time, and an ``IssuanceQueue`` fed by several threads."""

    def __init__(self, auth: Any, pool: Pool, clients: int) -> None:
        from ca.batching import IssuanceQueue

        api = auth.config.api
        self.auth = auth
        self.pool = pool
        self.clients = clients
        self.queue = IssuanceQueue(auth, api.batch_max, api.batch_window_ms / 1000)
        self.created = 0
        self._lock = threading.Lock()

    def _request(self) -> Any:
        from ca.issuance import IssuanceRequest

        return IssuanceRequest(self.pool.csrs[self.pool.index()], PROFILE, "bench")

    def _count(self) -> None:
        with self._lock:
            self.created += 1

    def issue_one(self, _: int) -> None:
        from ca.issuance import issue

        issue(self.auth, self._request())
        self._count()

    def queue_one(self, _: int) -> None:
        self.queue.issue(self._request())
        self._count()

    def run(self, kind: str, seconds: float) -> Run:
        if kind == "issue":
            return _threads(1, seconds, self.issue_one)
        return _threads(self.clients, seconds, self.queue_one)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


# --- report ---------------------------------------------------------------------------------------


def _fmt(value: float | None, unit: str = "", digits: int = 0) -> str:
    return f"{value:,.{digits}f}{unit}" if value is not None else "—"


def _report(cells: dict[str, Cell], clients: int, rounds: int, seconds: float) -> None:
    labels = {
        "rest": f"REST POST /api/v1/certificates, {clients} clients",
        "issue": "in-process issue(), one at a time",
        "queue": f"in-process IssuanceQueue, {clients} threads",
    }
    _say()
    _say(
        f"Medians of {rounds} rounds of ~{seconds:g} s per figure (per-round min–max in brackets)."
    )
    _say()
    head = f"{'':44}{'certs/s':>22}{'p50 ms':>10}{'p99 ms':>10}{'load-gen CPU':>14}"
    _say(head)
    _say("-" * len(head))
    for kind in KINDS:
        c = cells[kind]
        if c.rates:
            rate = f"{_fmt(c.rate)} [{min(c.rates):,.0f}–{max(c.rates):,.0f}]"
        else:
            rate = "failed"
        cpu = Cell._median(c.client_cpu)
        row = (
            f"{labels[kind]:44}{rate:>22}"
            f"{_fmt(Cell._median(c.p50), '', 1):>10}{_fmt(Cell._median(c.p99), '', 1):>10}"
            f"{(f'{cpu:.0%}' if cpu is not None else '—'):>14}"
        )
        _say(row)
    _say("-" * len(head))
    rest = cells["rest"].rate
    for kind in ("issue", "queue"):
        other = cells[kind].rate
        ratio = f"{rest / other:.0%}" if rest and other else "—"
        _say(f"{'REST / ' + labels[kind]:80}{ratio:>10}")
    _say(
        "load-gen CPU: this process's CPU time over wall time during the figure (1 core = 100%); "
        "the REST figure shares the machine's cores with it."
    )
    failures = [c for c in cells.values() if c.errors]
    if failures:
        _say()
        _say("Errors:")
        for c in failures:
            for e in dict.fromkeys(c.errors):
                _say(f"  {c.kind}: {e} (x{c.errors.count(e)})")


def _verify(auth: Any, created: int) -> None:
    from ca.audit import verify_chain
    from ca.store import tables as t

    _say()
    try:
        stored = auth.db.count(t.Certificate)
        cas = (
            len(auth.db.list_cas()) - 1
        )  # the intermediates' certificates are stored, not the root's
        _say(
            f"Stored certificates: {stored:,} ({created:,} issued by this run + {cas} intermediate)"
            + ("" if stored == created + cas else "  MISMATCH")
        )
        start = time.perf_counter()
        n = verify_chain(auth.db.audit_entries())
        _say(f"Audit chain verified: {n:,} events ({time.perf_counter() - start:.2f} s)")
    except Exception as exc:
        _say(f"VERIFICATION FAILED: {_err(exc)}")


# --- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    from ca.config import ServerConfig

    defaults = ServerConfig()
    parser.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help=f"gunicorn workers (default: [server] workers = {defaults.workers})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=defaults.threads,
        help=f"gthread threads per worker (default: [server] threads = {defaults.threads})",
    )
    parser.add_argument(
        "--seconds", type=float, default=15.0, help="length of one round of one figure (default 15)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds per figure; medians are reported (default 3)"
    )
    parser.add_argument(
        "--pool", type=int, default=400, help="pre-generated P-256 CSRs (default 400)"
    )
    args = parser.parse_args(argv)
    clients = max(1, args.clients)
    seconds = max(0.5, args.seconds)
    rounds = max(1, args.rounds)

    tmp = Path(tempfile.mkdtemp(prefix="hsmca-rest-bench-"))
    auth = server = rest = local = None
    cells = {k: Cell(k) for k in KINDS}
    try:
        _say("hsmca REST issuance benchmark")
        for line in base._machine_info(tmp):
            _say(f"  {line}")
        _say(
            f"  settings      {clients} clients, {rounds} rounds x {seconds:g} s x {len(KINDS)} "
            f"figures (~{rounds * seconds * len(KINDS):.0f} s measuring), {args.pool} CSRs; "
            f"gunicorn {args.workers} worker(s) x {args.threads} gthread threads"
        )
        _say()
        t0 = time.perf_counter()
        try:
            auth, bearer = _setup(tmp)
        except Exception as exc:
            _say(f"SET-UP FAILED: {_err(exc)}")
            traceback.print_exc(file=sys.stdout)
            return
        _say(
            f"set-up: token, database, root (ec:P-384), issuing (ec:P-256), client in {time.perf_counter() - t0:.1f} s"
        )
        t0 = time.perf_counter()
        pool = Pool(_make_csrs(max(1, args.pool)))
        _say(f"pre-generated {len(pool.csrs)} P-256 CSRs in {time.perf_counter() - t0:.1f} s")

        from live import start_server

        t0 = time.perf_counter()
        server = start_server(
            tmp,
            workers=args.workers,
            threads=args.threads,
            env={"SOFTHSM2_CONF": os.environ["SOFTHSM2_CONF"]},
        )
        _say(
            f"gunicorn on 127.0.0.1:{server.port} answered /healthz in {time.perf_counter() - t0:.1f} s"
        )

        rest = RestLoad(server.port, bearer, pool, clients)
        local = InProcess(auth, pool, clients)
        runners: dict[str, Callable[[float], Run]] = {
            "rest": rest.run,
            "issue": lambda s: local.run("issue", s),
            "queue": lambda s: local.run("queue", s),
        }
        # Warm up: every worker builds its Authority and HSM sessions on its first requests.
        for kind, runner in runners.items():
            warm = runner(min(2.0, seconds))
            if warm.errors:
                cells[kind].errors.append(f"warm-up: {warm.errors[0]}")
                _say(f"  warm-up {kind}: {len(warm.errors)} errors, e.g. {warm.errors[0]}")

        _say(f"measuring {len(KINDS)} figures, interleaved, {rounds} rounds ...")
        for r in range(rounds):
            order = list(KINDS[r % len(KINDS) :] + KINDS[: r % len(KINDS)])
            parts = []
            for kind in order:
                cell = cells[kind]
                try:
                    run = runners[kind](seconds)
                except Exception as exc:
                    cell.errors.append(_err(exc))
                    parts.append(f"{kind} ERROR")
                    continue
                cell.errors.extend(run.errors)
                rate = run.done / run.elapsed
                cell.rates.append(rate)
                cell.p50.append(_percentile(run.latencies, 0.50) * 1000)
                cell.p99.append(_percentile(run.latencies, 0.99) * 1000)
                cell.client_cpu.append(run.cpu / run.elapsed)
                parts.append(f"{kind} {rate:,.0f}/s")
            _say(f"  round {r + 1}/{rounds}: " + ", ".join(parts))

        _report(cells, clients, rounds, seconds)
        server_errors = server.log_text().count("Traceback")
        if server_errors:
            _say(f"\nserver log has {server_errors} tracebacks ({server.log_path})")
        _verify(auth, rest.created + local.created)
    except KeyboardInterrupt:
        _say("interrupted")
    except Exception as exc:  # a benchmark never fails
        _say(f"UNEXPECTED ERROR: {_err(exc)}")
        traceback.print_exc(file=sys.stdout)
    finally:
        if rest is not None:
            rest.close()
        if server is not None:
            server.stop()
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
