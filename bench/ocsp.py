"""OCSP throughput: cached responses through gunicorn beside a bare WSGI ceiling, and pre-signing.

    python bench/ocsp.py [--seconds 5] [--rounds 3] [--certs 100000] [--workers N] [--threads N]

Everything lives in a temporary directory made at run time (a SoftHSM2 token, an SQLite database,
a root CA and a P-256 issuing CA with their OCSP responders) and removed at the end.

1. HTTP. gunicorn serves ``web:create_app()`` (``[server] workers`` x ``threads`` gthread
   threads by default, ``tests/live.py``) and, under the same settings, a bare WSGI app that
   returns the same response bytes without looking at the request: the ceiling of gunicorn on
   this machine. ``wrk`` (Debian package ``wrk``) loads each with one pre-signed request for
   ``--seconds``: ``POST /ocsp`` (a Lua script sets the body) and ``GET /ocsp/{base64}``, with 8
   and 32 connections, interleaved round by round. It prints the median requests/s, the p99
   latency, and hsmca / ceiling (target: at least 70%, p99 under 10 ms).
2. Pre-signing. ``--certs`` synthetic certificate rows (1% revoked) are inserted, then
   ``ocsp.presign.run_once`` signs and stores a response for each (batches of 500, one
   transaction each). Beside it: raw HSM signatures with the responder key over a message of the
   size of a ResponseData, and the same responses built with cryptography's
   ``OCSPResponseBuilder`` (what ``ocsp/der.py`` replaces). Target: pre-signing at least 50% of
   the raw signature rate.

The load generator runs on the same machine as the server. A benchmark prints figures; it never
fails (exit status 0).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# This file is named like the ``ocsp`` package: keep bench/ off the path so ``import ocsp`` finds
# the package, and load bench/issuance.py (machine info, messages) by its path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent / "tests"))
_spec = importlib.util.spec_from_file_location("bench_issuance", HERE / "issuance.py")
assert _spec is not None and _spec.loader is not None
base = importlib.util.module_from_spec(_spec)
sys.modules["bench_issuance"] = base  # dataclasses look their module up there
_spec.loader.exec_module(base)

_say = base._say
_err = base._err

TOML = """\
[server]
public_base_url = "http://pki.bench.test"

[hsm]
module = "{module}"
softhsm_conf = "{softhsm_conf}"

[ca]
root_key = "ec:P-384"
intermediate_key = "ec:P-256"

