"""Two hsmca nodes on one PostgreSQL database and one HSM (a SoftHSM2 token directory standing in
for a network HSM), each a real ``hsmca serve`` (two gunicorn arbiters and a scheduler) with its
own data directory and ports.

Node A is made by ``hsmca init``; node B joins with a copy of A's ``hsmca.toml`` and PIN files
and nothing else (its own HTTPS certificate is issued by its first ``hsmca serve``). Concurrent
REST and ACME issuance through both nodes gives unique serials and one gapless audit chain;
ACME nonces from one node are good (once) at the other; exactly one scheduler is active; when
it dies, or its database session is terminated, a standby takes the jobs over within
``[scheduler] standby_poll_seconds``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import josepy as jose
import pytest
import requests
import sqlalchemy as sa
from acme import challenges, messages
from acme import client as acme_client
from acmejws import encode, sign
from acmetools import http01_config, http01_server
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from helpers import make_csr
from serve import HSMCA, Server, alive, clean_env, cmdline, free_port, run, start_server, wait_until
from sqlalchemy.engine import make_url

from ca.config import SchedulerConfig, load_config
from hsmca.scheduler import _LOCK_KEY
from softhsm import find_module

pytestmark = [pytest.mark.hsm, pytest.mark.db]

POLL = 1.0  # [scheduler] standby_poll_seconds of both nodes
CRL_DELAY = 2  # [crl] revocation_delay_seconds: the publish job then runs every 5 s
JOSE = {"Content-Type": "application/jose+json"}
ERR = "urn:ietf:params:acme:error:"
SERVED: dict[str, str] = {}  # http-01 token -> key authorization


@dataclass
class Nodes:
    """Both nodes, the shared database and the test's way to reach it."""

    a: Server
    b: Server
    dirs: dict[str, Path]
    engine: sa.Engine
    token: str  # an enroll+revoke API client's bearer token
    tmp: Path

    def both(self) -> list[Server]:
        return [self.a, self.b]

    def lock_holders(self) -> list[int]:
        """Backend pids holding the scheduler's advisory lock."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())"
                    " AND ((classid::bigint << 32) | objid::bigint) = :k"
                ),
                {"k": _LOCK_KEY},
            )
            return [int(r[0]) for r in rows]

    def count(self, table: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def node_config(database_url: str, hsm_dir: Path, http01_port: int) -> str:
    """The hsmca.toml every node of the installation shares."""
    return f"""
[server]
public_base_url = "http://pki.nodes.test"

[database]
url = "{database_url}"

[hsm]
module = "{find_module()}"
softhsm_conf = "{hsm_dir / "softhsm2.conf"}"

[scheduler]
standby_poll_seconds = {POLL}

[crl]
revocation_delay_seconds = {CRL_DELAY}
{http01_config(http01_port, "new_accounts_per_ip_per_hour = 0")}"""


@pytest.fixture(scope="module")
def nodes(pg_cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    if pg_cluster is None:
        pytest.skip("PostgreSQL not available outside CI")
    database_url = pg_cluster.create_database("nodes")
    base = tmp_path_factory.mktemp("nodes")
    hsm_dir = base / "hsm"  # the "network HSM": one token directory both nodes use
    a_dir, b_dir = base / "a", base / "b"
    with http01_server(SERVED) as http01_port:
        a_dir.mkdir()
        (a_dir / "hsmca.toml").write_text(node_config(database_url, hsm_dir, http01_port))
        made = run(a_dir, "init")
        assert made.returncode == 0, made.stdout + made.stderr
        (base / "root.pem").write_text(run(a_dir, "ca", "show", "root", "--pem").stdout)
        token = run(a_dir, "client", "add", "ops", "--role", "enroll", "--role", "revoke")
        assert token.returncode == 0, token.stderr
        # Joining: the same hsmca.toml and PIN files, nothing else of A's data directory.
        b_dir.mkdir(mode=0o700)
        shutil.copy2(a_dir / "hsmca.toml", b_dir / "hsmca.toml")
        shutil.copytree(a_dir / "pins", b_dir / "pins")
        engine = sa.create_engine(make_url(database_url))
        servers: list[Server] = []
        group: Nodes | None = None
        try:
            for data in (a_dir, b_dir):
                servers.append(start_server(data, base))
                servers[-1].root = base / "root.pem"
                # One at a time, so that A is the active scheduler.
                _wait_log(servers[-1], ("scheduler active", "standing by"))
            group = Nodes(*servers, {"a": a_dir, "b": b_dir}, engine, token.stdout.strip(), base)
            yield group
        finally:
            started = [*servers, *(group.both() if group else [])]
            for srv in {id(s): s for s in started}.values():  # (A may have been restarted)
                srv.stop()
            engine.dispose()


def _log(srv: Server) -> str:
    return srv.log.read_text(errors="replace")


def _wait_log(srv: Server, texts: tuple[str, ...], timeout: float = 60, since: int = 0) -> float:
    """Wait until the server's log (from byte ``since``) has one of ``texts``; returns when."""
    wait_until(lambda: any(t in _log(srv)[since:] for t in texts), timeout, f"{texts} in {srv.log}")
    return time.monotonic()


