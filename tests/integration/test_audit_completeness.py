"""Audit completeness: every state change of a representative workflow writes its event, in the
order the changes happen, and every action the code can write is documented.

The workflow runs in-process on SQLite and PostgreSQL: a CA is created, clients are added, a
certificate is issued, one request is approved and another rejected (dual control), one is
denied by policy, a certificate is revoked, a CRL published, an OCSP responder created and its
responses pre-signed, a client's token rotated and the client disabled, and an ACME account
takes an order to a certificate. ``hsmca serve`` is started for real to show that it records the
configuration once per start (not once per worker).
"""

from __future__ import annotations

import ast
import re
import sqlite3
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from helpers import CaEnv, make_ca_env, make_csr, write_config
from serve import run, start_server, wait_until

from ca.acme import accounts, orders
from ca.acme.jws import jwk_of, thumbprint
from ca.audit import verify_chain
from ca.clients import create_client, disable_client, requester_of, rotate_token
from ca.config import load_config
from ca.enrollment import approve, client_lookup, reject, submit
from ca.errors import PolicyDenied
from ca.hierarchy import create_intermediate
from ca.issuance import IssuanceRequest, issue
from ca.revocation import revoke
from ca.store import acme as acme_store
from crl.publisher import publish
from hsmca.server import config_sha256, record_config_loaded
from ocsp import presign
from ocsp.responders import create_responder
from softhsm import SoftHsmToken

pytestmark = [pytest.mark.db, pytest.mark.hsm]

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "audit-events.md"
SOURCES = ("ca", "ocsp", "crl", "hsmca", "web")

APPROVAL_PROFILE = """
[profiles.approved-server]
extended_key_usage = ["serverAuth"]
dns_names = ["."]
requires_approval = true
"""

#: Checkpoints are written on their own schedule; the workflow's sequence leaves them out.
_SCHEDULED = ("audit.checkpoint",)


@pytest.fixture
def env(
    softhsm_token: tuple[SoftHsmToken, str], database_url: str, tmp_path: Path
) -> Iterator[CaEnv]:
    """An initialised CA whose configuration adds a profile that needs approval."""
    token, pin = softhsm_token
    base = make_ca_env(tmp_path, token, pin, database_url)
    write_config(base.data_dir, token, database_url, extra=APPROVAL_PROFILE)
    config = load_config(base.data_dir, environ={})
    auth = replace(base.auth, config=config)
    yield CaEnv(base.data_dir, config, auth, base.root_pem)
    auth.db.dispose()


def _head(env: CaEnv) -> int:
    return max((e.seq for e in env.auth.db.audit_entries()), default=0)


def _actions_after(env: CaEnv, seq: int) -> list[str]:
    return [
        e.action
        for e in env.auth.db.audit_entries(after_seq=seq)
        if not e.action.startswith(_SCHEDULED)
    ]