[profiles.bench]
description = "benchmark: TLS server leaves"
dns_names = [".bench.internal"]
"""

BARE_APP = '''\
"""The ceiling: gunicorn answering fixed OCSP response bytes, nothing else."""
from pathlib import Path

BODY = Path(__file__).with_name("response.der").read_bytes()
HEADERS = [("Content-Type", "application/ocsp-response"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    if environ["REQUEST_METHOD"] == "POST":
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", HEADERS)
    return [BODY]
'''

POST_LUA = """\
local f = io.open("{path}", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/ocsp-request"
"""

TARGET_HTTP = 0.70
TARGET_P99_MS = 10.0
TARGET_PRESIGN = 0.50


@dataclass
class Cell:
    rates: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None

    @property
    def p99_ms(self) -> float | None:
        return statistics.median(self.p99) if self.p99 else None


# --- set-up -------------------------------------------------------------------------------------


def _setup(tmp: Path) -> Any:
    import ocsp
    import softhsm
    from ca.authority import Authority
    from ca.config import load_config
    from ca.hierarchy import create_intermediate, create_root

    user_pin = softhsm.random_pin()
    token = softhsm.create_token(tmp / "softhsm", "hsmca", user_pin, softhsm.random_pin())
    os.environ["SOFTHSM2_CONF"] = str(token.conf_path)
    softhsm.write_pin_file(tmp / "pins" / "user.pin", user_pin)
    (tmp / "hsmca.toml").write_text(
        TOML.format(module=token.module, softhsm_conf=token.conf_path), encoding="utf-8"
    )
    environ = {"SOFTHSM2_CONF": str(token.conf_path)}
    config = load_config(tmp, environ=environ)
    auth = Authority.from_config(config, environ=environ)
    auth.db.upgrade()
    create_root(auth, actor="bench")
    create_intermediate(auth, config.ca.intermediate_name, actor="bench")
    ocsp.set_up(auth, actor="bench")
    return auth


def _one_request(auth: Any) -> tuple[bytes, bytes]:
    """A real certificate's OCSP request and its pre-signed response."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp as xocsp

    from ca.issuance import IssuanceRequest, issue
    from ocsp import presign
    from ocsp.service import OcspService

    csr = base._make_csrs(1)[0]
    issued = issue(auth, IssuanceRequest(csr, "bench", "bench"))
    presign.run_once(auth, auth.now())
    req = (
        xocsp.OCSPRequestBuilder()
        .add_certificate(issued.certificate, issued.chain[0], hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    reply = OcspService(auth).respond(req)
    assert reply.status == "good", reply
    return req, reply.body


# --- HTTP ---------------------------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)


def _start_bare(tmp: Path, response: bytes, workers: int, threads: int) -> Server:
    """The bare app under exactly the gunicorn command line that serves hsmca."""
    import requests
    from live import gunicorn_command

    app_dir = tmp / "bare"
    app_dir.mkdir()
    (app_dir / "ocsp_bare.py").write_text(BARE_APP, encoding="utf-8")
    (app_dir / "response.der").write_bytes(response)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    port = int(sock.getsockname()[1])
    log = open(app_dir / "gunicorn.log", "ab")  # noqa: SIM115 - kept open for the child
    process = subprocess.Popen(
        gunicorn_command(sock.fileno(), workers, threads, app="ocsp_bare:app"),
        cwd=app_dir,
        env={**os.environ, "PYTHONPATH": str(app_dir)},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        pass_fds=[sock.fileno()],
        start_new_session=True,
    )
    sock.close()
    server = Server(process, port)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(server.url("/healthz"), timeout=2).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError("the bare app did not come up")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _wrk(url: str, conns: int, seconds: float, script: Path | None) -> tuple[float, float]:
    """(requests/s, p99 ms) of one wrk run; raises on errors or non-2xx answers."""
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", "--latency", "--timeout", "5s"]
    if script is not None:
        argv += ["-s", str(script)]
    out = subprocess.run(
        [*argv, url], capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    text = out.stdout + out.stderr
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", text)
    if out.returncode != 0 or not rate or not p99:
        raise RuntimeError(f"wrk failed: {text[-400:]}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if bad:
        raise RuntimeError(f"{bad.group(1)} non-2xx answers")
    socket_errors = re.search(r"Socket errors: (.*)", text)
    if socket_errors and "timeout 0" not in socket_errors.group(1):
        raise RuntimeError(f"socket errors: {socket_errors.group(1)}")
    return float(rate.group(1)), float(p99.group(1)) * _UNITS[p99.group(2)]


def _http(
    tmp: Path, auth: Any, workers: int, threads: int, seconds: float, rounds: int
) -> dict[tuple[str, str, int], Cell]:
    import requests
    from live import start_server

    req, response = _one_request(auth)
    script = tmp / "post.lua"
    (tmp / "request.der").write_bytes(req)
    script.write_text(POST_LUA.format(path=tmp / "request.der"), encoding="utf-8")
    get_path = "/ocsp/" + base64.urlsafe_b64encode(req).decode().rstrip("=")

    hsmca = start_server(
        tmp, workers=workers, threads=threads, env={"SOFTHSM2_CONF": os.environ["SOFTHSM2_CONF"]}
    )
    bare = _start_bare(tmp, response, workers, threads)
    servers = {"hsmca": hsmca.url, "bare": bare.url}
    try:
        for name, url in servers.items():  # both answer, hsmca with the pre-signed bytes
            post = requests.post(
                url("/ocsp"),
                data=req,
                headers={"Content-Type": "application/ocsp-request"},
                timeout=5,
            )
            get = requests.get(url(get_path), timeout=5)
            assert post.content == response and get.content == response, name
        cells: dict[tuple[str, str, int], Cell] = {}
        for r in range(rounds):
            for conns in (8, 32):
                for method in ("POST", "GET"):
                    for name, url in servers.items():
                        cell = cells.setdefault((name, method, conns), Cell())
                        target = url("/ocsp") if method == "POST" else url(get_path)
                        try:
                            rate, p99 = _wrk(
                                target, conns, seconds, script if method == "POST" else None
                            )
                        except Exception as exc:
                            cell.errors.append(_err(exc))
                            continue
                        cell.rates.append(rate)
                        cell.p99.append(p99)
            _say(f"  round {r + 1}/{rounds} done")
        assert "Traceback" not in hsmca.log_text(), "the hsmca server logged a traceback"
        return cells
    finally:
        bare.stop()
        hsmca.stop()


def _report_http(cells: dict[tuple[str, str, int], Cell]) -> None:
    _say()
    _say("OCSP over HTTP (pre-signed response from the per-worker cache), medians:")
    _say(
        f"  {'request':<8}{'conns':>6}{'hsmca req/s':>14}{'p99 ms':>9}"
        f"{'bare req/s':>13}{'p99 ms':>9}{'hsmca/bare':>12}"
    )
    for method in ("POST", "GET"):
        for conns in (8, 32):
            ours = cells.get(("hsmca", method, conns), Cell())
            ceiling = cells.get(("bare", method, conns), Cell())
            ratio = (
                f"{ours.rate / ceiling.rate:.0%}"
                if ours.rate is not None and ceiling.rate
                else "n/a"
            )
            verdict = ""
            if ours.rate is not None and ceiling.rate and ours.p99_ms is not None:
                ok = ours.rate / ceiling.rate >= TARGET_HTTP and ours.p99_ms < TARGET_P99_MS
                verdict = "  ok" if ok else "  BELOW TARGET"
            _say(
                f"  {method:<8}{conns:>6}{_fmt(ours.rate):>14}{_fmt(ours.p99_ms, 2):>9}"
                f"{_fmt(ceiling.rate):>13}{_fmt(ceiling.p99_ms, 2):>9}{ratio:>12}{verdict}"
            )
            for err in (ours.errors + ceiling.errors)[:3]:
                _say(f"      error: {err}")
    _say(f"  target: hsmca >= {TARGET_HTTP:.0%} of bare, p99 < {TARGET_P99_MS:g} ms")


def _fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


# --- pre-signing --------------------------------------------------------------------------------


def _insert_certificates(auth: Any, count: int) -> int:
    """``count`` synthetic certificate rows of the issuing CA (1% revoked); the DER is a stub."""
    import secrets

    from sqlalchemy import insert

    from ca.store import tables as t

    issuing = auth.db.get_ca(auth.config.ca.intermediate_name)
    now = auth.now().replace(microsecond=0)
    done = 0
    while done < count:
        rows = []
        for i in range(done, min(count, done + 10_000)):
            serial = format(secrets.randbits(127) | (1 << 126), "x")
            revoked = i % 100 == 0
            rows.append(
                {
                    "serial": serial,
                    "issuer_id": issuing.id,
                    "subject": f"CN=svc-{i}.bench.internal",
                    "sans": "[]",
                    "key_type": "ec:P-256",
                    "not_before": now - timedelta(days=1),
                    "not_after": now + timedelta(days=90),
                    "profile": "bench",
                    "requester": "bench",
                    "status": "revoked" if revoked else "issued",
                    "revoked_at": now - timedelta(hours=1) if revoked else None,
                    "revocation_reason": 1 if revoked else None,
                    "der": b"\x30\x00",
                    "fingerprint_sha256": hashlib.sha256(serial.encode()).hexdigest(),
                    "created_at": now,
                }
            )
        with auth.db.write() as conn:
            conn.execute(insert(t.Certificate), rows)
        done += len(rows)
    return int(issuing.id)


def _presign(auth: Any, count: int) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509 import ocsp as xocsp

    from ca.store import ocsp as store
    from ocsp import der, presign

    _say()
    _say(f"pre-signing {count:,} certificates (ec:P-256 responder, SoftHSM2):")
    t0 = time.perf_counter()
    issuing_id = _insert_certificates(auth, count)
    _say(f"  inserted {count:,} certificate rows in {time.perf_counter() - t0:.1f} s")
    signer = presign.signers(auth)[issuing_id]

    # Raw HSM signatures over a message the size of one ResponseData.
    now = auth.now()
    single = der.Single(signer.issuer.cert_id(1 << 126), "good", now, now + timedelta(days=4))
    message = der.response_data(signer.key_hash, now, [single])
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 3.0:
        for _ in range(200):
            signer.key.sign(message, ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg]
        n += 200
    raw = n / (time.perf_counter() - t0)

    # The same response through cryptography's builder (what ocsp/der.py replaces).
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 3.0:
        for i in range(100):
            (
                xocsp.OCSPResponseBuilder()
                .add_response_by_hash(
                    signer.issuer.name_hashes["sha1"],
                    signer.issuer.key_hashes["sha1"],
                    (1 << 126) + i,
                    hashes.SHA1(),
                    xocsp.OCSPCertStatus.GOOD,
                    now,
                    now + timedelta(days=4),
                    None,
                    None,
                )
                .responder_id(xocsp.OCSPResponderEncoding.HASH, signer.certificate)
                .certificates([signer.certificate])
                .sign(signer.key, hashes.SHA256())
                .public_bytes(serialization.Encoding.DER)
            )
        n += 100
    builder = n / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    report = presign.run_once(auth, auth.now())
    took = time.perf_counter() - t0
    rate = report.signed / took
    stored = store.response_count(auth.db, issuing_id)
    _say(f"  a. raw HSM signatures               {raw:>9,.0f}/s")
    _say(
        f"  b. cryptography OCSPResponseBuilder {builder:>9,.0f}/s   ({builder / raw:.0%} of a; "
        "not stored)"
    )
    _say(
        f"  c. presign.run_once, signed+stored  {rate:>9,.0f}/s   ({rate / raw:.0%} of a; "
        f"{report.signed:,} responses in {took:.1f} s, {stored:,} stored, errors {report.errors or 'none'})"
    )
    verdict = "ok" if rate / raw >= TARGET_PRESIGN else "BELOW TARGET"
    _say(f"  target: c >= {TARGET_PRESIGN:.0%} of a: {verdict}")


# --- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    from ca.config import ServerConfig

    defaults = ServerConfig()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="one wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians (default 3)")
    parser.add_argument("--certs", type=int, default=100_000, help="pre-signed (default 100000)")
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--skip-http", action="store_true", help="only the pre-signing figures")
    parser.add_argument("--skip-presign", action="store_true", help="only the HTTP figures")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="hsmca-ocsp-bench-"))
    try:
        _say("hsmca OCSP benchmark")
        for line in base._machine_info(tmp):
            _say(f"  {line}")
        _say(
            f"  settings      gunicorn {args.workers} worker(s) x {args.threads} gthread threads; "
            f"wrk 1 thread, {args.rounds} rounds x {args.seconds:g} s; {args.certs:,} certificates"
        )
        t0 = time.perf_counter()
        try:
            auth = _setup(tmp)
        except Exception as exc:
            _say(f"SET-UP FAILED: {_err(exc)}")
            traceback.print_exc(file=sys.stdout)
            return
        _say(
            f"set-up: token, database, root, issuing CA, responders in {time.perf_counter() - t0:.1f} s"
        )
        if not args.skip_http:
            if shutil.which("wrk") is None:
                _say("HTTP figures skipped: wrk is not installed (apt-get install -y wrk)")
            else:
                try:
                    _report_http(
                        _http(tmp, auth, args.workers, args.threads, args.seconds, args.rounds)
                    )
                except Exception as exc:
                    _say(f"HTTP FAILED: {_err(exc)}")
                    traceback.print_exc(file=sys.stdout)
        try:
            if not args.skip_presign:
                _presign(auth, max(1, args.certs))
        except Exception as exc:
            _say(f"PRE-SIGNING FAILED: {_err(exc)}")
            traceback.print_exc(file=sys.stdout)
        auth.db.dispose()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
