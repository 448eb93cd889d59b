"""Issuance throughput through one hsmca node and through two, on one PostgreSQL and one HSM.

    python bench/nodes.py [--clients 8] [--seconds 10] [--rounds 3] [--workers 1] [--threads 8]

Everything lives in a temporary directory made at run time: a throwaway PostgreSQL cluster
(``tests/pgcluster.py``), one SoftHSM2 token both nodes share (standing in for a network HSM), a
root and a P-256 issuing CA, an API client, and two node data directories holding the same
``hsmca.toml`` and PIN file. Each node is a real gunicorn (``tests/live.py``) serving
``web:create_app()`` with ``--workers`` x ``--threads``. Figures, interleaved round by round so
that machine noise hits each alike (REST ``POST /api/v1/certificates``, ``--clients`` keep-alive
connections in all, as in ``bench/rest_issuance.py``):

  one     every client on node A
  one-2x  every client on one node with twice the workers (as many as both nodes together)
  two     half the clients on node A, half on node B, at the same time

It prints the medians over the rounds (certificates/s, p50/p99 latency) and the ratio two/one,
then checks that the serials are unique and the audit chain verifies. On a machine with few
cores both nodes share the same CPUs as the load generator, PostgreSQL and SoftHSM, so the ratio
says what a second node costs or gains here, not what a second machine would add. A benchmark
prints figures; it never fails (exit status 0).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import issuance as base  # noqa: E402  (bench/issuance.py: machine info, messages)
import rest_issuance as rest  # noqa: E402  (the REST load, CSR pool, timing and cells)

KINDS = ("one", "one-2x", "two")
_say = base._say
_err = base._err


def _setup(tmp: Path, database_url: str) -> tuple[Any, str, list[Path]]:
    """Shared token, database, root and issuing CA, API client; two node data directories."""
    import softhsm
    from ca.authority import Authority
    from ca.clients import create_client
    from ca.config import load_config
    from ca.hierarchy import create_intermediate, create_root

    user_pin = softhsm.random_pin()
    token = softhsm.create_token(tmp / "hsm", "hsmca", user_pin, softhsm.random_pin())
    os.environ["SOFTHSM2_CONF"] = str(token.conf_path)
    toml = (
        rest.TOML.format(module=token.module, softhsm_conf=token.conf_path, profile=rest.PROFILE)
        + f'\n[database]\nurl = "{database_url}"\n'
    )
    nodes = []
    for name in ("a", "b"):
        data = tmp / name
        data.mkdir(mode=0o700)
        softhsm.write_pin_file(data / "pins" / "user.pin", user_pin)
        (data / "hsmca.toml").write_text(toml, encoding="utf-8")
        nodes.append(data)
    environ = {"SOFTHSM2_CONF": str(token.conf_path)}
    config = load_config(nodes[0], environ=environ)
    auth = Authority.from_config(config, environ=environ)
    auth.db.upgrade()
    create_root(auth, actor="bench")
    create_intermediate(auth, config.ca.intermediate_name, actor="bench")
    _, bearer = create_client(auth, rest.CLIENT, ["enroll"], [rest.PROFILE], [], actor="bench")
    return auth, bearer, nodes


class Spread:
    """``clients`` connections spread round-robin over the nodes' REST loads."""

    def __init__(self, ports: list[int], bearer: str, pool: rest.Pool, clients: int) -> None:
        share = [len(range(i, clients, len(ports))) for i in range(len(ports))]
        self.loads = [rest.RestLoad(p, bearer, pool, n) for p, n in zip(ports, share, strict=True)]
        self.clients = clients

    def one(self, i: int) -> None:
        self.loads[i % len(self.loads)].one(i // len(self.loads))

    def run(self, seconds: float) -> rest.Run:
        return rest._threads(self.clients, seconds, self.one)

    @property
    def created(self) -> int:
        return sum(load.created for load in self.loads)

    def close(self) -> None:
        for load in self.loads:
            load.close()


def _report(cells: dict[str, rest.Cell], clients: int, rounds: int, seconds: float) -> None:
    labels = {
        "one": f"one node, {clients} clients",
        "one-2x": "one node with 2x the workers",
        "two": f"two nodes, {clients} clients in all",
    }
    _say()
    _say(
        f"Medians of {rounds} rounds of ~{seconds:g} s per figure (per-round min–max in brackets)."
    )
    _say()
    head = f"{'':36}{'certs/s':>22}{'p50 ms':>10}{'p99 ms':>10}"
    _say(head)
    _say("-" * len(head))
    for kind in KINDS:
        c = cells[kind]
        rate = (
            f"{rest._fmt(c.rate)} [{min(c.rates):,.0f}–{max(c.rates):,.0f}]"
            if c.rates
            else "failed"
        )
        p50, p99 = rest.Cell._median(c.p50), rest.Cell._median(c.p99)
        _say(f"{labels[kind]:36}{rate:>22}{rest._fmt(p50, '', 1):>10}{rest._fmt(p99, '', 1):>10}")
    _say("-" * len(head))
    one, two = cells["one"].rate, cells["two"].rate
    _say(f"{'two nodes / one node':68}{(f'{two / one:.2f}' if one and two else '—'):>10}")
    double = cells["one-2x"].rate
    _say(
        f"{'two nodes / one node with 2x the workers':68}"
        f"{(f'{two / double:.2f}' if double and two else '—'):>10}"
    )
    for c in cells.values():
        for e in dict.fromkeys(c.errors):
            _say(f"  error in {c.kind}: {e} (x{c.errors.count(e)})")


def _verify(auth: Any, created: int) -> None:
    from sqlalchemy import func, select

    from ca.audit import verify_chain
    from ca.store import tables as t

    _say()
    try:
        with auth.db.engine.connect() as conn:
            serials = conn.execute(
                select(func.count(), func.count(t.Certificate.serial.distinct()))
            ).one()
        _say(
            f"Stored certificates: {serials[0]:,} ({created:,} issued by this run), "
            f"distinct serials: {serials[1]:,}"
            + ("" if serials[0] == serials[1] else "  DUPLICATES")
        )
        start = time.perf_counter()
        n = verify_chain(auth.db.audit_entries())
        _say(f"Audit chain verified: {n:,} events ({time.perf_counter() - start:.2f} s)")
    except Exception as exc:
        _say(f"VERIFICATION FAILED: {_err(exc)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers per node (1)")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker (default 8)")
    parser.add_argument("--seconds", type=float, default=10.0, help="one round of one figure (10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per figure (default 3)")
    parser.add_argument("--pool", type=int, default=400, help="pre-generated CSRs (default 400)")
    args = parser.parse_args(argv)
    clients, seconds, rounds = max(2, args.clients), max(0.5, args.seconds), max(1, args.rounds)

    tmp = Path(tempfile.mkdtemp(prefix="hsmca-nodes-bench-"))
    cluster = auth = None
    servers: list[Any] = []
    loads: dict[str, Spread] = {}
    cells = {k: rest.Cell(k) for k in KINDS}
    try:
        _say("hsmca several-nodes issuance benchmark (PostgreSQL, one shared SoftHSM2 token)")
        for line in base._machine_info(tmp):
            _say(f"  {line}")
        _say(
            f"  settings      {clients} clients, {rounds} rounds x {seconds:g} s x {len(KINDS)} "
            f"figures, gunicorn {args.workers} worker(s) x {args.threads} threads per node"
        )
        from live import start_server
        from pgcluster import start_cluster

        t0 = time.perf_counter()
        try:
            cluster = start_cluster()
            auth, bearer, dirs = _setup(tmp, cluster.create_database("bench"))
            env = {"SOFTHSM2_CONF": os.environ["SOFTHSM2_CONF"]}
            for data, workers in ((dirs[0], 1), (dirs[1], 1), (dirs[0], 2)):
                servers.append(
                    start_server(
                        data, workers=workers * args.workers, threads=args.threads, env=env
                    )
                )
        except Exception as exc:
            _say(f"SET-UP FAILED: {_err(exc)}")
            traceback.print_exc(file=sys.stdout)
            return
        with auth.db.engine.connect() as conn:
            version = conn.exec_driver_sql("SHOW server_version").scalar()
        _say(f"  postgresql    {version} (fsync on, a cluster on this machine)")
        _say(
            f"set-up: PostgreSQL, token, CAs, client, two nodes in {time.perf_counter() - t0:.1f} s"
        )
        pool = rest.Pool(rest._make_csrs(max(1, args.pool)))
        ports = [s.port for s in servers]
        loads = {
            "one": Spread(ports[:1], bearer, pool, clients),
            "one-2x": Spread(ports[2:], bearer, pool, clients),
            "two": Spread(ports[:2], bearer, pool, clients),
        }
        for kind, load in loads.items():  # warm-up: each worker builds its Authority and sessions
            warm = load.run(min(2.0, seconds))
            if warm.errors:
                cells[kind].errors.append(f"warm-up: {warm.errors[0]}")
        for r in range(rounds):
            parts = []
            for kind in KINDS[r % len(KINDS) :] + KINDS[: r % len(KINDS)]:
                cell = cells[kind]
                try:
                    run = loads[kind].run(seconds)
                except Exception as exc:
                    cell.errors.append(_err(exc))
                    parts.append(f"{kind} ERROR")
                    continue
                cell.errors.extend(run.errors)
                cell.rates.append(run.done / run.elapsed)
                cell.p50.append(rest._percentile(run.latencies, 0.50) * 1000)
                cell.p99.append(rest._percentile(run.latencies, 0.99) * 1000)
                parts.append(f"{kind} {run.done / run.elapsed:,.0f}/s")
            _say(f"  round {r + 1}/{rounds}: " + ", ".join(parts))
        _report(cells, clients, rounds, seconds)
        _verify(auth, sum(load.created for load in loads.values()))
    except KeyboardInterrupt:
        _say("interrupted")
    except Exception as exc:  # a benchmark never fails
        _say(f"UNEXPECTED ERROR: {_err(exc)}")
        traceback.print_exc(file=sys.stdout)
    finally:
        for load in loads.values():
            load.close()
        for server in servers:
            server.stop()
        if auth is not None:
            for closer in (auth.keys.close, auth.db.dispose):
                try:
                    closer()
                except Exception:
                    pass
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
