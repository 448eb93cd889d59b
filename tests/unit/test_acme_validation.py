"""dns-01 and tls-alpn-01 validation: the pure checks (digests, names, the tls-alpn-01
certificate rules), the challenges offered per identifier, and the validators against the test
DNS server and TLS-ALPN responder on 127.0.0.1 (tests/dnsserver.py, tests/tlsalpn.py)."""

from __future__ import annotations

import hashlib
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from dnsserver import DnsServer, edit_txt, read_records
from tlsalpn import TlsAlpnResponder, challenge_cert

from ca.acme import dns01, http01, tlsalpn01
from ca.acme.errors import AcmeError
from ca.acme.orders import challenge_types, check_identifiers, started_sibling
from ca.config import ProfileConfig
from ca.profiles import Profile
from ca.store.acme import ChallengeRow

KEY_AUTHZ = "token-abc.thumbprint-xyz"


def _kind(call) -> tuple[str, str]:
    with pytest.raises(AcmeError) as err:
        call()
    return err.value.kind, err.value.detail


# Key authorization digests ---------------------------------------------------------------------


def test_dns01_txt_value_is_unpadded_base64url_of_sha256():
    # SHA-256("abc") = ba7816bf…15ad; its base64url has '-' and '_' and no '=' padding.
    assert dns01.txt_value("abc") == "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"


def test_dns01_record_name_of_a_wildcard_is_that_of_its_base_name():
    assert dns01.txt_name("x.test") == "_acme-challenge.x.test"
    assert dns01.txt_name("*.x.test") == "_acme-challenge.x.test"


def test_tlsalpn01_extension_value_is_der_octet_string_of_the_digest():
    digest = hashlib.sha256(KEY_AUTHZ.encode()).digest()
    assert tlsalpn01.expected_extension_value(KEY_AUTHZ) == b"\x04\x20" + digest


def test_tlsalpn01_sni_of_ip_identifiers_is_the_reverse_name():
    assert tlsalpn01.sni_name("dns", "x.test") == "x.test"
    assert tlsalpn01.sni_name("ip", "192.0.2.1") == "1.2.0.192.in-addr.arpa"
    assert tlsalpn01.sni_name("ip", "2001:db8::1") == (
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
    )


# TXT values ------------------------------------------------------------------------------------


def test_txt_check_accepts_the_digest_among_other_records():
    dns01.check_txt_values("_acme-challenge.x.test", ["old", "digest", "other"], "digest")


def test_txt_check_says_no_record_when_there_is_none():
    kind, detail = _kind(lambda: dns01.check_txt_values("_acme-challenge.x.test", [], "d"))
    assert kind == "incorrectResponse"
    assert detail == "no TXT record at _acme-challenge.x.test"


def test_txt_check_counts_wrong_records_and_quotes_only_a_few_shortened():
    values = [f"{i:02d}" + "v" * 500 for i in range(20)]
    kind, detail = _kind(lambda: dns01.check_txt_values("n.test", values, "digest"))
    assert kind == "incorrectResponse"
    assert detail.startswith("20 TXT record(s) at n.test, none is the expected")
    assert "and 17 more" in detail
    assert len(detail) < 400


# tls-alpn-01 certificates ----------------------------------------------------------------------


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _check(cert: x509.Certificate, kind: str = "dns", value: str = "x.test") -> None:
    tlsalpn01.check_certificate(_der(cert), kind, value, KEY_AUTHZ)


def test_tlsalpn01_accepts_the_right_certificates_for_names_and_addresses():
    _check(challenge_cert("dns", "x.test", KEY_AUTHZ)[0])
    _check(challenge_cert("ip", "192.0.2.1", KEY_AUTHZ)[0], "ip", "192.0.2.1")
    _check(challenge_cert("ip", "2001:db8::1", KEY_AUTHZ)[0], "ip", "2001:db8::1")


