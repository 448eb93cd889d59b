"""ACME order rules (pure) and the http-01 validator against a local HTTP server."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from ca.acme import http01
from ca.acme.errors import AcmeError
from ca.acme.orders import check_identifiers, key_authorization, normalize_identifier, order_status
from ca.config import ProfileConfig
from ca.profiles import Profile

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)


@pytest.mark.parametrize(
    ("current", "authz", "expected"),
    [
        ("pending", ["pending", "valid"], "pending"),
        ("pending", ["valid", "valid"], "ready"),
        ("pending", ["valid", "invalid"], "invalid"),
        ("pending", ["pending", "deactivated"], "invalid"),
        ("ready", ["valid", "expired"], "invalid"),
        ("processing", ["valid"], "processing"),
        ("valid", ["valid"], "valid"),
        ("invalid", ["valid"], "invalid"),
        ("pending", [], "pending"),
    ],
)
def test_order_status(current, authz, expected):
    assert order_status(current, authz, LATER, NOW) == expected


def test_expired_order_is_invalid_unless_finalized():
    assert order_status("pending", ["pending"], NOW, NOW) == "invalid"
    assert order_status("ready", ["valid"], NOW, NOW) == "invalid"
    assert order_status("valid", ["valid"], NOW, NOW) == "valid"


def test_identifiers_are_normalised():
    assert normalize_identifier({"type": "dns", "value": "WWW.Example.COM."}) == {
        "type": "dns",
        "value": "www.example.com",
    }
    assert normalize_identifier({"type": "ip", "value": "2001:DB8:0::1"}) == {
        "type": "ip",
        "value": "2001:db8::1",
    }


@pytest.mark.parametrize(
    ("ident", "kind"),
    [
        ({"type": "dns", "value": "10.0.0.1"}, "rejectedIdentifier"),
        ({"type": "dns", "value": "a..b"}, "rejectedIdentifier"),
        ({"type": "ip", "value": "nope"}, "malformed"),
        ({"type": "email", "value": "a@b.c"}, "unsupportedIdentifier"),
        ({"type": "dns"}, "malformed"),
        ("www.example.com", "malformed"),
    ],
)
def test_bad_identifiers(ident, kind):
    with pytest.raises(AcmeError) as err:
        normalize_identifier(ident)
    assert err.value.kind == kind


def _profile(**kw) -> Profile:
    return Profile.from_config("p", ProfileConfig(**kw), "issuing")


def test_identifiers_checked_against_the_profile():
    profile = _profile(dns_names=[".corp.test"], ip_ranges=["10.0.0.0/8"])
    got = check_identifiers(
        [
            {"type": "dns", "value": "a.corp.test"},
            {"type": "dns", "value": "A.corp.test"},
            {"type": "ip", "value": "10.1.2.3"},
        ],
        profile,
    )
    assert got == [{"type": "dns", "value": "a.corp.test"}, {"type": "ip", "value": "10.1.2.3"}]
    for bad in ("a.other.test", "*.corp.test"):
        with pytest.raises(AcmeError) as err:
            check_identifiers([{"type": "dns", "value": bad}], profile)
        assert err.value.kind == "rejectedIdentifier"
    with pytest.raises(AcmeError) as err:
        check_identifiers([{"type": "ip", "value": "192.168.0.1"}], profile)
    assert err.value.kind == "rejectedIdentifier"
    with pytest.raises(AcmeError):
        check_identifiers([], profile)


# http-01 ---------------------------------------------------------------------------------------

ROUTES: dict[str, tuple[int, dict[str, str], bytes]] = {}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, headers, body = ROUTES.get(self.path, (404, {}, b""))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _check(port: int, token: str, expected: str = "tok.thumb") -> str | None:
    return http01.validate("dns", "host.test", token, expected, port=port, resolve_to="127.0.0.1")


def test_http01_outcomes(port):
    path = "/.well-known/acme-challenge/"
    ROUTES[path + "ok"] = (200, {}, b"  tok.thumb\n")
    ROUTES[path + "wrong"] = (200, {}, b"something else")
    ROUTES[path + "big"] = (200, {}, b"x" * 9000)
    ROUTES[path + "redir"] = (302, {"Location": path + "ok"}, b"")
    ROUTES[path + "loop"] = (302, {"Location": path + "loop"}, b"")
    ROUTES[path + "ftp"] = (302, {"Location": "ftp://host.test/x"}, b"")
    ROUTES[path + "port"] = (302, {"Location": "http://host.test:8081/x"}, b"")
    assert key_authorization("tok", "thumb") == "tok.thumb"
    assert _check(port, "ok") is None
    assert _check(port, "redir") is None
    assert (_check(port, "wrong") or "").startswith("incorrect")
    assert (_check(port, "missing") or "").startswith("incorrect")
    assert "larger" in (_check(port, "big") or "")
    assert "redirects" in (_check(port, "loop") or "")
    assert "non-http" in (_check(port, "ftp") or "")
    assert "port 8081" in (_check(port, "port") or "")


def test_http01_connection_refused():
    error = http01.validate("ip", "127.0.0.1", "t", "t.x", port=1)
    assert error is not None and error.startswith("could not fetch")
    assert http01.challenge_url("ip", "::1", 80, "t") == "http://[::1]/.well-known/acme-challenge/t"
