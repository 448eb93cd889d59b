"""The REST API through Flask's test client on a real CA (SoftHSM token, SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from cryptography import x509
from helpers import make_csr

from ca.audit import verify_chain
from ca.authority import Authority
from ca.clients import create_client, disable_client
from ca.config import ProfileConfig
from ca.store import tables as t
from web import create_app

pytestmark = [pytest.mark.hsm, pytest.mark.db]


@pytest.fixture
def api(ca_env):
    """An app over the test CA with an extra profile that needs approval."""
    profiles = dict(ca_env.config.profiles)
    profiles["gated"] = ProfileConfig(
        description="needs dual control", dns_names=["."], requires_approval=True
    )
    profiles["narrow"] = ProfileConfig(
        dns_names=[".svc.corp.test"], validity_days=30, max_validity_days=30
    )
    config = ca_env.config.model_copy(update={"profiles": profiles})
    auth = Authority(config=config, db=ca_env.auth.db, keys=ca_env.auth.keys)
    app = create_app(config, lambda cfg: auth)
    return auth, app.test_client()


def token_for(auth, name, roles, profiles=(), names=()):
    _, token = create_client(auth, name, list(roles), list(profiles), list(names), "test")
    return {"Authorization": f"Bearer {token}"}


def enroll(client, headers, names, profile="server", **extra):
    body = {"csr": make_csr(names).decode(), "profile": profile, **extra}
    return client.post("/api/v1/certificates", json=body, headers=headers)


def test_enroll_returns_201_with_certificate_chain_and_location(api):
    auth, client = api
    h = token_for(auth, "web", ["enroll"])
    resp = enroll(
        client, h, ["app.corp.test"], metadata={"owner": "team-a", "contact": "a@corp.test"}
    )
    assert resp.status_code == 201, resp.json
    body = resp.json
    cert = x509.load_pem_x509_certificate(body["certificate"].encode())
    assert format(cert.serial_number, "x") == body["serial"]
    assert resp.headers["Location"] == f"/api/v1/certificates/{body['serial']}"
    chain = x509.load_pem_x509_certificates(body["chain"].encode())
    cert.verify_directly_issued_by(chain[0])
    assert body["not_after"].endswith("Z") and body["owner"] == "team-a"
    assert body["metadata"] == {"contact": "a@corp.test", "owner": "team-a"}
    stored = auth.db.get_certificate(body["serial"])
    assert stored.owner == "team-a" and stored.requester == "web"


def test_enroll_with_pem_chain_accept_returns_the_chain_itself(api):
    auth, client = api
    h = token_for(auth, "web", ["enroll"])
    body = {"csr": make_csr(["pem.corp.test"]).decode(), "profile": "server"}
    resp = client.post(
        "/api/v1/certificates",
        json=body,
        headers={**h, "Accept": "application/pem-certificate-chain"},
    )
    assert resp.status_code == 201
    assert resp.mimetype == "application/pem-certificate-chain"
    certs = x509.load_pem_x509_certificates(resp.data)
    assert len(certs) == 2
    certs[0].verify_directly_issued_by(certs[1])


def test_policy_denial_is_403_listing_every_violation_and_audited(api):
    auth, client = api
    h = token_for(auth, "web", ["enroll"])
    before = auth.db.count(t.Certificate)
    resp = enroll(
        client, h, ["a.elsewhere.test", "b.elsewhere.test"], profile="narrow", validity_days=90
    )
    assert resp.status_code == 403
    assert resp.mimetype == "application/problem+json"
    problem = resp.json
    assert problem["type"] == "urn:hsmca:problem:policy-denied"
    rules = [v["rule"] for v in problem["violations"]]
    assert len(rules) >= 3, problem  # two names and the validity, all reported at once
    assert auth.db.count(t.Certificate) == before
    denied = auth.db.audit_events("certificate.denied")
    assert denied and denied[-1].actor == "web"
    assert denied[-1].details.get("profile_sha256") == auth.profile("narrow").sha256


def test_requester_name_restrictions_narrow_the_profile(api):
    auth, client = api
    h = token_for(auth, "payments", ["enroll"], names=["*.payments.internal"])
    assert enroll(client, h, ["api.payments.internal"]).status_code == 201
    deep = enroll(client, h, ["a.b.payments.internal"])
    other = enroll(client, h, ["x.orders.internal"])
    assert deep.status_code == 403 and other.status_code == 403
    assert any("requester" in v["rule"] for v in other.json["violations"])


def test_missing_token_is_401_and_missing_role_is_403(api):
    auth, client = api
    no_token = client.get("/api/v1/certificates")
    assert no_token.status_code == 401
    assert no_token.headers["WWW-Authenticate"].startswith("Bearer")
    bad = client.get("/api/v1/certificates", headers={"Authorization": "Bearer hsmca_" + "x" * 43})
    assert bad.status_code == 401
    reader = token_for(auth, "reader", ["read"])
    resp = enroll(client, reader, ["r.corp.test"])
    assert resp.status_code == 403 and resp.json["type"] == "urn:hsmca:problem:forbidden"
    assert auth.db.audit_events("api.denied")[-1].actor == "reader"


def test_disabled_client_token_stops_working(api):
    auth, client = api
    h = token_for(auth, "temp", ["read"])
    disable_client(auth, "temp", "test")
    # A fresh app: the running one may cache a successful lookup for a few seconds.
    app = create_app(auth.config, lambda cfg: auth)
    assert app.test_client().get("/api/v1/cas", headers=h).status_code == 401


def test_inventory_filters_and_cursor_pagination(api):
    auth, client = api
    h = token_for(auth, "web", ["enroll", "read"])
    serials = []
    for i in range(5):
        resp = enroll(client, h, [f"inv{i}.corp.test"], metadata={"owner": "o1" if i < 3 else "o2"})
        serials.append(resp.json["serial"])
    # (The inventory also lists the issuing CA's own certificate: filter on the profile.)
    first = client.get("/api/v1/certificates?profile=server&limit=2", headers=h)
    assert first.status_code == 200
    page = first.json
    assert [c["serial"] for c in page["items"]] == serials[:2]
    assert 'rel="next"' in first.headers["Link"]
    seen = [c["serial"] for c in page["items"]]
    while page["next_cursor"]:
        page = client.get(
            f"/api/v1/certificates?profile=server&limit=2&cursor={page['next_cursor']}", headers=h
        ).json
        seen += [c["serial"] for c in page["items"]]
    assert seen == serials
    owned = client.get("/api/v1/certificates?owner=o2", headers=h).json["items"]
    assert {c["serial"] for c in owned} == set(serials[3:])
    by_name = client.get("/api/v1/certificates?name=inv3", headers=h).json["items"]
    assert [c["serial"] for c in by_name] == [serials[3]]
    exact = client.get("/api/v1/certificates?name_exact=inv4.corp.test", headers=h).json["items"]
    assert [c["serial"] for c in exact] == [serials[4]]
    assert client.get("/api/v1/certificates?name_exact=inv4.corp", headers=h).json["items"] == []
    soon = client.get("/api/v1/certificates?expiring_within=14d", headers=h).json["items"]
    assert soon == []
    later = client.get("/api/v1/certificates?profile=server&expiring_within=100d", headers=h).json[
        "items"
    ]
    assert len(later) == 5
    assert client.get("/api/v1/certificates?bogus=1", headers=h).status_code == 400
    assert client.get("/api/v1/certificates?cursor=!!", headers=h).status_code == 400


def test_enroll_only_clients_see_only_their_own_certificates(api):
    auth, client = api
    a = token_for(auth, "team-a", ["enroll"])
    b = token_for(auth, "team-b", ["enroll"])
    sa = enroll(client, a, ["a.corp.test"]).json["serial"]
    sb = enroll(client, b, ["b.corp.test"]).json["serial"]
    listed = client.get("/api/v1/certificates", headers=a).json["items"]
    assert [c["serial"] for c in listed] == [sa]
    assert client.get(f"/api/v1/certificates/{sb}", headers=a).status_code == 404
    assert client.get(f"/api/v1/certificates/{sa}", headers=a).status_code == 200


def test_certificate_by_serial_in_json_pem_and_der(api):
    auth, client = api
    h = token_for(auth, "web", ["enroll", "read"])
    serial = enroll(client, h, ["get.corp.test"]).json["serial"]
    js = client.get(f"/api/v1/certificates/{serial}", headers=h)
    der = client.get(
        f"/api/v1/certificates/{serial}", headers={**h, "Accept": "application/pkix-cert"}
    )
    pem = client.get(
        f"/api/v1/certificates/{serial}",
        headers={**h, "Accept": "application/pem-certificate-chain"},
    )
    assert der.mimetype == "application/pkix-cert"
    from_der = x509.load_der_x509_certificate(der.data)
    assert from_der == x509.load_pem_x509_certificate(js.json["certificate"].encode())
    assert len(x509.load_pem_x509_certificates(pem.data)) == 2
    assert client.get("/api/v1/certificates/abcdef", headers=h).status_code == 404
    assert client.get("/api/v1/certificates/zz", headers=h).status_code == 404
    odd = client.get(f"/api/v1/certificates/{serial}", headers={**h, "Accept": "image/png"})
    assert odd.status_code == 406


def test_profiles_and_cas_are_listed(api):
    auth, client = api
    h = token_for(auth, "web", ["enroll"], profiles=["server"])
    profiles = client.get("/api/v1/profiles", headers=h).json["items"]
    assert [p["name"] for p in profiles] == ["server"]
    assert profiles[0]["sha256"] == auth.profile("server").sha256
    cas = client.get("/api/v1/cas", headers=h).json["items"]
    assert {c["name"] for c in cas} >= {"root", "issuing"} or len(cas) == 2
    issuing = next(c for c in cas if c["name"] == "issuing")
    assert issuing["parent"] is not None and issuing["not_after"].endswith("Z")


def test_approval_needs_a_second_person_then_issues(api):
    auth, client = api
    requester = token_for(auth, "dev", ["enroll"])
    approver = token_for(auth, "lead", ["approve"])
    before = auth.db.count(t.Certificate)
    pending = enroll(client, requester, ["gated.corp.test"], profile="gated")
    assert pending.status_code == 202
    location = pending.headers["Location"]
    request_id = pending.json["id"]
    assert pending.json["state"] == "pending" and location.endswith(request_id)
    assert auth.db.count(t.Certificate) == before
    # The requester cannot approve (no role), and an approver cannot approve their own request.
    assert client.post(f"{location}/approve", headers=requester).status_code == 403
    both = token_for(auth, "dev2", ["enroll", "approve"])
    own = enroll(client, both, ["own.corp.test"], profile="gated").json["id"]
    refused = client.post(f"/api/v1/requests/{own}/approve", headers=both)
    assert refused.status_code == 403 and "dual control" in refused.json["detail"]
    assert auth.db.audit_events("request.approve_denied")
    issued = client.post(f"{location}/approve", headers=approver)
    assert issued.status_code == 201, issued.json
    assert auth.db.count(t.Certificate) == before + 1
    shown = client.get(location, headers=requester).json
    assert shown["state"] == "issued" and shown["serial"] == issued.json["serial"]
    assert shown["decided_by"] == "lead"
    again = client.post(f"{location}/approve", headers=approver)
    assert again.status_code == 409
    requested = [
        e for e in auth.db.audit_events("certificate.requested") if e.subject == shown["serial"]
    ]
    assert requested[0].details["approved_by"] == "lead"
    assert requested[0].details["request_id"] == request_id


def test_rejected_and_expired_requests_cannot_be_approved(api):
    auth, client = api
    requester = token_for(auth, "dev", ["enroll"])
    approver = token_for(auth, "lead", ["approve"])
    rid = enroll(client, requester, ["rej.corp.test"], profile="gated").json["id"]
    rejected = client.post(
        f"/api/v1/requests/{rid}/reject", json={"reason": "not ours"}, headers=approver
    )
    assert rejected.status_code == 200 and rejected.json["state"] == "rejected"
    assert client.post(f"/api/v1/requests/{rid}/approve", headers=approver).status_code == 409

    rid2 = enroll(client, requester, ["exp.corp.test"], profile="gated").json["id"]
    real_now = auth.now

    auth.now = lambda: real_now() + timedelta(hours=73)  # type: ignore[method-assign]
    try:
        late = client.post(f"/api/v1/requests/{rid2}/approve", headers=approver)
    finally:
        auth.now = real_now  # type: ignore[method-assign]
    assert late.status_code == 409 and late.json["type"] == "urn:hsmca:problem:expired"
    assert auth.db.audit_events("request.expired")[-1].subject == rid2


def test_every_decision_is_in_an_intact_audit_chain(api):
    auth, client = api
    h = token_for(auth, "web", ["enroll"])
    enroll(client, h, ["ok.corp.test"])
    enroll(client, h, ["bad name.corp.test"])
    entries = list(auth.db.audit_entries())
    verify_chain(entries)
    actions = [e.action for e in entries]
    assert "certificate.issued" in actions and "certificate.denied" in actions
    requested = [e for e in entries if e.action == "certificate.requested"][-1]
    assert requested.details["profile_sha256"] == auth.profile("server").sha256
    assert requested.details["matched"]


def test_openapi_document_describes_every_route(api):
    auth, client = api
    doc = client.get("/api/v1/openapi.json")
    assert doc.status_code == 200
    spec = doc.json
    assert spec["openapi"].startswith("3.1")
    app_routes = {
        r.rule.removeprefix("/api/v1").replace("<", "{").replace(">", "}")
        for r in create_app(auth.config, lambda cfg: auth).url_map.iter_rules()
        if r.rule.startswith("/api/v1") and not r.rule.endswith("openapi.json")
    }
    assert app_routes == set(spec["paths"])
    json.dumps(spec)  # serialisable


def test_body_limit_and_media_type_are_enforced(api):
    auth, client = api
    h = token_for(auth, "web", ["enroll"])
    huge = json.dumps({"csr": "A" * 300_000, "profile": "server"})
    big = client.post(
        "/api/v1/certificates", data=huge, headers={**h, "Content-Type": "application/json"}
    )
    assert big.status_code == 413 and big.mimetype == "application/problem+json"
    text = client.post(
        "/api/v1/certificates", data="csr=x", headers={**h, "Content-Type": "text/plain"}
    )
    assert text.status_code == 415
    broken = client.post(
        "/api/v1/certificates", data="{not json", headers={**h, "Content-Type": "application/json"}
    )
    assert broken.status_code == 400
    assert broken.json["type"] == "urn:hsmca:problem:malformed-request"


def test_approvers_list_pending_requests_and_requesters_see_only_their_own(api):
    auth, client = api
    dev = token_for(auth, "dev", ["enroll"])
    other = token_for(auth, "other", ["enroll"])
    approver = token_for(auth, "lead", ["approve"])
    mine = enroll(client, dev, ["l1.corp.test"], profile="gated").json["id"]
    theirs = enroll(client, other, ["l2.corp.test"], profile="gated").json["id"]
    listed = client.get("/api/v1/requests", headers=approver).json["items"]
    assert [r["id"] for r in listed] == [mine, theirs]
    own = client.get("/api/v1/requests", headers=dev).json["items"]
    assert [r["id"] for r in own] == [mine]
    client.post(f"/api/v1/requests/{mine}/reject", json={"reason": "no"}, headers=approver)
    assert [r["id"] for r in client.get("/api/v1/requests", headers=approver).json["items"]] == [
        theirs
    ]
    rejected = client.get("/api/v1/requests?state=rejected", headers=approver).json["items"]
    assert [r["id"] for r in rejected] == [mine]
    assert client.get("/api/v1/requests?state=bogus", headers=approver).status_code == 400
