"""Mass revocation: ``hsmca cert list`` selects, ``hsmca revoke --serials-file`` revokes.

Each certificate is revoked in its own audited transaction and the run as a whole is recorded
(``certificate.bulk_revocation``); a rerun skips what is revoked; a bad list revokes nothing.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from helpers import make_csr, run_hsmca

from ca.errors import BadRequest
from ca.issuance import IssuanceRequest, issue
from ca.mass_revocation import parse_serial_list, revoke_many
from ca.store import crls

pytestmark = [pytest.mark.hsm, pytest.mark.db]

HSMCA = str(Path(sys.executable).parent / "hsmca")


def _cli(env, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_hsmca(env.data_dir, *args, stdin=stdin)


def _revoke_list(env, stdin: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """``hsmca revoke --serials-file -`` for keyCompromise, the list on standard input."""
    return _cli(
        env, "revoke", "--serials-file", "-", "--reason", "keyCompromise", *extra, stdin=stdin
    )


def _issue(auth, name: str, requester: str = "test") -> str:
    return issue(auth, IssuanceRequest(make_csr([name]), "server", requester)).serial


def _status(auth, serial: str) -> str:
    return auth.db.get_certificate(serial).status


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cert_list_selects_a_requesters_certificates_and_revoke_takes_them_from_stdin(ca_env):
    auth = ca_env.auth
    leaked = [_issue(auth, f"app{i}.corp.test", requester="deploy-bot") for i in range(4)]
    kept = [_issue(auth, f"other{i}.corp.test") for i in range(2)]

    listed = _cli(ca_env, "cert", "list", "--requester", "deploy-bot", "--serials")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == leaked
    as_json = _cli(ca_env, "cert", "list", "--requester", "deploy-bot", "--name", "app2")
    assert [json.loads(line)["serial"] for line in as_json.stdout.splitlines()] == [leaked[2]]

    done = _revoke_list(ca_env, listed.stdout, "--comment", "INC-42")
    assert done.returncode == 0, done.stderr
    assert "revoked 4, already revoked 0, unknown 0, refused 0" in done.stderr
    assert "hsmca crl generate --ca issuing" in done.stderr
    assert [_status(auth, s) for s in leaked] == ["revoked"] * 4
    assert [_status(auth, s) for s in kept] == ["issued"] * 2

    events = auth.db.audit_events()
    revoked_events = [e for e in events if e.action == "certificate.revoked"]
    assert sorted(e.subject for e in revoked_events) == sorted(leaked)
    assert all(e.details["comment"] == "INC-42" for e in revoked_events)
    (summary,) = [e for e in events if e.action == "certificate.bulk_revocation"]
    expected = hashlib.sha256("".join(s + "\n" for s in leaked).encode()).hexdigest()
    assert summary.details["serials_sha256"] == expected and summary.details["revoked"] == 4
    assert summary.details["issuers"] == ["issuing"]

    published = _cli(ca_env, "crl", "generate", "--ca", "issuing")
    assert published.returncode == 0 and "4 entries" in published.stdout, published.stderr
    meta = crls.latest_crl(auth.db, auth.db.get_ca("issuing").id, 0)
    assert meta is not None
    crl = x509.load_der_x509_crl(crls.crl_der(auth.db, meta.id))
    assert {int(s, 16) for s in leaked} == {r.serial_number for r in crl}


def test_a_rerun_skips_what_is_revoked_and_reports_unknown_serials(ca_env):
    auth = ca_env.auth
    serials = [_issue(auth, f"batch{i}.corp.test") for i in range(3)]
    first = revoke_many(auth, parse_serial_list(serials[:2]), "superseded", "test")
    assert first.revoked == tuple(serials[:2]) and first.complete

    again = parse_serial_list([*serials, "# trailing comment", "", "0b:ad:c0:ff:ee"])
    second = revoke_many(auth, again, "superseded", "test")
    assert second.revoked == (serials[2],)
    assert second.already_revoked == tuple(serials[:2])
    assert second.unknown == ("badc0ffee",) and not second.complete
    assert auth.db.verify_audit_chain() == len(auth.db.audit_events())


def test_the_certificate_of_a_ca_is_refused_and_the_rest_revoked(ca_env):
    auth = ca_env.auth
    leaf = _issue(auth, "leaf.corp.test")
    issuing = auth.db.get_ca("issuing").serial
    outcome = revoke_many(auth, parse_serial_list([issuing, leaf]), "keyCompromise", "test")
    assert outcome.revoked == (leaf,)
    ((serial, why),) = outcome.refused
    assert serial == issuing and "hsmca ca revoke issuing" in why
    assert auth.db.get_ca("issuing").status == "active"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_list_with_a_bad_line_or_a_bad_reason_revokes_nothing(ca_env):
    auth = ca_env.auth
    serial = _issue(auth, "careful.corp.test")
    bad = _revoke_list(ca_env, f"{serial}\nnot-a-serial\n")
    assert bad.returncode == 1 and "line 2: not a serial: 'not-a-serial'" in bad.stderr
    assert _status(auth, serial) == "issued"
    dry = _revoke_list(ca_env, serial + "\n", "--dry-run")
    assert dry.returncode == 0 and "1 serial(s)" in dry.stdout and _status(auth, serial) == "issued"
    both = _cli(ca_env, "revoke", serial, "--serials-file", "-", "--reason", "superseded", stdin="")
    assert both.returncode == 2 and "either SERIAL or --serials-file" in both.stderr
    with pytest.raises(BadRequest):
        revoke_many(auth, parse_serial_list([serial]), "certificateHold", "test")
    assert _status(auth, serial) == "issued"
    assert not [e for e in auth.db.audit_events() if e.action.startswith("certificate.bulk")]
