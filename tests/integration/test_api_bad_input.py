"""Hostile and broken input to the REST API, against a real gunicorn server.

One table of cases. Each case is sent as raw bytes and must be refused with its 4xx and problem
type, as an ``application/problem+json`` document with type/title/status/detail and no traceback;
it must not change the certificates or issuance intents in the database; a denial of an
authenticated client leaves exactly one audit event (``certificate.denied`` / ``api.denied``)
while anonymous failures and reads leave none; and the audit chain still verifies afterwards.
The server must answer every case (10 s timeout) and never with a 5xx.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pytest
import requests
from asn1crypto import csr as acsr
from asn1crypto import keys as akeys
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.x509.oid import ExtensionOID, NameOID
from helpers import make_csr

pytestmark = [pytest.mark.hsm, pytest.mark.db]

PROBLEM = "urn:hsmca:problem:"
MAX_BODY = 4096
TIMEOUT = 10

#: Profiles with name rules to break, and a body limit small enough to exceed cheaply.
CONFIG_EXTRA = f"""
[profiles.corp]
dns_names = [".corp.internal"]
ip_ranges = ["10.0.0.0/8"]

[profiles.wild]
dns_names = ["."]
allow_wildcards = true

[api]
max_body_bytes = {MAX_BODY}
"""


@pytest.fixture(scope="module")
def live_config_extra() -> str:
    return CONFIG_EXTRA


# --- CSRs and bodies ------------------------------------------------------------------------------

Body = bytes | Callable[[], bytes]


def _pem(der: bytes) -> bytes:
    return x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)


def _armour(der: bytes, label: str = "CERTIFICATE REQUEST") -> bytes:
    b64 = base64.encodebytes(der).decode().replace("\n", "")
    lines = "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----\n".encode()


def _csr_with(
    key: object,
    names: list[str],
    cn: str | None = None,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    algorithm: hashes.HashAlgorithm | None = None,
) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    csr = builder.sign(key, algorithm)  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM)


@functools.cache
def csr_ok(name: str = "ok.example.test") -> bytes:
    return make_csr([name], cn=None)


@functools.cache
def csr_bad_signature() -> bytes:
    der = bytearray(make_csr(["sig.example.test"], cn=None, der=True))
    der[-1] ^= 0x01  # the last octet of the ECDSA signature's s; the DER stays well-formed
    return _armour(bytes(der))


@functools.cache
def csr_rsa_1024() -> bytes:
    key = rsa.generate_private_key(65537, 1024)
    return _csr_with(key, ["weak.example.test"], algorithm=hashes.SHA256())


@functools.cache
def csr_ed25519() -> bytes:
    return _csr_with(ed25519.Ed25519PrivateKey.generate(), ["ed.example.test"])


@functools.cache
def csr_dsa() -> bytes:
    key = dsa.generate_private_key(2048)
    return _csr_with(key, ["dsa.example.test"], algorithm=hashes.SHA256())


@functools.cache
def csr_p256(*names: str, cn: str | None = None) -> bytes:
    return _csr_with(ec.generate_private_key(ec.SECP256R1()), list(names), cn, [], hashes.SHA256())


@functools.cache
def csr_raw_dns_san(raw: bytes) -> bytes:
    """A CSR whose SAN is one dNSName of exactly these octets (cryptography refuses U-labels)."""
    gn = bytes([0x82, len(raw)]) + raw
    san = bytes([0x30, len(gn)]) + gn
    ext = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, san)
    key = ec.generate_private_key(ec.SECP256R1())
    return _csr_with(key, [], None, [(ext, False)], hashes.SHA256())


@functools.cache
def csr_u_label_cn() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return _csr_with(key, ["xn--bcher-kva.example"], "bücher.example", [], hashes.SHA256())


@functools.cache
def csr_asking_for_ca() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    ext = x509.BasicConstraints(ca=True, path_length=None)
    return _csr_with(key, ["ca.example.test"], None, [(ext, True)], hashes.SHA256())


@functools.cache
def csr_asking_for_name_constraints() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    ext = x509.NameConstraints([x509.DNSName("example.test")], None)
    return _csr_with(key, ["nc.example.test"], None, [(ext, True)], hashes.SHA256())


@functools.cache
def csr_duplicate_san() -> bytes:
    """Two subjectAltName extensions, the second smuggling in another name (built by hand)."""
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def san(name: str) -> dict[str, object]:
        return {
            "extn_id": "subject_alt_name",
            "critical": False,
            "extn_value": [ax509.GeneralName(name="dns_name", value=name)],
        }

    info = acsr.CertificationRequestInfo(
        {
            "version": "v1",
            "subject": ax509.Name.build({}),
            "subject_pk_info": akeys.PublicKeyInfo.load(spki),
            "attributes": [
                {
                    "type": "extension_request",
                    "values": [[san("dup.example.test"), san("smuggled.example.test")]],
                }
            ],
        }
    )
    signature = key.sign(info.dump(), ec.ECDSA(hashes.SHA256()))
    req = acsr.CertificationRequest(
        {
            "certification_request_info": info,
            "signature_algorithm": {"algorithm": "sha256_ecdsa"},
            "signature": signature,
        }
    )
    return _pem(req.dump())


@functools.cache
def certificate_pem() -> bytes:
    """A self-signed certificate: PEM, but not a CSR."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not-a-csr.example.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def enroll(
    csr: bytes | str | Callable[[], bytes], profile: str = "server", **fields: object
) -> Body:
    """A lazily built ``POST /certificates`` body (CSRs are generated when the case runs)."""

    def build() -> bytes:
        value = csr() if callable(csr) else csr
        text = value.decode() if isinstance(value, bytes) else value
        return json.dumps({"csr": text, "profile": profile, **fields}).encode()

    return build


