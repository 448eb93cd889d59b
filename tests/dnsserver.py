"""A small authoritative DNS server for tests (UDP and TCP on 127.0.0.1, one port).

It answers from a record table: ``{name: {TYPE: [values]}}`` with names absolute or not
(``_acme-challenge.x.test`` or ``_acme-challenge.x.test.``, case-insensitive) and TYPE one of
``TXT``, ``CNAME``, ``A``, ``AAAA``. CNAMEs are followed inside the table (the chain and the
target's records go into one answer, as an authoritative server does for names in its zone);
a name with no records at all is NXDOMAIN, a name with records of other types NOERROR and no
answer. Answers too big for UDP are truncated (TC), so resolvers retry over TCP.

In-process::

    server = DnsServer().start()          # server.port, server.address ("127.0.0.1:PORT")
    server.set_txt("_acme-challenge.x.test", ["digest"])
    server.set_cname("_acme-challenge.y.test", "_acme-challenge.x.test")
    server.set_address("x.test", ["127.0.0.1"])
    server.clear(); server.stop()

As a process serving a JSON file that others write (re-read on every query)::

    python tests/dnsserver.py --port 0 --records FILE     # prints "PORT <n>" once listening
    python tests/dnsserver.py --records FILE present _acme-challenge.x.test. VALUE
    python tests/dnsserver.py --records FILE cleanup _acme-challenge.x.test. VALUE

``present``/``cleanup`` add or remove one TXT value (lego's ``exec`` DNS provider calls its
program with exactly these arguments; ``DNSSERVER_RECORDS`` may name the file instead of
``--records``). The file holds the record table above as JSON.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import socketserver
import struct
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.TXT import TXT

Records = dict[str, dict[str, list[str]]]
TTL = 60
MAX_CNAME_HOPS = 8
TYPES = ("TXT", "CNAME", "A", "AAAA")


def _key(name: str) -> str:
    return name.lower().rstrip(".") + "."


def normalize(records: Any) -> Records:
    """The record table with absolute lower-case names and upper-case types."""
    out: Records = {}
    for name, by_type in (records or {}).items():
        entry = out.setdefault(_key(name), {})
        for rdtype, values in by_type.items():
            if rdtype.upper() not in TYPES:
                raise ValueError(f"unsupported record type {rdtype!r}")
            entry.setdefault(rdtype.upper(), []).extend(str(v) for v in values)
    return out


def answer(query: dns.message.Message, records: Records) -> dns.message.Message:
    """The authoritative response to ``query`` from ``records``."""
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response
    question = query.question[0]
    name = question.name
    wanted = dns.rdatatype.to_text(question.rdtype)
    for _ in range(MAX_CNAME_HOPS):
        entry = records.get(_key(name.to_text()))
        if entry is None:
            if not response.answer:  # NXDOMAIN only for the name asked (not a CNAME target)
                response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        if wanted in entry:
            response.answer.append(_rrset(name, wanted, entry[wanted]))
            return response
        targets = entry.get("CNAME")
        if not targets:
            return response  # NOERROR, no data
        response.answer.append(_rrset(name, "CNAME", targets[:1]))
        name = dns.name.from_text(targets[0])
    return response


def _rrset(name: dns.name.Name, rdtype: str, values: Sequence[str]) -> dns.rrset.RRset:
    if rdtype != "TXT":
        return dns.rrset.from_text_list(name, TTL, "IN", rdtype, list(values))
    rrset = dns.rrset.RRset(name, dns.rdataclass.IN, dns.rdatatype.TXT)
    for value in values:
        data = value.encode()
        chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
        rrset.add(TXT(dns.rdataclass.IN, dns.rdatatype.TXT, chunks), TTL)
    return rrset


def respond(wire: bytes, records: Callable[[], Records], max_size: int | None) -> bytes | None:
    """The response bytes for one query (None if it cannot be parsed); UDP passes the size
    limit and gets a truncated answer if the full one does not fit."""
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return None
    try:
        table = records()
    except (OSError, ValueError):
        response = dns.message.make_response(query)
        response.set_rcode(dns.rcode.SERVFAIL)
        return response.to_wire()
    response = answer(query, table)
    if max_size is None:
        return response.to_wire()
    limit = max(512, query.payload) if query.edns >= 0 else 512
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        response.answer.clear()
        response.flags |= dns.flags.TC
        return response.to_wire()


class _Udp(socketserver.ThreadingUDPServer):
    daemon_threads = True
    records: Callable[[], Records]


class _Tcp(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    records: Callable[[], Records]


class _UdpHandler(socketserver.BaseRequestHandler):
    server: _Udp

    def handle(self) -> None:
        data, sock = self.request
        out = respond(data, self.server.records, max_size=65535)
        if out is not None:
            sock.sendto(out, self.client_address)


class _TcpHandler(socketserver.BaseRequestHandler):
    server: _Tcp

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(10)
        try:
            while True:
                head = _read_exact(sock, 2)
                if head is None:
                    return
                data = _read_exact(sock, struct.unpack("!H", head)[0])
                if data is None:
                    return
                out = respond(data, self.server.records, max_size=None)
                if out is None:
                    return
                sock.sendall(struct.pack("!H", len(out)) + out)
        except OSError:
            return


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class DnsServer:
    """The server; records come from :meth:`set_txt` and friends, or from ``records``."""

    def __init__(self, port: int = 0, records: Callable[[], Records] | None = None) -> None:
        self._wanted_port = port
        self._table: Records = {}
        self._lock = threading.Lock()
        self._source = records or self._snapshot
        self._udp: _Udp | None = None
        self._tcp: _Tcp | None = None
        self.port = 0

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, the form of ``[acme] validation_dns_server``."""
        return f"127.0.0.1:{self.port}"

    def _snapshot(self) -> Records:
        with self._lock:
            return {name: {t: list(v) for t, v in e.items()} for name, e in self._table.items()}

    def start(self) -> DnsServer:
        """Bind UDP and TCP on one port (a free one for port 0) and serve in threads."""
        for _ in range(20):
            udp = _Udp(("127.0.0.1", self._wanted_port), _UdpHandler)
            port = udp.server_address[1]
            try:
                tcp = _Tcp(("127.0.0.1", port), _TcpHandler)
            except OSError:
                udp.server_close()
                if self._wanted_port:
                    raise
                continue
            break
        else:
            raise OSError("no port free for both UDP and TCP")
        udp.records = tcp.records = self._source
        self._udp, self._tcp, self.port = udp, tcp, int(port)
        for server in (udp, tcp):
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        for server in (self._udp, self._tcp):
            if server is not None:
                server.shutdown()
                server.server_close()
        self._udp = self._tcp = None

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set(self, name: str, rdtype: str, values: Sequence[str]) -> None:
        """Replace the ``rdtype`` records of ``name`` (an empty list removes them)."""
        with self._lock:
            entry = self._table.setdefault(_key(name), {})
            if values:
                entry[rdtype.upper()] = list(values)
            else:
                entry.pop(rdtype.upper(), None)
            if not entry:
                del self._table[_key(name)]

    def set_txt(self, name: str, values: Sequence[str]) -> None:
        self.set(name, "TXT", values)

    def set_cname(self, name: str, target: str) -> None:
        self.set(name, "CNAME", [_key(target)])

    def set_address(self, name: str, addresses: Sequence[str]) -> None:
        """A and AAAA records of ``name`` (each address goes where its family belongs)."""
        self.set(name, "A", [a for a in addresses if ":" not in a])
        self.set(name, "AAAA", [a for a in addresses if ":" in a])

    def clear(self) -> None:
        with self._lock:
            self._table.clear()