def _rest_issue(nodes: Nodes, srv: Server, name: str) -> requests.Response:
    return requests.post(
        f"{srv.https}/api/v1/certificates",
        json={"csr": make_csr([name]).decode(), "profile": "server"},
        headers={"Authorization": f"Bearer {nodes.token}"},
        verify=str(srv.root),
        timeout=60,
    )


# --- joining ------------------------------------------------------------------------------------


def test_the_second_node_joins_with_the_config_alone_and_init_there_is_refused(nodes):
    refused = run(nodes.dirs["b"], "init")
    assert refused.returncode != 0 and "already initialised" in refused.stderr, refused
    assert (
        nodes.count("certificate_authorities") == 2
    )  # one root, one issuing CA: no second CA was made
    listings = {run(d, "ca", "list").stdout for d in nodes.dirs.values()}
    assert len(listings) == 1 and "issuing" in listings.pop()
    # Each node has its own HTTPS certificate, issued by the shared CA.
    certs = [
        x509.load_pem_x509_certificate((d / "tls/server.crt").read_bytes())
        for d in nodes.dirs.values()
    ]
    assert certs[0].serial_number != certs[1].serial_number
    assert certs[0].issuer == certs[1].issuer
    for srv in nodes.both():
        assert requests.get(f"{srv.https}/readyz", verify=str(srv.root), timeout=10).ok


# --- issuance through both nodes ----------------------------------------------------------------


def test_rest_issuance_through_both_nodes_at_once_gives_unique_serials(nodes):
    before = nodes.count("certificates")
    jobs = [(nodes.both()[i % 2], f"rest{i}.nodes.test") for i in range(40)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda job: _rest_issue(nodes, *job), jobs))
    assert [r.status_code for r in results] == [201] * len(jobs), [r.text for r in results]
    serials = [r.json()["serial"] for r in results]
    assert len(set(serials)) == len(serials)
    assert nodes.count("certificates") == before + len(jobs)
    with nodes.engine.connect() as conn:
        dupes = conn.execute(
            sa.text("SELECT serial FROM certificates GROUP BY serial HAVING count(*) > 1")
        ).all()
    assert dupes == []


