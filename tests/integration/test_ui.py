"""The compliance view (/ui) through Flask's test client, on SQLite and PostgreSQL: sign-in,
sessions, CSRF, the rate limit, roles, the pages' filters and pagination, escaping, and the
``hsmca user`` commands."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from cryptography import x509
from flask import Flask
from flask.testing import FlaskClient
from helpers import CaEnv, make_csr
from sqlalchemy import insert, text, update

from ca.authority import Authority
from ca.config import UiConfig
from ca.issuance import IssuanceRequest, issue
from ca.revocation import revoke
from ca.store import tables as t
from ca.store.ui import get_user
from ca.users import ANONYMOUS, FAILURE_WINDOW, add_user, change_password, disable_user, sign_in
from web import create_app
from web.ui.security import COOKIE, signed_in

pytestmark = [pytest.mark.hsm]

BASE = "https://ca.test"
PASSWORDS = {"alice": "alice-long-passphrase-1", "olga": "olga-long-passphrase-2"}


@dataclasses.dataclass
class Ui:
    env: CaEnv
    auth: Authority
    app: Flask

    def client(self, address: str = "127.0.0.1") -> FlaskClient:
        client = self.app.test_client()
        client.environ_base["REMOTE_ADDR"] = address
        return client

    def signed_in(self, name: str = "alice") -> FlaskClient:
        client = self.client()
        resp = login(client, name, PASSWORDS[name])
        assert resp.status_code == 302, resp.get_data(as_text=True)
        return client


def build(env: CaEnv, **ui: object) -> Ui:
    config = env.config.model_copy(update={"ui": UiConfig(**ui)}) if ui else env.config
    auth = dataclasses.replace(env.auth, config=config)
    return Ui(env, auth, create_app(config, lambda _cfg: auth))


@pytest.fixture
def ui(ca_env: CaEnv) -> Iterator[Ui]:
    for name, role in (("alice", "auditor"), ("olga", "operator")):
        add_user(ca_env.auth, name, role, PASSWORDS[name], actor="test")
    yield build(ca_env)


def get(client: FlaskClient, path: str, **kwargs: object):  # type: ignore[no-untyped-def]
    return client.get(path, base_url=BASE, **kwargs)


def post(client: FlaskClient, path: str, data: dict[str, str] | None = None, csrf: bool = True):  # type: ignore[no-untyped-def]
    form = dict(data or {})
    if csrf:
        form["csrf_token"] = csrf_of(client)
    return client.post(path, data=form, base_url=BASE)


def csrf_of(client: FlaskClient) -> str:
    """The CSRF token of the client's session, as a page's forms carry it."""
    page = get(client, "/ui/login").get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    if match is None:  # signed in: the login page redirects; take it from the dashboard
        page = get(client, "/ui").get_data(as_text=True)
        match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page[:500]
    return match.group(1)


def login(client: FlaskClient, name: str, password: str, next_: str = ""):  # type: ignore[no-untyped-def]
    return post(client, "/ui/login", {"name": name, "password": password, "next": next_})


def events(auth: Authority, prefix: str = "ui.") -> list[tuple[str, str, str, dict]]:
    return [
        (e.actor, e.action, e.subject, dict(e.details))
        for e in auth.db.audit_entries()
        if e.action.startswith(prefix)
    ]


def issue_for(auth: Authority, name: str, owner: str | None = None) -> str:
    meta = {"owner": owner} if owner else None
    return issue(auth, IssuanceRequest(make_csr([name]), "server", "tester", metadata=meta)).serial


# Sign-in, sessions ---------------------------------------------------------------------------------


def test_pages_redirect_to_sign_in_until_signed_in(ui):
    client = ui.client()
    resp = get(client, "/ui/certificates?q=x")
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith("/ui/login?next=")
    assert resp.headers["Location"] == "/ui/login?next=/ui/certificates?q%3Dx"
    login_page = get(client, "/ui/login")
    assert login_page.status_code == 200 and 'name="password"' in login_page.get_data(as_text=True)


def test_sign_in_sets_a_host_only_secure_httponly_strict_cookie_and_is_audited(ui):
    client = ui.client()
    resp = login(client, "alice", PASSWORDS["alice"], next_="/ui/audit")
    assert resp.status_code == 302 and resp.headers["Location"] == "/ui/audit"
    cookie = next(h for h in resp.headers.getlist("Set-Cookie") if h.startswith(COOKIE + "="))
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"secure", "httponly", "samesite", "path", "expires"} <= attrs
    assert "SameSite=Strict" in cookie and "Path=/" in cookie and "Domain" not in cookie
    assert get(client, "/ui").status_code == 200
    (actor, action, subject, details), *_ = [
        e for e in events(ui.auth) if e[1] == "ui.login.succeeded"
    ]
    assert (actor, subject) == ("ui:alice", "ui-user:alice")
    assert details == {"name": "alice", "address": "127.0.0.1", "role": "auditor"}
    assert get_user(ui.auth.db, "alice").last_login_at is not None


def test_next_after_sign_in_never_leaves_the_ui(ui):
    for target in ("https://evil.test/ui", "//evil.test/ui", "/api/v1/certificates", "/ui//x"):
        resp = login(ui.client(), "alice", PASSWORDS["alice"], next_=target)
        assert resp.headers["Location"] == "/ui", target


def test_wrong_password_unknown_name_and_disabled_user_get_one_generic_error(ui):
    disable_user(ui.auth, "olga", actor="test")
    bodies = set()
    for name, password in (
        ("alice", "not-her-password-at-all"),
        ("nobody", "whatever-password-1"),
        ("olga", PASSWORDS["olga"]),
    ):
        resp = login(ui.client(), name, password)
        assert resp.status_code == 401
        assert COOKIE not in "".join(resp.headers.getlist("Set-Cookie")) or "user" not in str(resp)
        body = resp.get_data(as_text=True)
        assert "Wrong name or password." in body
        bodies.add(re.sub(r'value="[^"]*"', "", body))
    assert len(bodies) == 1  # nothing on the page tells the three apart
    failed = [e for e in events(ui.auth) if e[1] == "ui.login.failed"]
    assert [(e[0], e[3]["name"], e[3]["reason"]) for e in failed] == [
        (ANONYMOUS, "alice", "wrong password"),
        (ANONYMOUS, "nobody", "unknown user"),
        (ANONYMOUS, "olga", "user disabled"),
    ]
    chain_text = json.dumps([dict(e.details) for e in ui.auth.db.audit_entries()])
    assert "not-her-password" not in chain_text and PASSWORDS["olga"] not in chain_text


def test_sign_out_is_audited_and_ends_the_session(ui):
    client = ui.signed_in("olga")
    resp = post(client, "/ui/logout")
    assert resp.status_code == 302 and resp.headers["Location"] == "/ui/login"
    assert get(client, "/ui").status_code == 302
    assert [e[1] for e in events(ui.auth)][-1] == "ui.logout"


def test_session_ends_after_the_idle_time(ui):
    client = ui.signed_in()
    with client.session_transaction(path="/ui", base_url=BASE) as sess:
        sess["t"] -= ui.auth.config.ui.session_minutes * 60 + 1
    resp = get(client, "/ui")
    assert resp.status_code == 302
    page = get(client, resp.headers["Location"]).get_data(as_text=True)
    assert "Your session ended" in page


def test_disabling_a_user_or_changing_the_password_ends_their_sessions(ui):
    alice, olga = ui.signed_in("alice"), ui.signed_in("olga")
    disable_user(ui.auth, "alice", actor="test")
    change_password(ui.auth, "olga", "a-brand-new-passphrase", actor="test")
    assert get(alice, "/ui").status_code == 302
    assert get(olga, "/ui").status_code == 302
    assert login(ui.client(), "olga", "a-brand-new-passphrase").status_code == 302


def test_a_forged_or_tampered_cookie_is_not_a_session(ui):
    client = ui.client()
    client.set_cookie(COOKIE, '{"user":"alice","role":"auditor"}', domain="ca.test")
    assert get(client, "/ui").status_code == 302
    real = ui.signed_in()
    value = real.get_cookie(COOKIE, domain="ca.test").value
    client.set_cookie(
        COOKIE, value[:-2] + ("A" if value[-1] != "A" else "B") + value[-1], domain="ca.test"
    )
    assert get(client, "/ui").status_code == 302


def test_roles_are_checked_by_the_decorator(ui):
    # Both roles read every page; a view limited to operators refuses auditors with 403.
    def operators_only(user):  # type: ignore[no-untyped-def]
        return f"hello {user.name}"

    ui.app.add_url_rule(
        "/ui/test-operators-only",
        "ui_test_operators_only",
        signed_in(lambda: ui.auth, "operator")(operators_only),
    )
    alice, olga = ui.signed_in("alice"), ui.signed_in("olga")
    for path in ("/ui", "/ui/audit", "/ui/certificates"):
        assert get(alice, path).status_code == 200 and get(olga, path).status_code == 200
    assert get(alice, "/ui/test-operators-only").status_code == 403
    assert get(olga, "/ui/test-operators-only").get_data(as_text=True) == "hello olga"
    # The role on the session must still be the stored one.
    with ui.auth.db.write() as conn:
        conn.execute(update(t.UiUser).where(t.UiUser.name == "olga").values(role="auditor"))
    assert get(olga, "/ui").status_code == 302


# CSRF ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "wrong-token"])
def test_posts_without_the_session_csrf_token_are_400_and_change_nothing(ui, token):
    client = ui.signed_in()
    before = ui.env.auth.db.count(t.AuditEvent)
    form = {} if token is None else {"csrf_token": token}
    for path, data in (
        ("/ui/logout", {}),
        ("/ui/audit/verify", {}),
        ("/ui/login", {"name": "alice", "password": PASSWORDS["alice"]}),
    ):
        resp = client.post(path, data={**data, **form}, base_url=BASE)
        assert resp.status_code == 400, path
        assert "CSRF" in resp.get_data(as_text=True)
    assert ui.env.auth.db.count(t.AuditEvent) == before
    assert ui.env.auth.db.count(t.UiLoginFailure) == 0
    assert get(client, "/ui").status_code == 200  # still signed in: the logout did not happen


def test_a_csrf_token_of_another_session_is_refused(ui):
    mallory, alice = ui.client(), ui.signed_in()
    stolen = csrf_of(mallory)
    resp = alice.post("/ui/logout", data={"csrf_token": stolen}, base_url=BASE)
    assert resp.status_code == 400
    assert get(alice, "/ui").status_code == 200


# Rate limit ----------------------------------------------------------------------------------------


def test_failed_sign_ins_are_limited_per_name_then_refused_without_a_password_check(ca_env):
    add_user(ca_env.auth, "alice", "auditor", PASSWORDS["alice"], actor="test")
    ui = build(ca_env, max_failed_logins=3)
    for i in range(3):
        client = ui.client(f"127.0.0.{10 + i}")  # three addresses: the name limit trips
        assert login(client, "alice", f"wrong-password-{i}x").status_code == 401
    audited = ca_env.auth.db.count(t.AuditEvent)
    resp = login(ui.client("127.0.0.99"), "alice", PASSWORDS["alice"])  # even the right one
    assert resp.status_code == 429
    assert 0 < int(resp.headers["Retry-After"]) <= FAILURE_WINDOW.total_seconds() + 1
    assert "Too many failed sign-ins" in resp.get_data(as_text=True)
    assert ca_env.auth.db.count(t.AuditEvent) == audited  # refused attempts are not audited
    assert ca_env.auth.db.count(t.UiLoginFailure) == 3  # nor counted
    # Another name from a fresh address is not affected.
    add_user(ca_env.auth, "bob", "auditor", "bob-long-passphrase-3", actor="test")
    assert login(ui.client("127.0.0.98"), "bob", "bob-long-passphrase-3").status_code == 302


def test_failed_sign_ins_are_limited_per_address(ca_env):
    add_user(ca_env.auth, "alice", "auditor", PASSWORDS["alice"], actor="test")
    ui = build(ca_env, max_failed_logins=3)
    client = ui.client("127.0.0.7")
    for name in ("root", "admin", "ops"):
        assert login(client, name, "guess-guess-guess").status_code == 401
    assert login(client, "alice", PASSWORDS["alice"]).status_code == 429
    assert login(ui.client("127.0.0.8"), "alice", PASSWORDS["alice"]).status_code == 302


def test_the_limit_lifts_when_the_failures_age_out_and_a_success_is_not_a_failure(ca_env):
    add_user(ca_env.auth, "alice", "auditor", PASSWORDS["alice"], actor="test")
    auth = dataclasses.replace(
        ca_env.auth, config=ca_env.config.model_copy(update={"ui": UiConfig(max_failed_logins=2)})
    )
    now = datetime.now(UTC)
    assert sign_in(auth, "alice", PASSWORDS["alice"], "127.0.0.1", now).outcome == "ok"
    assert ca_env.auth.db.count(t.UiLoginFailure) == 0
    for _ in range(2):
        assert sign_in(auth, "alice", "bad-bad-bad-bad", "127.0.0.1", now).outcome == "failed"
    limited = sign_in(auth, "alice", PASSWORDS["alice"], "127.0.0.1", now + timedelta(minutes=5))
    assert limited.outcome == "limited" and 590 <= limited.retry_after <= 601
    later = now + FAILURE_WINDOW + timedelta(seconds=1)
    assert sign_in(auth, "alice", PASSWORDS["alice"], "127.0.0.1", later).outcome == "ok"
    assert ca_env.auth.db.count(t.UiLoginFailure) == 0  # aged-out rows were purged


# Switches and headers ------------------------------------------------------------------------------


def test_every_ui_path_is_404_when_the_ui_is_disabled(ca_env):
    add_user(ca_env.auth, "alice", "auditor", PASSWORDS["alice"], actor="test")
    ui = build(ca_env, enabled=False)
    client = ui.client()
    for path in ("/ui", "/ui/", "/ui/login", "/ui/audit", "/ui/static/ui.css", "/ui/nope"):
        assert get(client, path).status_code == 404, path
    resp = client.post("/ui/login", data={"name": "alice", "password": "x"}, base_url=BASE)
    assert resp.status_code == 404
    assert COOKIE not in "".join(resp.headers.getlist("Set-Cookie"))
    assert get(client, "/healthz").status_code == 200


def test_the_plain_http_listener_refuses_the_ui(ui):
    plain = create_app(ui.auth.config, lambda _cfg: ui.auth, surface="plain").test_client()
    for path in ("/ui", "/ui/login", "/ui/static/ui.css"):
        resp = plain.get(path)
        assert resp.status_code == 403 and resp.mimetype == "application/problem+json", path


def test_ui_responses_carry_a_strict_csp_and_are_never_cached(ui):
    client = ui.signed_in()
    for resp in (
        get(ui.client(), "/ui/login"),
        get(client, "/ui"),
        get(client, "/ui/audit"),
        get(client, "/ui/certificates/00ff"),  # an error page
        get(client, "/ui/no-such-page"),
    ):
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "script-src" not in csp and "unsafe-inline" not in csp
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.mimetype == "text/html"
    assert get(client, "/ui/no-such-page").status_code == 404
    assert "api" not in get(client, "/api/v1/profiles").headers.get("Set-Cookie", "")


def test_api_requests_never_get_a_session_cookie(ui):
    client = ui.signed_in()
    for path in ("/healthz", "/api/v1/profiles", "/ca/issuing.pem"):
        assert not client.get(path, base_url=BASE).headers.getlist("Set-Cookie"), path


# Pages ---------------------------------------------------------------------------------------------


def test_hostile_event_content_is_shown_as_text(ui):
    hostile = '<script>alert("x")</script>'
    ui.auth.audit(
        '"><img src=x onerror=alert(1)>',
        "test.hostile",
        hostile,
        {"note": "</pre><script>alert(2)</script>", "<b>key</b>": 1},
    )
    client = ui.signed_in()
    body = get(client, "/ui/audit?action=test.hostile").get_data(as_text=True)
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in body
    assert "<script" not in body and "<img src=x" not in body and "<b>key" not in body
    filtered = get(client, "/ui/audit", query_string={"subject": hostile}).get_data(as_text=True)
    assert "event-" in filtered and "<script" not in filtered


def _append(auth: Authority, when: datetime, actor: str, action: str, subject: str) -> None:
    with auth.db.write() as conn:
        auth.db.append_audit(conn, when, actor, action, subject, {"n": subject})


def test_the_audit_browser_filters_by_time_actor_action_and_subject(ui):
    base = datetime(2031, 3, 1, 12, 0, tzinfo=UTC)
    for i in range(6):
        _append(
            ui.auth, base + timedelta(hours=i), f"actor-{i % 2}", f"test.kind{i % 3}", f"sub-{i}"
        )
    client = ui.signed_in()

    def subjects(**query: str) -> list[str]:
        resp = get(client, "/ui/audit", query_string=query)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return re.findall(r'<td class="subject">(sub-\d)</td>', resp.get_data(as_text=True))

    assert subjects(action="test.*") == [f"sub-{i}" for i in range(5, -1, -1)]
    assert subjects(actor="actor-1", action="test.*") == ["sub-5", "sub-3", "sub-1"]
    assert subjects(action="test.kind0") == ["sub-3", "sub-0"]
    assert subjects(subject="sub-4") == ["sub-4"]
    assert subjects(**{"from": "2031-03-01T14:00", "to": "2031-03-01T16:00"}) == ["sub-3", "sub-2"]
    assert subjects(**{"from": "2031-03-01T15:00:00Z", "action": "test.*"}) == [
        "sub-5",
        "sub-4",
        "sub-3",
    ]
    assert subjects(**{"to": "2031-03-01"}) == [f"sub-{i}" for i in range(5, -1, -1)]  # whole day
    for edge in ("yesterday", "0001-01-01T00:00:00+01:00", "9999-12-31"):
        bad = get(client, "/ui/audit", query_string={"from": edge, "to": "9999-12-31"})
        assert bad.status_code == 400 and "must be a date" in bad.get_data(as_text=True)


def test_the_audit_browser_pages_by_seq_without_gaps_or_repeats(ui):
    with ui.auth.db.write() as conn:
        for i in range(120):
            ui.auth.db.append_audit(conn, ui.auth.now(), "pager", "test.page", f"p{i}", {})
    client = ui.signed_in()
    seen: list[int] = []
    path = "/ui/audit?action=test.page"
    pages = 0
    while path:
        body = get(client, path).get_data(as_text=True)
        seqs = [int(s) for s in re.findall(r'<td class="seq">(\d+)</td>', body)]
        assert len(seqs) <= 50 and seqs == sorted(seqs, reverse=True)
        seen += seqs
        pages += 1
        older = re.search(r'id="older" href="([^"]+)"', body)
        path = older.group(1).replace("&amp;", "&") if older else ""
    assert pages == 3 and len(seen) == 120 and len(set(seen)) == 120
    assert seen == sorted(seen, reverse=True)
    # Back to newer from the last page: the page before it, exactly.
    body = get(client, f"/ui/audit?action=test.page&after={seen[100]}").get_data(as_text=True)
    assert [int(s) for s in re.findall(r'<td class="seq">(\d+)</td>', body)] == seen[50:100]


def test_each_event_shows_its_hash_and_previous_hash(ui):
    client = ui.signed_in()
    last = list(ui.auth.db.audit_entries())[-1]
    body = get(client, "/ui/audit").get_data(as_text=True)
    assert last.hash.hex() in body and last.prev_hash.hex() in body


def test_verify_shows_an_intact_chain_and_locates_an_edited_event(ui):
    client = ui.signed_in()
    resp = post(client, "/ui/audit/verify")
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "Intact" in body
    count = ui.auth.db.count(t.AuditEvent)
    assert re.search(rf'id="verify-events">{count}<', body)
    with ui.auth.db.write() as conn:
        conn.execute(update(t.AuditEvent).where(t.AuditEvent.seq == 3).values(actor="someone-else"))
    body = post(client, "/ui/audit/verify").get_data(as_text=True)
    assert "Broken" in body and 'id="verify-first-bad"' in body and ">seq 3<" in body
    dashboard = get(client, "/ui").get_data(as_text=True)
    assert 'id="chain-status"' in dashboard


def test_export_downloads_a_bundle_of_the_chain(ui):
    client = ui.signed_in()
    page = get(client, "/ui/audit").get_data(as_text=True)
    assert 'id="export-link" href="/ui/audit/export"' in page
    resp = get(client, "/ui/audit/export")
    assert resp.status_code == 200 and resp.mimetype == "application/zip"
    assert "attachment" in resp.headers["Content-Disposition"]
    bundle = zipfile.ZipFile(io.BytesIO(resp.data))
    manifest = json.loads(bundle.read("manifest.json"))
    lines = bundle.read("events.jsonl").splitlines()
    assert len(lines) == manifest["counts"]["events"] >= 1
    assert json.loads(lines[-1])["hash"] == manifest["last_hash"]
    exported = [e for e in ui.auth.db.audit_entries() if e.action == "audit.exported"]
    assert [(e.actor, e.details["via"]) for e in exported] == [("ui:alice", "ui")]
    assert exported[0].seq > manifest["range"]["last_seq"]  # audited before the bundle was cut
    empty = get(client, "/ui/audit/export?from=2001-01-01&to=2001-01-02")
    assert empty.status_code == 400 and "no audit events" in empty.get_data(as_text=True)


def test_dashboard_counts_certificates_and_reports_the_chain(ui):
    before = ui.auth.db.count(t.Certificate)  # the issuing CA's certificate is one
    serials = [issue_for(ui.auth, f"d{i}.example.test") for i in range(3)]
    revoke(ui.auth, serials[0], "keyCompromise", actor="test")
    body = get(ui.signed_in(), "/ui").get_data(as_text=True)
    assert f'id="count-total">{before + 3}<' in body and 'id="count-revoked">1<' in body
    assert f'id="count-valid">{before + 2}<' in body
    # Server certificates last longer than 30 days: none expiring yet.
    assert 'id="expiring-30">0<' in body
    assert "quick check OK" in body
    assert "No checkpoint has been signed yet" in body or "Last checkpoint" in body


def test_dashboard_reports_the_last_checkpoint_age_and_a_mismatch(ui):
    head = list(ui.auth.db.audit_entries())[-1]
    signed = datetime.now(UTC) - timedelta(minutes=42)
    with ui.auth.db.write() as conn:
        conn.execute(
            insert(t.AuditCheckpoint).values(
                seq=head.seq,
                hash=head.hash.hex(),
                time=signed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                key_serial="01",
                algorithm="ecdsa-with-SHA256",
                signature="AA==",
            )
        )
    client = ui.signed_in()
    body = get(client, "/ui").get_data(as_text=True)
    assert f"seq {head.seq}" in body and "42 min" in body and "quick check OK" in body
    with ui.auth.db.write() as conn:
        conn.execute(update(t.AuditCheckpoint).values(hash="0" * 64))
    body = get(client, "/ui").get_data(as_text=True)
    assert "no longer has the hash its signed checkpoint states" in body


def test_the_inventory_filters_by_name_owner_status_and_expiry(ui):
    a = issue_for(ui.auth, "alpha.inv.test", owner="team-a")
    b = issue_for(ui.auth, "beta.inv.test", owner="team-b")
    c = issue_for(ui.auth, "gamma.other.test", owner="team-a")
    revoke(ui.auth, b, "superseded", actor="test")
    client = ui.signed_in()

    def serials(**query: str) -> set[str]:
        resp = get(client, "/ui/certificates", query_string=query)
        assert resp.status_code == 200
        return set(re.findall(r"/ui/certificates/([0-9a-f]+)\"", resp.get_data(as_text=True)))

    assert serials(q="inv.test") == {a, b}
    assert serials(q="INV.TEST") == {a, b}
    assert serials(owner="team-a") == {a, c}
    assert serials(status="revoked") == {b}
    assert serials(status="issued", owner="team-a", q="alpha") == {a}
    assert serials(expiring="7") == set()
    # The default server profile lasts 90 days or less: all three expire within 90.
    assert serials(expiring="90") >= {a, c}
    assert get(client, "/ui/certificates?status=lost").status_code == 400
    assert get(client, "/ui/certificates?expiring=5").status_code == 400


def test_the_inventory_pages_by_id(ui):
    made = {issue_for(ui.auth, f"page{i}.pg.test") for i in range(53)}
    client = ui.signed_in()
    first = get(client, "/ui/certificates?q=pg.test").get_data(as_text=True)
    one = set(re.findall(r"/ui/certificates/([0-9a-f]+)\"", first))
    nxt = re.search(r'id="next-page" href="([^"]+)"', first)
    assert len(one) == 50 and nxt
    second = get(client, nxt.group(1).replace("&amp;", "&")).get_data(as_text=True)
    two = set(re.findall(r"/ui/certificates/([0-9a-f]+)\"", second))
    assert one | two == made and not one & two and 'id="next-page"' not in second


def test_a_certificate_page_shows_details_pem_and_its_whole_trail(ui):
    serial = issue_for(ui.auth, "trail.example.test", owner="payments")
    other = issue_for(ui.auth, "unrelated.example.test")
    revoke(ui.auth, serial, "keyCompromise", actor="cli:officer")
    client = ui.signed_in()
    body = get(client, f"/ui/certificates/{serial}").get_data(as_text=True)
    assert "trail.example.test" in body and "payments" in body and 'id="cert-status"' in body
    trail = body[body.index('id="trail"') :]
    actions = re.findall(r'<td class="action">([^<]+)</td>', trail)
    assert actions == ["certificate.requested", "certificate.issued", "certificate.revoked"]
    assert other not in trail
    pem = get(client, f"/ui/certificates/{serial}/certificate.pem")
    assert pem.status_code == 200 and pem.mimetype == "application/x-pem-file"
    assert f'filename="{serial}.pem"' in pem.headers["Content-Disposition"]
    assert format(x509.load_pem_x509_certificate(pem.data).serial_number, "x") == serial.lstrip("0")
    assert get(client, "/ui/certificates/not-hex").status_code == 404
    assert get(client, "/ui/certificates/abcdef").status_code == 404


def test_a_trail_follows_the_approval_request_of_the_certificate(ui):
    from ca.clients import create_client, requester_of
    from ca.enrollment import approve, client_lookup, submit

    requester, _ = create_client(ui.auth, "svc", ["enroll"], [], [], actor="test")
    approver, _ = create_client(ui.auth, "boss", ["approve"], [], [], actor="test")
    profiles = ui.auth.config.profiles
    config = ui.auth.config.model_copy(
        update={
            "profiles": {
                **profiles,
                "server": profiles["server"].model_copy(update={"requires_approval": True}),
            }
        }
    )
    auth = dataclasses.replace(ui.auth, config=config)
    auth.__dict__.pop("profiles", None)
    req = IssuanceRequest(
        make_csr(["approved.example.test"]), "server", "svc", client=requester_of(requester)
    )
    pending = submit(auth, req)
    issued = approve(auth, pending.id, requester_of(approver), client_lookup(auth))
    body = get(ui.signed_in(), f"/ui/certificates/{issued.serial}").get_data(as_text=True)
    actions = re.findall(r'<td class="action">([^<]+)</td>', body[body.index('id="trail"') :])
    assert actions == [
        "request.pending",
        "request.approved",
        "certificate.requested",
        "certificate.issued",
    ]


# The CLI -------------------------------------------------------------------------------------------


def _cli(env: CaEnv, *args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
    from hsmca.cli import main

    return CliRunner().invoke(main, ["--data-dir", str(env.data_dir), *args], input=stdin)


def test_user_commands_add_list_disable_and_change_passwords_with_audit(sqlite_ca_env, tmp_path):
    env = sqlite_ca_env
    res = _cli(env, "user", "add", "carol", "--role", "auditor", stdin="carol-passphrase-123\n")
    assert res.exit_code == 0, res.output
    pw_file = tmp_path / "pw"
    pw_file.write_text("dave-passphrase-456\n")
    pw_file.chmod(0o644)
    res = _cli(env, "user", "add", "dave", "--role", "operator", "--password-file", str(pw_file))
    assert res.exit_code == 1 and "must have mode 0600" in res.output
    pw_file.chmod(0o600)
    res = _cli(env, "user", "add", "dave", "--role", "operator", "--password-file", str(pw_file))
    assert res.exit_code == 0, res.output
    assert (
        _cli(env, "user", "add", "dave", "--role", "auditor", stdin="x" * 20 + "\n").exit_code == 1
    )
    short = _cli(env, "user", "add", "erin", "--role", "auditor", stdin="short\n")
    assert short.exit_code == 1 and "at least 12 characters" in short.output
    bad_role = _cli(env, "user", "add", "erin", "--role", "admin", stdin="erin-passphrase-789\n")
    assert bad_role.exit_code == 2
    listing = _cli(env, "user", "list").output
    assert re.search(r"carol\s+auditor\s+active", listing)
    assert re.search(r"dave\s+operator\s+active", listing)
    assert _cli(env, "user", "disable", "carol").exit_code == 0
    assert _cli(env, "user", "disable", "carol").exit_code == 1
    assert re.search(r"carol\s+auditor\s+disabled", _cli(env, "user", "list").output)
    assert _cli(env, "user", "passwd", "dave", stdin="dave-new-passphrase-0\n").exit_code == 0
    assert _cli(env, "user", "passwd", "nobody", stdin="whatever-passphrase\n").exit_code == 1
    stored = get_user(env.auth.db, "dave")
    assert stored is not None and stored.password_hash.startswith("scrypt$n=32768,r=8,p=1$")
    assert sign_in(env.auth, "dave", "dave-new-passphrase-0", "127.0.0.1").outcome == "ok"
    actions = [(e[1], e[2], e[0].startswith("cli:")) for e in events(env.auth, "ui.user.")]
    assert actions == [
        ("ui.user.added", "ui-user:carol", True),
        ("ui.user.added", "ui-user:dave", True),
        ("ui.user.disabled", "ui-user:carol", True),
        ("ui.user.password_changed", "ui-user:dave", True),
    ]
    chain = json.dumps([dict(e.details) for e in env.auth.db.audit_entries()])
    assert "passphrase" not in chain


def test_user_add_reads_no_password_from_argv(sqlite_ca_env):
    res = _cli(sqlite_ca_env, "user", "add", "frank", "--role", "auditor", "--password", "x")
    assert res.exit_code == 2 and "No such option" in res.output
    res = _cli(sqlite_ca_env, "user", "add", "frank", "--role", "auditor", stdin="")
    assert res.exit_code == 1 and "no password on standard input" in res.output


def test_sessions_are_valid_in_every_app_over_one_database(ui):
    # Two apps (two workers, or two nodes) over one database accept each other's sessions.
    client = ui.signed_in()
    other = create_app(ui.auth.config, lambda _cfg: ui.auth).test_client()
    other.set_cookie(COOKIE, client.get_cookie(COOKIE, domain="ca.test").value, domain="ca.test")
    assert other.get("/ui", base_url=BASE).status_code == 200
    with ui.auth.db.read() as conn:
        rows = conn.execute(text("SELECT name FROM app_secrets")).all()
    assert [r[0] for r in rows] == ["ui-session-key"]