def raw_json(obj: object) -> bytes:
    return json.dumps(obj).encode()


# --- the corpus -----------------------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Bad:
    """One hostile request and what the API must answer."""

    id: str
    status: int
    type: str  # the problem type's slug after urn:hsmca:problem:
    body: Body = b""
    method: str = "POST"
    path: str = "/api/v1/certificates"
    headers: Mapping[str, str] = field(default_factory=lambda: dict(JSON))
    #: whose Authorization header to send: a client name, or one of the BAD_AUTH keys
    auth: str = "enroller"
    #: the one audit action this request must append (None: the audit chain must not grow)
    audit: str | None = None
    #: a policy violation rule the problem's ``violations`` must contain
    rule: str | None = None
    #: a substring the problem's ``detail`` must contain (case-insensitive)
    detail: str | None = None
    #: send the body with chunked transfer encoding (no Content-Length)
    chunked: bool = False


def _policy(id: str, body: Body, rule: str, auth: str = "enroller") -> Bad:
    return Bad(id, 403, "policy-denied", body, auth=auth, audit="certificate.denied", rule=rule)


def _malformed(id: str, body: Body, detail: str | None = None) -> Bad:
    return Bad(id, 400, "malformed-request", body, audit="certificate.denied", detail=detail)


def _bad_csr(id: str, body: Body, type_: str = "bad-csr", detail: str | None = None) -> Bad:
    return Bad(id, 400, type_, body, audit="certificate.denied", detail=detail)


BAD_AUTH = {
    "no-header": None,
    "unknown-token": "Bearer hsmca_" + "A" * 43,
    "not-a-token": "Bearer not-a-token",
    "empty-bearer": "Bearer ",
    "basic-scheme": "Basic " + base64.b64encode(b"admin:admin").decode(),
}
_DEEP = b"[" * 2040 + b"]" * 2040  # just under the body limit; deeper than Python's recursion limit