# The JSON file -------------------------------------------------------------------------------


def read_records(path: Path) -> Records:
    """The record table in ``path`` (a missing or empty file is an empty table)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    return normalize(json.loads(text)) if text.strip() else {}


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(str(path) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_records(path: Path, records: Records) -> None:
    """Replace the file atomically (a reader never sees half of it)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(records, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def edit_txt(path: Path, name: str, value: str, present: bool) -> None:
    """Add (``present``) or remove one TXT value of ``name`` in the file."""
    with _locked(path):
        records = read_records(path)
        entry = records.setdefault(_key(name), {})
        values = entry.setdefault("TXT", [])
        if present and value not in values:
            values.append(value)
        if not present and value in values:
            values.remove(value)
        if not values:
            del entry["TXT"]
        if not entry:
            del records[_key(name)]
        write_records(path, records)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--records", default=os.environ.get("DNSSERVER_RECORDS"))
    parser.add_argument("action", nargs="?", choices=("serve", "present", "cleanup"))
    parser.add_argument("name", nargs="?")
    parser.add_argument("value", nargs="?")
    args = parser.parse_args(argv)
    if not args.records:
        parser.error("--records FILE (or DNSSERVER_RECORDS) is required")
    path = Path(args.records).resolve()
    if args.action in ("present", "cleanup"):
        if not args.name or args.value is None:
            parser.error(f"{args.action} needs NAME and VALUE")
        edit_txt(path, args.name, args.value, args.action == "present")
        return 0
    server = DnsServer(args.port, records=lambda: read_records(path)).start()
    print(f"PORT {server.port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