@pytest.mark.parametrize(
    ("wrong", "expected"),
    [
        ({"with_extension": False}, "no acmeIdentifier extension"),
        ({"critical": False}, "must be critical"),
        ({"digest": hashlib.sha256(b"other").digest()}, "not the SHA-256 of the key authorization"),
        ({"extension_der": b"\x0c\x03abc"}, "not a DER OCTET STRING of 32 octets"),
        ({"digest": b"\x01" * 31}, "not a DER OCTET STRING of 32 octets"),
        ({"extra_names": (("dns", "y.test"),)}, "exactly one name, it holds 2"),
        ({"san": ("dns", "y.test")}, "names dns:y.test, not dns:x.test"),
        ({"san": ("ip", "127.0.0.1")}, "names ip:127.0.0.1, not dns:x.test"),
    ],
)
def test_tlsalpn01_refuses_wrong_certificates(wrong, expected):
    cert = challenge_cert("dns", "x.test", KEY_AUTHZ, **wrong)[0]
    kind, detail = _kind(lambda: _check(cert))
    assert kind == "incorrectResponse"
    assert expected in detail


def test_tlsalpn01_ip_identifier_needs_an_ip_address_san():
    cert = challenge_cert("dns", "192.0.2.1.test", KEY_AUTHZ)[0]
    kind, detail = _kind(lambda: _check(cert, "ip", "192.0.2.1"))
    assert (kind, detail) == (
        "incorrectResponse",
        "the subjectAltName names dns:192.0.2.1.test, not ip:192.0.2.1",
    )


def test_tlsalpn01_refuses_garbage_instead_of_a_certificate():
    kind, detail = _kind(lambda: tlsalpn01.check_certificate(b"\x30\x03abc", "dns", "x", "k"))
    assert kind == "incorrectResponse" and "cannot be parsed" in detail


# Challenges offered ----------------------------------------------------------------------------


def _profile(**kw) -> Profile:
    return Profile.from_config("p", ProfileConfig(**kw), "issuing")


def test_challenges_offered_per_identifier_kind():
    assert challenge_types({"type": "dns", "value": "x.test"}) == (
        "http-01",
        "dns-01",
        "tls-alpn-01",
    )
    assert challenge_types({"type": "dns", "value": "*.x.test"}) == ("dns-01",)
    assert challenge_types({"type": "ip", "value": "10.0.0.1"}) == ("http-01", "tls-alpn-01")


def test_wildcard_identifiers_need_allow_wildcards_and_a_matching_rule():
    wild = _profile(dns_names=[".corp.test"], allow_wildcards=True)
    got = check_identifiers(
        [{"type": "dns", "value": "*.Corp.test"}, {"type": "dns", "value": "corp.test."}],
        _profile(dns_names=["corp.test", "*.corp.test"], allow_wildcards=True),
    )
    assert got == [{"type": "dns", "value": "*.corp.test"}, {"type": "dns", "value": "corp.test"}]
    assert check_identifiers([{"type": "dns", "value": "*.a.corp.test"}], wild)
    for profile, name, reason in (
        (_profile(dns_names=["."]), "*.x.test", "does not allow wildcard names"),
        (wild, "*.other.test", "not allowed by profile"),
        (wild, "*.*.corp.test", "wildcard may only be the leftmost label"),
    ):
        with pytest.raises(AcmeError) as err:
            check_identifiers([{"type": "dns", "value": name}], profile)
        assert err.value.kind == "rejectedIdentifier" and reason in err.value.detail


def _ch(id: int, status: str) -> ChallengeRow:
    return ChallengeRow(id, 1, "http-01", f"t{id}", status, None, None)


def test_one_started_challenge_blocks_its_siblings():
    assert started_sibling([_ch(1, "pending"), _ch(2, "pending")], 1) is None
    assert started_sibling([_ch(1, "pending"), _ch(2, "processing")], 1) == _ch(2, "processing")
    assert started_sibling([_ch(1, "processing")], 1) is None


# Validators against local servers --------------------------------------------------------------


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _empty_zone(dns_server: DnsServer) -> None:
    dns_server.clear()


def _dns01(server: DnsServer, name: str = "x.test") -> None:
    dns01.validate(name, KEY_AUTHZ, server=server.address, timeout=3)


def test_dns01_finds_the_digest_through_a_cname(dns_server):
    dns_server.set_txt("_acme-challenge.x.test", ["other", dns01.txt_value(KEY_AUTHZ)])
    _dns01(dns_server)
    dns_server.set_cname("_acme-challenge.y.test", "validation.elsewhere.test")
    dns_server.set_txt("validation.elsewhere.test", [dns01.txt_value(KEY_AUTHZ)])
    _dns01(dns_server, "y.test")