CASES: list[Bad] = [
    # Body syntax and media type.
    _malformed("malformed-json", b'{"csr": "-----BEGIN', detail="not valid JSON"),
    _malformed("invalid-utf8", b'{"csr": "\xff\xfe", "profile": "server"}'),
    _malformed("empty-body", b"", detail="body is required"),
    _malformed("whitespace-body", b" \n\t "),
    _malformed("json-array-body", raw_json([{"csr": "x", "profile": "server"}])),
    _malformed("json-null-body", b"null"),
    _malformed("json-string-body", b'"csr"'),
    _malformed("deeply-nested-json", _DEEP),
    _malformed("nan-literal", b'{"csr": "x", "profile": "server", "validity_days": NaN}'),
    Bad(
        "content-type-text-plain",
        415,
        "unsupported-media-type",
        enroll(csr_ok),
        headers={"Content-Type": "text/plain"},
        audit="certificate.denied",
    ),
    Bad(
        "content-type-form",
        415,
        "unsupported-media-type",
        lambda: b"csr=x&profile=server",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        audit="certificate.denied",
    ),
    Bad(
        "content-type-missing",
        415,
        "unsupported-media-type",
        enroll(csr_ok),
        headers={},
        audit="certificate.denied",
    ),
    Bad(
        "body-over-limit",
        413,
        "request-too-large",
        raw_json({"csr": "x" * MAX_BODY, "profile": "server"}),
        audit="certificate.denied",
    ),
    Bad(
        "chunked-body-over-limit",
        413,
        "request-too-large",
        raw_json({"csr": "x" * (2 * MAX_BODY), "profile": "server"}),
        audit="certificate.denied",
        chunked=True,
    ),
    Bad(
        "chunked-valid-json-padded-over-limit",
        413,
        "request-too-large",
        lambda: enroll(csr_ok)().ljust(2 * MAX_BODY, b" "),
        audit="certificate.denied",
        chunked=True,
    ),
    Bad(
        "accept-text-html",
        406,
        "not-acceptable",
        enroll(csr_ok),
        headers={**JSON, "Accept": "text/html"},
        audit="certificate.denied",
    ),
    # Body schema.
    _malformed("unknown-field", enroll(csr_ok, serial="01"), detail="serial"),
    _malformed("validity-days-as-string", enroll(csr_ok, validity_days="30")),
    _malformed("validity-days-as-bool", enroll(csr_ok, validity_days=True)),
    _malformed("validity-days-zero", enroll(csr_ok, validity_days=0)),
    _malformed("validity-days-float", enroll(csr_ok, validity_days=30.5)),
    _malformed("validity-days-beyond-schema", enroll(csr_ok, validity_days=10**40)),
    _malformed("csr-missing", lambda: raw_json({"profile": "server"}), detail="csr"),
    _malformed("profile-missing", lambda: raw_json({"csr": csr_ok().decode()})),
    _malformed("csr-empty-string", enroll("")),
    _malformed("csr-as-number", lambda: raw_json({"csr": 42, "profile": "server"})),
    _malformed("profile-as-list", enroll(csr_ok, profile=["server"])),  # type: ignore[arg-type]
    _malformed("metadata-bad-key", enroll(csr_ok, metadata={"Owner!": "x"})),
    _malformed("metadata-not-an-object", enroll(csr_ok, metadata=["owner", "x"])),
    _malformed("metadata-value-not-string", enroll(csr_ok, metadata={"owner": 7})),
    Bad(
        "unknown-profile",
        400,
        "unknown-profile",
        enroll(csr_ok, profile="no-such-profile"),
        audit="certificate.denied",
    ),
    # The CSR itself.
    _bad_csr("csr-not-pem-or-der", enroll("hello, CA"), detail="could not be parsed"),
    _bad_csr("csr-is-a-certificate", enroll(certificate_pem)),
    _bad_csr("csr-pem-armour-around-garbage", enroll(lambda: _armour(b"\x30\x03\x02\x01\x00"))),
    _bad_csr("csr-bad-signature", enroll(csr_bad_signature), detail="signature"),
    _bad_csr("csr-duplicate-extension", enroll(csr_duplicate_san), detail="duplicate"),
    _bad_csr("rsa-1024-key", enroll(csr_rsa_1024), "bad-public-key", detail="2048"),
    _bad_csr("ed25519-key", enroll(csr_ed25519), "bad-public-key"),
    _bad_csr("dsa-key", enroll(csr_dsa), "bad-public-key"),
    # Policy: the profile's rules.
    _policy("key-type-outside-profile", enroll(csr_ok, profile="rsa-only"), "key.type_not_allowed"),
    _policy(
        "validity-above-profile-maximum", enroll(csr_ok, validity_days=398), "validity.too_long"
    ),
    _policy(
        "dns-name-outside-profile",
        enroll(lambda: csr_p256("www.example.com"), profile="corp"),
        "dns.not_allowed",
    ),
    _policy(
        "dns-name-is-the-suffix-itself",
        enroll(lambda: csr_p256("corp.internal"), profile="corp"),
        "dns.not_allowed",
    ),
    _policy(
        "ip-address-outside-profile",
        enroll(lambda: make_csr(["app.corp.internal", "192.168.1.1"], cn=None), profile="corp"),
        "ip.not_allowed",
    ),
    _policy(
        "ip-address-in-profile-without-ip-ranges",
        enroll(lambda: make_csr(["10.1.2.3"], cn=None), profile="client"),
        "ip.not_allowed",
    ),
    _policy("csr-asks-for-ca-true", enroll(csr_asking_for_ca), "extension.ca_requested"),
    _policy(
        "csr-asks-for-name-constraints",
        enroll(csr_asking_for_name_constraints),
        "extension.name_constraints_requested",
    ),
    _policy(
        "cn-not-a-san",
        enroll(lambda: csr_p256("host.example.test", cn="other.example.test")),
        "cn.not_a_san",
    ),
    _policy("no-names-at-all", enroll(lambda: csr_p256()), "san.missing"),
    # Policy: the requester's own restrictions (*.payments.internal, profile server only).
    _policy(
        "name-outside-requester-restrictions",
        enroll(lambda: csr_p256("x.orders.internal")),
        "dns.requester_not_allowed",
        auth="payments",
    ),
    _policy(
        "name-two-labels-below-requester-wildcard",
        enroll(lambda: csr_p256("a.b.payments.internal")),
        "dns.requester_not_allowed",
        auth="payments",
    ),
    _policy(
        "ip-address-for-requester-with-dns-rules-only",
        enroll(lambda: make_csr(["a.payments.internal", "10.0.0.1"], cn=None)),
        "ip.requester_not_allowed",
        auth="payments",
    ),
    _policy(
        "profile-not-permitted-for-requester",
        enroll(lambda: csr_p256("c.payments.internal"), profile="client"),
        "profile.not_permitted_for_requester",
        auth="payments",
    ),
    # Policy: IDN and punycode tricks.
    _policy(
        "u-label-in-san", enroll(lambda: csr_raw_dns_san("bücher.example".encode())), "dns.syntax"
    ),
    _policy("u-label-as-cn", enroll(csr_u_label_cn), "cn.not_a_san"),
    _policy("invalid-punycode", enroll(lambda: csr_p256("xn--a.example")), "dns.syntax"),
    _policy("idna2003-only-label", enroll(lambda: csr_p256("xn--ls8h.example")), "dns.syntax"),
    _policy("uppercase-name", enroll(lambda: csr_p256("WWW.Example.COM")), "dns.syntax"),
    _policy("trailing-dot", enroll(lambda: csr_p256("www.example.com.")), "dns.syntax"),
    _policy("empty-label", enroll(lambda: csr_p256("www..example.com")), "dns.syntax"),
    _policy("underscore-in-name", enroll(lambda: csr_p256("my_host.example.com")), "dns.syntax"),
    _policy(
        "nul-in-name", enroll(lambda: csr_raw_dns_san(b"ok.example\x00.evil.test")), "dns.syntax"
    ),
    # Policy: wildcard abuse (profile 'wild' allows wildcards; 'server' does not).
    _policy(
        "wildcard-in-profile-without-wildcards",
        enroll(lambda: csr_p256("*.example.com")),
        "dns.wildcard_not_allowed",
    ),
    _policy(
        "wildcard-public-suffix",
        enroll(lambda: csr_p256("*.com"), profile="wild"),
        "dns.wildcard_invalid",
    ),
    _policy(
        "wildcard-not-leftmost",
        enroll(lambda: csr_p256("a.*.example.com"), profile="wild"),
        "dns.wildcard_invalid",
    ),
    _policy(
        "wildcard-alone", enroll(lambda: csr_p256("*"), profile="wild"), "dns.wildcard_invalid"
    ),
    _policy(
        "wildcard-partial-label",
        enroll(lambda: csr_p256("w*.example.com"), profile="wild"),
        "dns.wildcard_invalid",
    ),
    # Authentication and roles.
    *[Bad(f"enroll-{key}", 401, "unauthorized", enroll(csr_ok), auth=key) for key in BAD_AUTH],
    Bad("list-without-token", 401, "unauthorized", method="GET", auth="no-header"),
    Bad(
        "get-with-unknown-token",
        401,
        "unauthorized",
        method="GET",
        path="/api/v1/certificates/abcdef",
        auth="unknown-token",
    ),
    Bad(
        "enroll-without-enroll-role",
        403,
        "forbidden",
        enroll(csr_ok),
        auth="reader",
        audit="api.denied",
    ),
    # Inventory reads (nothing changes, nothing is audited).
    Bad("unknown-serial", 404, "not-found", method="GET", path="/api/v1/certificates/abcdef"),
    Bad("non-hex-serial", 404, "not-found", method="GET", path="/api/v1/certificates/xyz"),
    Bad(
        "over-long-serial",
        404,
        "not-found",
        method="GET",
        path="/api/v1/certificates/" + "a" * 200,
    ),
    Bad(
        "bad-cursor", 400, "malformed-request", method="GET", path="/api/v1/certificates?cursor=!!"
    ),
    Bad(
        "forged-cursor",
        400,
        "malformed-request",
        method="GET",
        path="/api/v1/certificates?cursor=" + base64.urlsafe_b64encode(b"c9:1").decode(),
    ),
    Bad(
        "bad-expiring-within",
        400,
        "malformed-request",
        method="GET",
        path="/api/v1/certificates?expiring_within=14x",
    ),
    Bad(
        "negative-expiring-within",
        400,
        "malformed-request",
        method="GET",
        path="/api/v1/certificates?expiring_within=-1d",
    ),
    Bad("limit-zero", 400, "malformed-request", method="GET", path="/api/v1/certificates?limit=0"),
    Bad(
        "unknown-status-filter",
        400,
        "malformed-request",
        method="GET",
        path="/api/v1/certificates?status=valid",
    ),
    Bad(
        "unknown-query-parameter",
        400,
        "malformed-request",
        method="GET",
        path="/api/v1/certificates?serial=01",
    ),
    Bad("unknown-request-id", 404, "not-found", method="GET", path="/api/v1/requests/req_nope"),
    # Routing.
    Bad("unknown-route", 404, "not-found", method="GET", path="/api/v1/nope"),
    Bad("method-not-allowed", 405, "method-not-allowed", method="DELETE"),
]


