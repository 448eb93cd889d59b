"""ACME: seconds per certificate with lego against hsmca and, in the same run, Debian's pebble.

    python bench/acme.py [--certs 20] [--challenge http-01]

Both servers run on this machine, each as it ships: hsmca from ``hsmca init`` + ``hsmca serve``
(embedded default: SoftHSM token, SQLite; HTTPS), pebble (the Debian package, ``PEBBLE_VA_NOSLEEP``
so it does not sleep before validating, nonce rejection off) with ``pebble-challtestsrv`` as its
DNS (every name → 127.0.0.1). lego (Debian) obtains ``--certs`` certificates from each, one
``lego run`` per certificate for a new name, with its own http-01 server; the two servers take
turns round by round so machine noise falls on both. One account per server is registered
first (not timed).

Printed: the median and p90 seconds per certificate for each server and their ratio
(hsmca / pebble; target: at most 1), and hsmca's own share: the sum of its request handling
times (from its access log) per certificate (target: under 20 ms). The rest of a lego run is
lego itself (process start, key generation, its challenge server) and waiting.

A benchmark prints figures; it never fails (exit status 0).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from serve import free_port, listening, run, start_server, wait_until  # noqa: E402

LEGO = shutil.which("lego") or "/usr/bin/lego"
ACCESS = re.compile(r'^https \S+ "(\w+) (\S+)" (\d+) \S+ (\d+)ms$')


def _say(text: str = "") -> None:
    print(text, flush=True)


@dataclass
class Target:
    """One ACME server under test and lego's state for it."""

    name: str
    directory: str
    ca_file: Path
    lego_dir: Path
    times: list[float] = field(default_factory=list)
    server_ms: list[int] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def lego(target: Target, port: int, domain: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            LEGO,
            "--server",
            target.directory,
            "--email",
            "bench@acme.test",
            "--accept-tos",
            "--path",
            str(target.lego_dir),
            "--key-type",
            "ec256",
            "--domains",
            domain,
            "--http",
            "--http.port",
            f"127.0.0.1:{port}",
            "run",
        ],
        env={**os.environ, "LEGO_CA_CERTIFICATES": str(target.ca_file)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def start_hsmca(tmp: Path, http01: int) -> tuple[Target, object, Path]:
    data = tmp / "hsmca"
    proc = run(data, "init")
    if proc.returncode != 0:
        raise RuntimeError(f"hsmca init failed: {proc.stderr[-500:]}")
    root = tmp / "hsmca-root.pem"
    root.write_text(run(data, "ca", "show", "root", "--pem").stdout)
    env = {
        "HSMCA_ACME_VALIDATION_RESOLVE_TO": "127.0.0.1",
        "HSMCA_ACME_VALIDATION_HTTP01_PORT": str(http01),
        "HSMCA_ACME_NEW_ACCOUNTS_PER_IP_PER_HOUR": "0",
        "HSMCA_ACME_ORDERS_PER_ACCOUNT_PER_HOUR": "0",
    }
    server = start_server(data, tmp, env=env)
    log = next(tmp.glob(f"serve-{server.http_port}.log"))
    target = Target("hsmca", f"{server.https}/acme/directory", root, tmp / "lego-hsmca")
    return target, server, log


def start_pebble(tmp: Path, http01: int) -> tuple[Target, list[subprocess.Popen[bytes]]]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "pebble.crt", tmp / "pebble.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    port, mgmt, dns, dns_mgmt = free_port(), free_port(), free_port(), free_port()
    config = tmp / "pebble.json"
    config.write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"127.0.0.1:{port}",
                    "managementListenAddress": f"127.0.0.1:{mgmt}",
                    "certificate": str(cert_path),
                    "privateKey": str(key_path),
                    "httpPort": http01,
                    "tlsPort": free_port(),
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                }
            }
        )
    )
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    dns_proc = subprocess.Popen(
        [
            "pebble-challtestsrv",
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
            "-dns01",
            f"127.0.0.1:{dns}",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            f"127.0.0.1:{dns_mgmt}",
        ],
        **quiet,  # type: ignore[arg-type]
    )
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    pebble = subprocess.Popen(
        ["pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{dns}"],
        env=env,
        **quiet,  # type: ignore[arg-type]
    )
    wait_until(lambda: listening(port) or pebble.poll() is not None, 30, "pebble")
    if pebble.poll() is not None:
        raise RuntimeError("pebble did not start")
    target = Target("pebble", f"https://127.0.0.1:{port}/dir", cert_path, tmp / "lego-pebble")
    return target, [pebble, dns_proc]