def test_dns01_failures_have_their_problem_types(dns_server):
    assert _kind(lambda: _dns01(dns_server)) == (
        "dns",
        "_acme-challenge.x.test does not exist (NXDOMAIN)",
    )
    dns_server.set_address("_acme-challenge.x.test", ["127.0.0.1"])
    assert _kind(lambda: _dns01(dns_server)) == (
        "incorrectResponse",
        "no TXT record at _acme-challenge.x.test",
    )
    dns_server.set_txt("_acme-challenge.x.test", ["v" * 300] * 1 + [f"w{i}" for i in range(40)])
    kind, detail = _kind(lambda: _dns01(dns_server))  # too big for UDP: answered over TCP
    assert kind == "incorrectResponse" and detail.startswith("41 TXT record(s)")


def test_dns01_unreachable_server_is_a_connection_problem():
    kind, detail = _kind(
        lambda: dns01.validate("x.test", KEY_AUTHZ, server="127.0.0.1:9", timeout=1)
    )
    assert kind == "connection" and "within 1 s" in detail


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"{self.headers['Host']} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_http01_resolves_names_with_the_configured_dns_server(dns_server):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        expected = f"web.test:{port} /.well-known/acme-challenge/tok"
        check = lambda: http01.check(  # noqa: E731
            "dns", "web.test", "tok", expected, port=port, dns_server=dns_server.address, timeout=3
        )
        assert _kind(check) == (
            "dns",
            f"could not fetch http://web.test:{port}/.well-known/acme-challenge/tok: "
            "web.test does not exist (NXDOMAIN)",
        )
        dns_server.set_address("web.test", ["127.0.0.1"])
        check()
    finally:
        server.shutdown()
        server.server_close()


def test_tlsalpn01_resolves_with_the_dns_server_and_needs_the_alpn_protocol(dns_server):
    responder = TlsAlpnResponder().start()
    try:
        dns_server.set_address("tls.test", ["127.0.0.1"])
        responder.answer("dns", "tls.test", KEY_AUTHZ)
        responder.answer("ip", "127.0.0.1", KEY_AUTHZ)
        responder.set("plain.test", *challenge_cert("dns", "plain.test", KEY_AUTHZ), alpn=[])
        dns_server.set_address("plain.test", ["127.0.0.1"])

        def check(kind: str, value: str) -> None:
            tlsalpn01.validate(
                kind, value, KEY_AUTHZ, port=responder.port, dns_server=dns_server.address
            )

        check("dns", "tls.test")
        check("ip", "127.0.0.1")
        assert _kind(lambda: check("dns", "plain.test")) == (
            "incorrectResponse",
            "the server did not negotiate ALPN acme-tls/1 (got None)",
        )
        kind, detail = _kind(lambda: check("dns", "unknown.test"))
        assert kind == "dns"
        dns_server.set_address("unknown.test", ["127.0.0.1"])
        kind, detail = _kind(lambda: check("dns", "unknown.test"))
        assert kind == "tls" and "SNI unknown.test" in detail
    finally:
        responder.stop()


# The DNS server's file mode (lego's exec provider writes the file) ----------------------------


def test_dns_server_process_serves_the_file_as_present_and_cleanup_change_it(tmp_path: Path):
    records = tmp_path / "records.json"
    script = Path(__file__).parents[1] / "dnsserver.py"
    cmd = [sys.executable, str(script), "--records", str(records)]
    proc = subprocess.Popen([*cmd, "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])

        def txt(name: str) -> tuple[int, list[bytes]]:
            query = dns.message.make_query(name, "TXT")
            resp = dns.query.udp(query, "127.0.0.1", port=port, timeout=3)
            return resp.rcode(), sorted(s for rr in resp.answer for r in rr for s in r.strings)

        assert txt("_acme-challenge.x.test.")[0] == 3  # NXDOMAIN: no file yet
        subprocess.run([*cmd, "present", "_acme-challenge.x.test.", "v1"], check=True)
        subprocess.run([*cmd, "present", "_acme-challenge.X.test", "v2"], check=True)
        assert txt("_acme-challenge.x.test.") == (0, [b"v1", b"v2"])
        subprocess.run([*cmd, "cleanup", "_acme-challenge.x.test.", "v1"], check=True)
        assert read_records(records) == {"_acme-challenge.x.test.": {"TXT": ["v2"]}}
        edit_txt(records, "_acme-challenge.x.test", "v2", present=False)
        assert json.loads(records.read_text()) == {}
    finally:
        proc.terminate()
        proc.wait(10)