class Balanced(acme_client.ClientNetwork):
    """Sends each request to the next of ``ports`` with the ``Host`` it was meant for, as a load
    balancer in front of the nodes would (every node then sees the same URLs)."""

    def __init__(self, *args: Any, ports: list[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ports = itertools.cycle(ports)
        self.sent: list[int] = []

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        parts = urlsplit(url)
        port = next(self.ports)
        self.sent.append(port)
        kwargs.setdefault("headers", {})["Host"] = parts.netloc
        target = parts._replace(netloc=f"127.0.0.1:{port}").geturl()
        return super()._send_request(method, target, *args, **kwargs)


def _acme_issue(srv: Server, name: str, ports: list[int] | None = None) -> str:
    """A whole ACME issuance (account, order, http-01, finalize) through ``srv`` (or with each
    request sent to the next of ``ports``, ``srv``'s URLs throughout); the PEM chain."""
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    net = Balanced(
        key, alg=jose.ES256, verify_ssl=str(srv.root), timeout=30, ports=ports or [srv.https_port]
    )
    directory = acme_client.ClientV2.get_directory(f"{srv.https}/acme/directory", net)
    client = acme_client.ClientV2(directory, net)
    client.net.account = client.new_account(
        messages.NewRegistration.from_data(terms_of_service_agreed=True)
    )
    order = client.new_order(make_csr([name]))
    for authz in order.authorizations:
        chall = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01))
        response, validation = chall.response_and_validation(key)
        SERVED[chall.chall.encode("token")] = validation
        client.answer_challenge(chall, response)
    done = client.poll_and_finalize(order)
    if ports:
        assert set(net.sent) == set(ports), net.sent
    return str(done.fullchain_pem)