def _ids(cases: list[Bad]) -> list[str]:
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    return ids


# --- the test -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def authorization(live_api) -> dict[str, str | None]:
    """The Authorization header of each case's ``auth`` key (None: no header)."""
    tokens = {
        "enroller": live_api.add_client("enroller", ["enroll"]),
        "payments": live_api.add_client(
            "payments", ["enroll"], profiles=["server"], names=["*.payments.internal"]
        ),
        "reader": live_api.add_client("reader", ["read"]),
    }
    return {**{k: f"Bearer {v}" for k, v in tokens.items()}, **BAD_AUTH}


def _send(live_api, authorization: dict[str, str | None], case: Bad) -> requests.Response:
    headers = dict(case.headers)
    if authorization[case.auth] is not None:
        headers["Authorization"] = authorization[case.auth]
    body = case.body() if callable(case.body) else case.body
    data: object = body
    if case.chunked:
        data = iter([body[i : i + 1024] for i in range(0, len(body), 1024)])
    try:
        return requests.request(
            case.method,
            live_api.url(case.path),
            data=data if body or case.chunked else None,
            headers=headers,
            timeout=TIMEOUT,
            allow_redirects=False,
        )
    except requests.Timeout:
        pytest.fail(f"{case.id}: no answer within {TIMEOUT} s")


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_bad_request_is_refused_with_a_problem_and_changes_nothing(
    live_api, authorization, case: Bad
):
    before = live_api.counts()
    seq = live_api.audit_seq()
    log_mark = live_api.server.log_size()

    resp = _send(live_api, authorization, case)

    assert resp.status_code < 500, f"server error {resp.status_code}: {resp.text[:500]}"
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    assert resp.status_code == case.status, resp.text[:500]
    assert resp.headers.get("Content-Type", "").split(";")[0] == "application/problem+json"
    problem = resp.json()
    assert isinstance(problem, dict)
    for key in ("type", "title", "status", "detail"):
        assert key in problem, f"problem lacks {key!r}: {problem}"
    assert problem["type"] == PROBLEM + case.type, problem
    assert problem["status"] == resp.status_code
    assert isinstance(problem["title"], str) and problem["title"]
    assert isinstance(problem["detail"], str) and problem["detail"]
    if case.detail:
        assert case.detail.lower() in problem["detail"].lower(), problem["detail"]
    if case.rule:
        rules = [v.get("rule") for v in problem.get("violations") or []]
        assert case.rule in rules, problem
    if resp.status_code == 401:
        assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer")

    assert live_api.counts() == before, "a refused request changed the stored certificates/intents"
    new = live_api.audit_since(seq)
    if case.audit is None:
        assert new == [], [(e.action, e.actor) for e in new]
    else:
        assert [(e.action, e.actor) for e in new] == [(case.audit, case.auth)]
    live_api.verify_audit_chain()
    log = live_api.server.log_text(log_mark)
    assert "Traceback" not in log, log[-3000:]