def test_every_state_change_of_a_workflow_writes_its_event_in_order(env: CaEnv) -> None:
    auth = env.auth
    start = _head(env)
    shards = auth.urls_for("issuing").crl_shards

    create_intermediate(auth, "extra", common_name="hsmca tests Extra CA", actor="test")
    digest = record_config_loaded(auth, env.config, env.data_dir / "hsmca.toml", "test")

    alice, _ = create_client(auth, "alice", ["enroll"], [], [], "test")
    bob, _ = create_client(auth, "bob", ["approve"], [], [], "test")
    as_alice = requester_of(alice)

    issued = issue(
        auth, IssuanceRequest(make_csr(["www.corp.test"]), "server", "alice", client=as_alice)
    )

    pending = submit(
        auth,
        IssuanceRequest(make_csr(["dual.corp.test"]), "approved-server", "alice", client=as_alice),
    )
    approved = approve(auth, pending.id, requester_of(bob), client_lookup(auth))
    unwanted = submit(
        auth,
        IssuanceRequest(make_csr(["no.corp.test"]), "approved-server", "alice", client=as_alice),
    )
    reject(auth, unwanted.id, requester_of(bob), "not needed")
    with pytest.raises(PolicyDenied):
        # An EC key on the RSA-only profile: refused, with the decision on record.
        issue(auth, IssuanceRequest(make_csr(["ec.corp.test"]), "rsa-only", "alice"))

    revoke(auth, issued.serial, "keyCompromise", "test")
    publish(auth, "issuing")
    create_responder(auth, "issuing", actor="test")
    presign.run_once(auth, auth.now())

    rotate_token(auth, "alice", "test")
    disable_client(auth, "alice", "test")

    key = ec.generate_private_key(ec.SECP256R1())
    jwk = jwk_of(key.public_key())
    account = accounts.find_or_create(auth.db, auth.now(), jwk, thumbprint(jwk), [], True).account
    order = orders.create_order(
        auth, account, [{"type": "dns", "value": "acme.corp.test"}], "server"
    )
    authz = acme_store.get_authz(auth.db, order.authz_ids[0])
    assert authz is not None
    challenge = authz.challenges[0]
    assert orders.start_challenge(auth, authz, challenge).validate
    assert orders.finish_challenge(auth, account.id, authz, challenge.id, None)
    ready = acme_store.get_order(auth.db, order.id)
    assert ready is not None and ready.status == "ready"
    done = orders.finalize(auth, account, ready, make_csr(["acme.corp.test"], der=True))
    assert done.status == "valid"

    assert _actions_after(env, start) == [
        "key.generated",
        "ca.requested",
        "ca.created",
        "config.loaded",
        "client.created",
        "client.created",
        "certificate.requested",
        "certificate.issued",
        "request.pending",
        "request.approved",
        "certificate.requested",
        "certificate.issued",
        "request.pending",
        "request.rejected",
        "certificate.denied",
        "certificate.revoked",
        *["crl.published"] * shards,
        "key.generated",
        "ocsp.responder_requested",
        "ocsp.responder_created",
        "ocsp.presigned",
        "client.token_rotated",
        "client.disabled",
        "acme.account.created",
        "acme.order.created",
        "acme.challenge.started",
        "acme.authorization.valid",
        "certificate.requested",
        "certificate.issued",
        "acme.order.finalized",
    ]
    events = list(auth.db.audit_entries(after_seq=start))
    assert verify_chain(auth.db.audit_entries()) == auth.db.verify_audit_chain() == events[-1].seq

    by_action = {e.action: e for e in events}  # the last of each
    assert by_action["config.loaded"].details["sha256"] == digest == config_sha256(env.config)
    denied = by_action["certificate.denied"].details
    assert denied["allowed"] is False and denied["violations"] and denied["profile_sha256"]
    assert by_action["request.pending"].details["allowed"] is True  # the decision it waits with
    approval = next(e for e in events if e.action == "request.approved")
    assert approval.actor == "bob" and approval.subject == pending.id
    assert by_action["certificate.revoked"].subject == issued.serial
    assert by_action["acme.order.finalized"].details["serial"] == done.certificate_serial
    assert [e.subject for e in events if e.action == "certificate.issued"] == [
        issued.serial,
        approved.serial,
        done.certificate_serial,
    ]
    rotated = by_action["client.token_rotated"].details
    assert rotated["old_token_sha256_prefix"] == alice.token_sha256[:16]
    assert rotated["token_sha256_prefix"] != rotated["old_token_sha256_prefix"]
    assert by_action["ocsp.presigned"].details["signed"] >= 2


# --- every action the code writes is documented ------------------------------------------------

_ACTION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_-]+)+$")
#: Call name → index of the positional ``action`` argument.
_ACTION_ARG = {"append_audit": 3, "audit": 1}