#: milliseconds of each request kind (path without ids), over the whole run
BY_KIND: dict[str, list[int]] = {}


def server_share(log: Path, since: int) -> tuple[int, int]:
    """(milliseconds, requests) hsmca's access log records after byte ``since``."""
    total = count = 0
    with open(log, "rb") as f:
        f.seek(since)
        for line in f.read().decode("utf-8", "replace").splitlines():
            m = ACCESS.match(line.strip())
            if m and m.group(2).startswith("/acme/"):
                ms = int(m.group(4))
                total += ms
                count += 1
                kind = m.group(1) + " " + re.sub(r"/[0-9a-f]{6,}|/\d+", "/N", m.group(2))
                BY_KIND.setdefault(kind, []).append(ms)
    return total, count


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _p90(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--certs", type=int, default=20, help="certificates per server")
    args = parser.parse_args(argv)
    if not shutil.which(LEGO) or not shutil.which("pebble"):
        _say("acme bench: needs the Debian packages lego and pebble; skipped")
        return
    tmp = Path(tempfile.mkdtemp(prefix="hsmca-bench-acme-"))
    processes: list[subprocess.Popen[bytes]] = []
    server = None
    try:
        http01 = free_port()
        hsmca, server, log = start_hsmca(tmp, http01)
        pebble, processes = start_pebble(tmp, http01)
        targets = [hsmca, pebble]
        for t in targets:  # register the account (and warm up): not timed
            proc = lego(t, http01, f"warmup.{t.name}.acme.test")
            if proc.returncode != 0:
                t.failures.append(proc.stdout[-300:] + proc.stderr[-300:])
        for i in range(args.certs):
            for t in targets if i % 2 == 0 else reversed(targets):
                mark = log.stat().st_size
                started = time.perf_counter()
                proc = lego(t, http01, f"c{i}.{t.name}.bench.acme.test")
                elapsed = time.perf_counter() - started
                if proc.returncode != 0:
                    t.failures.append((proc.stdout + proc.stderr)[-300:])
                    continue
                t.times.append(elapsed)
                if t is hsmca:
                    time.sleep(0.05)  # the access log line of the last request
                    ms, count = server_share(log, mark)
                    t.server_ms.append(ms)
                    t.requests.append(count)
        _say(f"ACME with lego ({LEGO}), http-01, {args.certs} certificates per server")
        _say()
        _say("| server | median s/cert | p90 s/cert | failures |")
        _say("|---|---|---|---|")
        for t in targets:
            _say(f"| {t.name} | {_median(t.times):.3f} | {_p90(t.times):.3f} | {len(t.failures)} |")
        _say()
        ratio = _median(hsmca.times) / _median(pebble.times)
        _say(f"hsmca / pebble (median per certificate): {ratio:.2f} (target: at most 1.00)")
        if hsmca.server_ms:
            _say(
                f"hsmca's share per certificate: median {_median(hsmca.server_ms):.0f} ms over "
                f"{_median(hsmca.requests):.0f} requests (target: under 20 ms; access-log "
                "times, whole milliseconds)"
            )
            _say(
                "hsmca request times (median ms): "
                + ", ".join(
                    f"{kind} {statistics.median(v):.0f} (x{len(v)})"
                    for kind, v in sorted(BY_KIND.items())
                )
            )
        for t in targets:
            for failure in t.failures[:3]:
                _say(f"{t.name} failure: {failure.strip()}")
    except Exception:
        _say("acme bench failed:")
        _say(traceback.format_exc(limit=5))
    finally:
        if server is not None:
            server.stop()  # type: ignore[attr-defined]
        for p in processes:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