# --- controls: the same clients and profiles do get certificates -----------------------------------


def _issue(live_api, authorization, who: str, body: bytes) -> requests.Response:
    return requests.post(
        live_api.url("/api/v1/certificates"),
        data=body,
        headers={**JSON, "Authorization": authorization[who]},
        timeout=TIMEOUT,
    )


def test_well_formed_enrollment_by_the_same_client_is_issued(live_api, authorization):
    before = live_api.counts()
    resp = _issue(live_api, authorization, "enroller", enroll(csr_p256("fine.example.test"))())
    assert resp.status_code == 201, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json()["sans"] == ["dns:fine.example.test"]
    assert live_api.counts()["certificates"] == before["certificates"] + 1
    live_api.verify_audit_chain()


def test_restricted_client_gets_names_inside_its_rules(live_api, authorization):
    resp = _issue(live_api, authorization, "payments", enroll(csr_p256("api.payments.internal"))())
    assert resp.status_code == 201, resp.text
    assert resp.json()["requester"] == "payments"


def test_wildcard_profile_issues_a_well_formed_wildcard(live_api, authorization):
    resp = _issue(
        live_api,
        authorization,
        "enroller",
        enroll(csr_p256("*.svc.example.test"), profile="wild")(),
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["sans"] == ["dns:*.svc.example.test"]