def _literal_actions(node: ast.expr) -> list[str]:
    """The action names an argument can take: constants, both arms of ``a if c else b``, and
    f-strings as templates with ``{}`` for each placeholder."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _literal_actions(node.body) + _literal_actions(node.orelse)
    if isinstance(node, ast.JoinedStr):
        return [
            "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)  # type: ignore[misc]
        ]
    return []  # a variable: the call site that sets it is scanned on its own


def actions_in_source() -> dict[str, set[str]]:
    """Action name → the places (file:line) that write it, found by reading the source.

    Two shapes: a call ``append_audit(conn, now, actor, ACTION, …)`` / ``audit(actor, ACTION,
    …)``, and an event tuple ``(actor, ACTION, subject, details)`` as ``append_audit_many`` and
    ``record_intent`` take them.
    """
    found: dict[str, set[str]] = {}
    for package in SOURCES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            where = path.relative_to(ROOT)
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.Call):
                    func = node.func
                    called = func.attr if isinstance(func, ast.Attribute) else ""
                    called = called or (func.id if isinstance(func, ast.Name) else "")
                    index = _ACTION_ARG.get(called)
                    if index is not None and len(node.args) > index:
                        names = _literal_actions(node.args[index])
                elif isinstance(node, ast.Tuple) and len(node.elts) == 4:
                    second = node.elts[1]
                    if isinstance(second, ast.Constant) and isinstance(second.value, str):
                        names = [second.value] if _ACTION.match(second.value) else []
                for name in names:
                    found.setdefault(name, set()).add(f"{where}:{node.lineno}")
    return found


def documented_actions() -> set[str]:
    """The backquoted names in the first column of the docs' tables headed ``| action |``."""
    names = set()
    in_actions = False
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            in_actions = False
        elif re.match(r"^\|\s*action\s*\|", line):
            in_actions = True
        elif in_actions and (first := re.match(r"^\|\s*`([^`]+)`", line)):
            names.add(first.group(1))
    return names


def test_the_source_scan_finds_the_actions_written_in_every_shape() -> None:
    found = actions_in_source()
    assert "ca/issuance.py" in str(found["certificate.requested"])  # a tuple for the batch
    assert "ca/clients.py" in str(found["client.created"])  # append_audit(...)
    assert "ca/issuance.py" in str(found["certificate.denied"])  # auth.audit(...)
    assert "request.returned_to_pending" in found  # one arm of a conditional
    assert "request.{}_denied" in found  # an f-string template
    assert "config.loaded" in found and "ocsp.presigned" in found


def test_every_action_written_by_the_code_is_documented() -> None:
    documented = documented_actions()
    missing = []
    for name, places in sorted(actions_in_source().items()):
        pattern = re.compile("^" + re.escape(name).replace(r"\{\}", "[a-z0-9_]+") + "$")
        if not any(pattern.match(d) for d in documented):
            missing.append(f"{name} (written at {', '.join(sorted(places))})")
    assert not missing, "add these actions to docs/audit-events.md:\n" + "\n".join(missing)


def test_the_documentation_lists_no_action_the_code_never_writes() -> None:
    written = actions_in_source()
    patterns = [
        re.compile("^" + re.escape(n).replace(r"\{\}", "[a-z0-9_]+") + "$") for n in written
    ]
    stale = [d for d in documented_actions() if not any(p.match(d) for p in patterns)]
    assert not stale, f"docs/audit-events.md lists actions nothing writes: {sorted(stale)}"


# --- hsmca serve records its configuration once per start ---------------------------------------


def test_serve_records_the_loaded_configuration_once_per_start_not_per_worker(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    proc = run(data, "init")
    assert proc.returncode == 0, proc.stderr

    def loaded() -> list[tuple[str, str, str]]:
        with sqlite3.connect(f"file:{data / 'hsmca.db'}?mode=ro", uri=True) as db:
            return db.execute(
                "SELECT actor, subject, details FROM audit_events"
                " WHERE action = 'config.loaded' ORDER BY seq"
            ).fetchall()

    for starts in (1, 2):
        _serve_until_workers_answer(data, tmp_path)
        assert len(loaded()) == starts
    actor, subject, details = loaded()[-1]
    expected = config_sha256(load_config(data, environ={}))
    assert actor.startswith("cli:")
    assert subject == str((data / "hsmca.toml").resolve())
    assert f'"sha256":"{expected}"' in details
    assert run(data, "audit", "verify").returncode == 0


def _serve_until_workers_answer(data: Path, tmp_path: Path) -> None:
    """Start ``hsmca serve`` (plain HTTP, 2 workers), let its workers answer, stop it."""
    server = start_server(data, tmp_path, https=False)
    try:
        wait_until(lambda: len(server.processes()) >= 3, 30, "the workers and the scheduler")
        for _ in range(6):  # the workers have built the app by the time they answer
            with urllib.request.urlopen(f"{server.http}/healthz", timeout=10) as resp:
                assert resp.status == 200
    finally:
        assert server.stop() == 0
