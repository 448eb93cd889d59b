"""16 concurrent issuers leave a gapless, fork-free audit chain, on SQLite and PostgreSQL.

Two shapes of concurrency against one database: 16 threads sharing one Authority in this
process, and 16 processes (each its own Authority, HSM sessions and connection pool; the idea of
``test_store.py``'s several-process test, with a start barrier so all 16 issue at the same
moment). Afterwards: ``seq`` runs 1..N without a gap, every ``prev_hash`` is the hash of the
event before it, no hash appears twice, both verifiers accept the chain, and the
``certificate.issued`` events are exactly the certificates stored, one each.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import CaEnv, make_csr

from ca.audit import GENESIS_HASH, verify_chain
from ca.issuance import IssuanceRequest, issue
from ca.store.db import Database

pytestmark = [pytest.mark.db, pytest.mark.hsm]

ISSUERS = 16
EACH = 6  # certificates per issuer: 96 per test, a few seconds on two cores

WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ca.config import load_config
    from ca.authority import Authority
    from ca.issuance import IssuanceRequest, issue
    data, csr, count, barrier, me = sys.argv[1:6]
    auth = Authority.from_config(load_config(Path(data)))
    auth.issuer("issuing")  # HSM login and key lookup before the start line
    request = Path(csr).read_bytes()
    (Path(barrier) / f"ready-{me}").touch()
    while not (Path(barrier) / "go").exists():
        time.sleep(0.005)
    for _ in range(int(count)):
        print(issue(auth, IssuanceRequest(request, "server", f"worker-{me}")).serial, flush=True)
    """
)


def assert_gapless_fork_free_chain(db: Database, issued: set[str]) -> None:
    """The chain is one line 1..N and its certificate.issued events are the stored certificates."""
    rows = list(db.audit_rows())
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1)), "a gap or a reordering"
    assert rows[0][6] == GENESIS_HASH.hex()
    for before, after in zip(rows, rows[1:], strict=False):
        assert after[6] == before[7], f"seq {after[0]} does not follow seq {before[0]} (a fork)"
    assert len({r[7] for r in rows}) == len(rows), "two events with one hash"
    assert db.verify_audit_chain() == verify_chain(db.audit_entries()) == len(rows)

    events = [r[4] for r in rows if r[3] == "certificate.issued"]
    requested = [r[4] for r in rows if r[3] == "certificate.requested"]
    assert len(events) == len(set(events)), "a certificate issued twice"
    assert set(events) == set(requested) == issued
    position = {(r[3], r[4]): r[0] for r in rows}
    assert all(
        position["certificate.requested", s] < position["certificate.issued", s] for s in issued
    )
    ca_serials = {ca.serial for ca in db.list_cas()}
    with db.read() as conn:
        stored = set(conn.execute(sa.text("SELECT serial FROM certificates")).scalars())
    assert stored - ca_serials == issued


def test_16_threads_issuing_at_once_leave_a_gapless_fork_free_chain(ca_env: CaEnv) -> None:
    auth = ca_env.auth
    auth.issuer("issuing")
    csr = make_csr(["threads.corp.test"])
    start = threading.Barrier(ISSUERS)
    serials: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(me: int) -> None:
        try:
            start.wait(timeout=60)
            for _ in range(EACH):
                got = issue(auth, IssuanceRequest(csr, "server", f"thread-{me}")).serial
                with lock:
                    serials.append(got)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(ISSUERS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert not errors, errors
    assert len(serials) == len(set(serials)) == ISSUERS * EACH
    assert_gapless_fork_free_chain(auth.db, set(serials))


def test_16_processes_issuing_at_once_leave_a_gapless_fork_free_chain(
    ca_env: CaEnv, tmp_path: Path
) -> None:
    csr = tmp_path / "req.pem"
    csr.write_bytes(make_csr(["processes.corp.test"]))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(ca_env.data_dir), str(csr), str(EACH), str(barrier)]
            + [str(i)],
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(ISSUERS)
    ]
    try:
        deadline = time.monotonic() + 120
        while len(list(barrier.glob("ready-*"))) < ISSUERS:
            failed = [p for p in procs if p.poll() not in (None, 0)]
            assert not failed, failed[0].communicate()[1]
            assert time.monotonic() < deadline, "the workers did not get ready"
            time.sleep(0.05)
        (barrier / "go").touch()
        serials = []
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
            serials += out.split()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert len(serials) == len(set(serials)) == ISSUERS * EACH
    assert_gapless_fork_free_chain(ca_env.auth.db, set(serials))