def test_acme_issuance_through_both_nodes_at_once_gives_unique_serials(nodes):
    before = nodes.count("certificates")
    jobs = [(nodes.both()[i % 2], f"acme{i}.nodes.test") for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        chains = list(pool.map(lambda job: _acme_issue(*job), jobs))
    leaves = [x509.load_pem_x509_certificates(c.encode())[0] for c in chains]
    assert len({leaf.serial_number for leaf in leaves}) == len(jobs)
    assert nodes.count("certificates") == before + len(jobs)


def test_an_acme_issuance_with_each_request_at_the_next_node_needs_no_sticky_sessions(nodes):
    ports = [srv.https_port for srv in nodes.both()]
    chain = _acme_issue(nodes.a, "balanced.nodes.test", ports=ports)
    leaf = x509.load_pem_x509_certificates(chain.encode())[0]
    assert leaf.subject.rfc4514_string() == "CN=balanced.nodes.test"


def test_a_nonce_from_one_node_is_good_once_at_the_other(nodes):
    nonce = requests.head(
        f"{nodes.a.https}/acme/new-nonce", verify=str(nodes.a.root), timeout=10
    ).headers["Replay-Nonce"]
    key = ec.generate_private_key(ec.SECP256R1())
    for srv, expected in ((nodes.b, 201), (nodes.a, 400)):
        url = f"{srv.https}/acme/new-account"
        body = encode(sign(key, {"termsOfServiceAgreed": True}, url, nonce))
        resp = requests.post(url, data=body, headers=JOSE, verify=str(srv.root), timeout=10)
        assert resp.status_code == expected, resp.text
        assert resp.headers["Replay-Nonce"]
    assert resp.json()["type"] == ERR + "badNonce"  # replayed at the node that issued it


def test_the_audit_chain_of_both_nodes_is_one_and_verifies(nodes):
    for data in nodes.dirs.values():
        verified = run(data, "audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    with nodes.engine.connect() as conn:
        seqs = [r[0] for r in conn.execute(sa.text("SELECT seq FROM audit_events ORDER BY seq"))]
        issued = conn.execute(
            sa.text("SELECT count(*) FROM audit_events WHERE action = 'certificate.issued'")
        ).scalar_one()
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # gapless
    assert issued >= 48  # the REST and ACME issuances above, each in the chain


def test_a_revocation_through_one_node_is_revoked_in_the_other_nodes_ocsp_at_once(nodes):
    issued = _rest_issue(nodes, nodes.a, "ocsp.nodes.test")
    assert issued.status_code == 201, issued.text
    leaf = x509.load_pem_x509_certificate(issued.json()["certificate"].encode())
    issuer = x509.load_pem_x509_certificates(issued.json()["chain"].encode())[0]
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(leaf, issuer, hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )

    def status_at(srv: Server) -> ocsp.OCSPCertStatus:
        resp = requests.post(
            f"{srv.http}/ocsp",
            data=request,
            headers={"Content-Type": "application/ocsp-request"},
            timeout=10,
        )
        return ocsp.load_der_ocsp_response(resp.content).certificate_status

    assert status_at(nodes.b) == ocsp.OCSPCertStatus.GOOD
    revoke = requests.post(
        f"{nodes.a.https}/api/v1/certificates/{issued.json()['serial']}/revoke",
        json={"reason": "keyCompromise"},
        headers={"Authorization": f"Bearer {nodes.token}"},
        verify=str(nodes.a.root),
        timeout=30,
    )
    assert revoke.status_code == 200, revoke.text
    revoked_at = time.monotonic()
    # Each worker caches a response for at most half a second before reading it again.
    wait_until(lambda: status_at(nodes.b) == ocsp.OCSPCertStatus.REVOKED, 5, "node B's OCSP")
    assert time.monotonic() - revoked_at < 2


# --- one scheduler, and takeover ----------------------------------------------------------------


def test_exactly_one_scheduler_is_active(nodes):
    active = [srv for srv in nodes.both() if "scheduler active" in _log(srv)]
    standing_by = [srv for srv in nodes.both() if "standing by" in _log(srv)]
    assert active == [nodes.a] and standing_by == [nodes.b]
    assert len(nodes.lock_holders()) == 1
    for data in nodes.dirs.values():  # either node tells which scheduler is active
        status = run(data, "scheduler", "status")
        assert status.returncode == 0, status.stderr
        assert f" pid {_scheduler_pid(nodes.a)} " in status.stdout + " ", status.stdout
    time.sleep(3 * POLL)  # the standby keeps trying, and keeps failing
    assert "scheduler active" not in _log(nodes.b)


def _scheduler_pid(srv: Server) -> int:
    (pid,) = [p for p in srv.processes() if "hsmca.scheduler" in cmdline(p)]
    return pid


def _kill_node(srv: Server) -> None:
    """kill -9 the node's every process at once (as a crashed host or OOM killer would)."""
    pids = {srv.proc.pid, *srv.processes()}
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    srv.proc.wait(timeout=30)
    wait_until(lambda: not any(alive(p) for p in pids), 30, "the node's processes to die")


def _revoke_and_wait_for_the_crl(nodes: Nodes, srv: Server, name: str) -> float:
    """Issue and revoke through ``srv``; seconds until its CRL lists the certificate (published
    by whichever scheduler is active)."""
    issued = _rest_issue(nodes, srv, name)
    assert issued.status_code == 201, issued.text
    serial = issued.json()["serial"]
    revoked_at = time.monotonic()
    revoke = requests.post(
        f"{srv.https}/api/v1/certificates/{serial}/revoke",
        json={"reason": "keyCompromise"},
        headers={"Authorization": f"Bearer {nodes.token}"},
        verify=str(srv.root),
        timeout=30,
    )
    assert revoke.status_code == 200, revoke.text

    def listed() -> bool:
        der = urllib.request.urlopen(f"{srv.http}/crl/issuing.crl", timeout=10).read()
        crl = x509.load_der_x509_crl(der)
        return crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None

    wait_until(listed, 60, "the CRL to list the revoked certificate")
    return time.monotonic() - revoked_at


def test_when_the_active_node_is_killed_the_standby_takes_the_jobs_over_in_time(nodes):
    assert "scheduler active" in _log(nodes.a)
    mark = len(_log(nodes.b))
    killed_at = time.monotonic()
    _kill_node(nodes.a)
    took = _wait_log(nodes.b, ("scheduler active",), timeout=30, since=mark) - killed_at
    # The kill ends A's database session at once; B tries the lock every POLL seconds.
    assert took < POLL + 5, took
    assert len(nodes.lock_holders()) == 1
    status = run(nodes.dirs["b"], "scheduler", "status")
    assert f" pid {_scheduler_pid(nodes.b)} " in status.stdout + " ", status.stdout
    # B's scheduler now runs the jobs: a revocation reaches the CRL within the delay plus the
    # publish job's interval (5 s), plus slack.
    assert _revoke_and_wait_for_the_crl(nodes, nodes.b, "takeover.nodes.test") < CRL_DELAY + 5 + 5
    # A restarted node stands by.
    nodes.a = start_server(nodes.dirs["a"], nodes.tmp)
    nodes.a.root = nodes.b.root
    _wait_log(nodes.a, ("standing by",))
    assert "scheduler active" not in _log(nodes.a)
    verified = run(nodes.dirs["a"], "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_scheduler_whose_lock_session_is_terminated_stops_and_a_standby_takes_over(nodes):
    (holder,) = nodes.lock_holders()
    marks = {srv.log: len(_log(srv)) for srv in nodes.both()}
    with nodes.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": holder}).scalar()
    terminated_at = time.monotonic()
    # The node that held it notices within POLL seconds and stops its jobs...
    lost = [
        srv
        for srv in nodes.both()
        if _has_after(srv, "scheduler lock lost", marks, wait=POLL + 5, start=terminated_at)
    ]
    assert len(lost) == 1, [_log(s)[marks[s.log] :] for s in nodes.both()]
    # ...and one scheduler (either node) holds the lock again within another POLL seconds.
    wait_until(lambda: len(nodes.lock_holders()) == 1, 2 * POLL + 5, "a new lock holder")
    assert nodes.lock_holders() != [holder]
    assert time.monotonic() - terminated_at < 2 * POLL + 5
    time.sleep(2 * POLL)
    assert len(nodes.lock_holders()) == 1  # never two
    assert all(srv.proc.poll() is None for srv in nodes.both())
    assert _revoke_and_wait_for_the_crl(nodes, nodes.a, "terminated.nodes.test") < CRL_DELAY + 10


def _has_after(srv: Server, text: str, marks: dict[Path, int], wait: float, start: float) -> bool:
    deadline = start + wait
    while time.monotonic() < deadline:
        if text in _log(srv)[marks[srv.log] :]:
            return True
        time.sleep(0.1)
    return text in _log(srv)[marks[srv.log] :]


def test_a_standby_outlasts_an_unreachable_database_and_status_says_why(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    url = f"postgresql+psycopg://hsmca@127.0.0.1:{free_port()}/hsmca"  # nothing listens there
    (data / "hsmca.toml").write_text(
        f'[database]\nurl = "{url}"\n\n[scheduler]\nstandby_poll_seconds = 0.5\n'
    )
    log = tmp_path / "scheduler.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [HSMCA, "--data-dir", str(data), "scheduler", "run"], env=clean_env(), stderr=err
        )
    try:
        wait_until(lambda: "database unreachable" in log.read_text(), 30, "the warning")
        time.sleep(2.0)  # four more tries
        assert proc.poll() is None, log.read_text()
        assert log.read_text().count("database unreachable") == 1  # once per outage
        status = run(data, "scheduler", "status")
        assert status.returncode == 1 and "database unavailable" in status.stderr, status
        assert "Traceback" not in status.stderr + log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_scheduler_status_on_sqlite_reads_the_lock_file(tmp_path):
    import fcntl

    data = tmp_path / "data"
    data.mkdir()
    (data / "hsmca.toml").write_text("")  # all defaults: SQLite in the data directory
    idle = run(data, "scheduler", "status")
    assert idle.returncode == 1 and "no scheduler is active" in idle.stderr, idle
    with open(data / "scheduler.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        busy = run(data, "scheduler", "status")
    assert busy.returncode == 0 and "active" in busy.stdout, busy
    assert run(data, "scheduler", "status").returncode == 1  # the check itself holds nothing


# --- the setting ----------------------------------------------------------------------------------


def test_standby_poll_seconds_is_bounded_and_can_come_from_the_environment(tmp_path):
    assert SchedulerConfig().standby_poll_seconds == 15.0
    for bad in (0.1, 601.0):
        with pytest.raises(ValueError):
            SchedulerConfig(standby_poll_seconds=bad)
    cfg = load_config(tmp_path, environ={"HSMCA_SCHEDULER_STANDBY_POLL_SECONDS": "2.5"})
    assert cfg.scheduler.standby_poll_seconds == 2.5
