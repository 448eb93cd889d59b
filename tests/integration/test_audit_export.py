"""Audit export bundles and their offline verification: the CLI, the REST endpoint, the bundle's
contents, range exports, every kind of tampering (located, exit 3), and the reference verifier
of docs/audit-verification.md run as an auditor would (Python standard library + openssl)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import CaEnv, make_ca_env
from sqlalchemy import text

from ca.audit import canonical_json, chain_hash, event_dict
from ca.audit_bundle_verify import BundleReport, decoded_row, fast_row, verify_bundle
from ca.audit_export import export_bundle, parse_bound, resolve_range
from ca.audit_key import DOCUMENT_SIGNING, create_audit_key
from ca.authority import Authority
from ca.checkpoint import checkpoint_message
from ca.checkpoints import sign_checkpoint, stored_checkpoints
from ca.errors import BadRequest
from softhsm import SoftHsmToken

pytestmark = [pytest.mark.hsm, pytest.mark.db]

HSMCA = str(Path(sys.executable).parent / "hsmca")
DOC = Path(__file__).resolve().parents[2] / "docs/audit-verification.md"


# --- helpers ------------------------------------------------------------------------------------


def add_events(auth: Authority, n: int, when: datetime | None = None, tag: str = "e") -> None:
    """``n`` events in one transaction (fast), optionally at a given time."""
    events = [("test", "test.event", f"{tag}{i}", {"i": i, "tag": tag}) for i in range(n)]
    with auth.db.write() as conn:
        auth.db.append_audit_many(conn, when or auth.now(), events)


def checkpoint(auth: Authority, when: datetime | None = None) -> int:
    """Sign a checkpoint of the head now; its seq (its audit.checkpoint event follows it)."""
    signed = sign_checkpoint(auth, now=when, actor="test")
    assert signed is not None
    return signed.checkpoint.seq


def head(auth: Authority) -> int:
    with auth.db.read() as conn:
        return resolve_range(conn, None, None).last_seq


def export(auth: Authority, **bounds: object) -> bytes:
    out = io.BytesIO()
    export_bundle(auth, out, **bounds)  # type: ignore[arg-type]
    return out.getvalue()


def verify(data: bytes, root: Path) -> BundleReport:
    return verify_bundle(io.BytesIO(data), x509.load_pem_x509_certificates(root.read_bytes()))


def members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {name: z.read(name) for name in z.namelist()}


def events_of(data: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in members(data)["events.jsonl"].splitlines()]


def run(data_dir: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HSMCA_", "SOFTHSM2_CONF"))}
    prefix = ["--data-dir", str(data_dir)] if data_dir is not None else []
    return subprocess.run(
        [HSMCA, *prefix, *args], env=base, capture_output=True, text=True, timeout=180, check=False
    )


def reference_verifier(tmp_path: Path) -> Path:
    """The one fenced python block of docs/audit-verification.md, saved as the auditor would."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1, "the guide must hold exactly one python block: the verifier"
    path = tmp_path / "verify_bundle.py"
    path.write_text(blocks[0])
    return path


def run_reference(script: Path, bundle: Path, root: Path) -> subprocess.CompletedProcess[str]:
    # -I -S: no site-packages, no environment: the standard library only, as promised.
    return subprocess.run(
        [sys.executable, "-I", "-S", str(script), str(bundle), str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def software_root(
    name: str = "Someone Else's Root",
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# --- the bundle ---------------------------------------------------------------------------------


def test_export_holds_events_checkpoints_chain_and_a_manifest_that_describes_them(ca_env):
    auth = ca_env.auth
    create_audit_key(auth, actor="test")
    add_events(auth, 30)
    first_cp = checkpoint(auth)
    add_events(auth, 5)
    data = export(auth)

    files = members(data)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.namelist() == ["events.jsonl", "checkpoints.jsonl", "chain.pem", "manifest.json"]
    manifest = json.loads(files["manifest.json"])
    stored = list(auth.db.audit_entries())
    assert manifest["format"] == "hsmca-audit-export/1"
    assert datetime.fromisoformat(manifest["created"]) <= auth.now()
    assert manifest["range"] == {
        "first_seq": 1,
        "last_seq": stored[-1].seq,
        "requested_from": None,
        "requested_to": None,
    }
    assert manifest["first_prev_hash"] == "00" * 32
    assert manifest["last_hash"] == stored[-1].hash.hex()
    for name in ("events.jsonl", "checkpoints.jsonl", "chain.pem"):
        assert manifest["files"][name] == {
            "sha256": hashlib.sha256(files[name]).hexdigest(),
            "bytes": len(files[name]),
        }

    lines = files["events.jsonl"].splitlines()
    assert manifest["counts"]["events"] == len(lines) == len(stored)
    for line, entry in zip(lines, stored, strict=True):
        row = json.loads(line)
        assert line == canonical_json(row)  # each line is canonical JSON
        assert row == {
            **entry.event(),
            "prev_hash": entry.prev_hash.hex(),
            "hash": entry.hash.hex(),
        }
    cps = [json.loads(line) for line in files["checkpoints.jsonl"].splitlines()]
    assert [c["seq"] for c in cps] == [c.seq for c in stored_checkpoints(auth.db)]
    assert first_cp in [c["seq"] for c in cps]
    assert cps == [c.to_json() for c in stored_checkpoints(auth.db)]

    chain = x509.load_pem_x509_certificates(files["chain.pem"])
    assert manifest["counts"]["certificates"] == len(chain) == 3
    audit_cert, issuing, root = chain
    assert (
        DOCUMENT_SIGNING
        in audit_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    assert format(audit_cert.serial_number, "x") == cps[0]["key_serial"]
    assert pem(issuing) == ca_env.issuing_pem()
    assert pem(root) == ca_env.root_pem.read_bytes()

    report = verify(data, ca_env.root_pem)
    assert report.ok, report.findings
    assert (
        report.events == len(stored)
        and report.last_checkpoint_seq == stored_checkpoints(auth.db)[-1].seq
    )
    assert [w.what for w in report.warnings if "not covered" in w.what]  # the 5 newest events


def test_range_exports_by_seq_verify_from_their_anchor(ca_env):
    auth = ca_env.auth
    create_audit_key(auth, actor="test")
    add_events(auth, 20)
    c1 = checkpoint(auth)
    add_events(auth, 20)
    c2 = checkpoint(auth)
    add_events(auth, 20)
    c3 = checkpoint(auth)

    # Mid-chain to mid-chain: anchored at the event before, and the first checkpoint after it
    # travels along (the range has an upper bound).
    data = export(auth, since=c1 - 5, until=c2 + 5)
    rows = events_of(data)
    assert [r["seq"] for r in rows] == list(range(c1 - 5, c2 + 6))
    before = next(e for e in auth.db.audit_entries(after_seq=c1 - 7) if e.seq == c1 - 6)
    assert rows[0]["prev_hash"] == before.hash.hex()
    cps = [json.loads(x)["seq"] for x in members(data)["checkpoints.jsonl"].splitlines()]
    assert cps == [c1, c2, c3]
    report = verify(data, ca_env.root_pem)
    assert report.ok, report.findings
    assert (report.first_seq, report.last_seq, report.last_checkpoint_seq) == (c1 - 5, c2 + 5, c2)

    # Starting right after a checkpoint: the range's first event is that checkpoint's own
    # audit.checkpoint event, and the checkpoint at the anchor comes along to authenticate it.
    data = export(auth, since=c2 + 1)
    assert events_of(data)[0]["action"] == "audit.checkpoint"
    assert json.loads(members(data)["checkpoints.jsonl"].splitlines()[0])["seq"] == c2
    report = verify(data, ca_env.root_pem)
    assert report.ok, report.findings
    assert report.last_checkpoint_seq == c3 and not report.warnings  # c3 + 1 is its own event


def test_range_exports_by_time_select_the_events_of_that_time(ca_env):
    auth = ca_env.auth
    t0 = auth.now().replace(microsecond=0) + timedelta(hours=1)  # after every event so far
    create_audit_key(auth, actor="test", now=t0)
    add_events(auth, 10, t0 + timedelta(minutes=1), tag="a")
    add_events(auth, 10, t0 + timedelta(minutes=2), tag="b")
    checkpoint(auth, t0 + timedelta(minutes=2, seconds=30))
    add_events(auth, 10, t0 + timedelta(minutes=3), tag="c")

    data = export(
        auth,
        since=parse_bound((t0 + timedelta(minutes=2)).isoformat()),
        until=parse_bound((t0 + timedelta(minutes=2, seconds=59)).isoformat()),
    )
    rows = events_of(data)
    assert [r["subject"] for r in rows[:10]] == [f"b{i}" for i in range(10)]
    assert [r["action"] for r in rows[10:]] == ["audit.checkpoint"]  # signed at 2:30
    manifest = json.loads(members(data)["manifest.json"])
    assert manifest["range"]["requested_from"] == (t0 + timedelta(minutes=2)).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )
    report = verify(data, ca_env.root_pem)
    assert report.ok, report.findings

    with pytest.raises(BadRequest, match="no audit events"):
        export(auth, since=parse_bound((t0 + timedelta(hours=5)).isoformat()))


@pytest.mark.parametrize(
    "text",
    ["", "0", "-3", "yesterday", "2026-13-01T00:00:00Z", "2026-01-01", "2026-01-01T10:00:00"],
)
def test_a_bound_that_is_neither_a_seq_nor_a_zoned_time_is_refused(text):
    with pytest.raises(BadRequest):
        parse_bound(text, "--from")


def test_fast_line_parsing_agrees_with_decoding_on_tricky_events():
    """The verifier's fast path reads exported lines without decoding them; wherever it accepts
    a line it must mean what decoding it means."""
    prev = bytes(32)
    details_cases: list[dict[str, object]] = [
        {"a": 1},
        {"quote": 'say "hi"', "slash": "a\\b", "nl": "x\ny", "uni": "Grüße ☃", "ctl": "\x01"},
        {"nested": {"seq": 5, "hash": "x", "list": [1, "two", None, True]}},
        {},
    ]
    for n, details in enumerate(details_cases, start=1):
        for subject in ("plain", 'with "quotes"', "ünïcödé", "tab\there"):
            event = event_dict(n, "2026-01-01T00:00:00.000000Z", "test", "x.y", subject, details)
            digest = chain_hash(prev, event)
            line = canonical_json({**event, "prev_hash": prev.hex(), "hash": digest.hex()})
            decoded = decoded_row(line)
            fast = fast_row(line)
            assert not isinstance(decoded, str)
            if fast is not None:
                assert fast[:5] == decoded[:5] and fast[6:] == decoded[6:]
                assert json.loads(fast[5]) == json.loads(decoded[5])
            if '"' not in subject and "\\" not in subject and "\t" not in subject:
                assert fast is not None  # the common case takes the fast path
    # Anything not in the exact layout is left to the decoder.
    assert fast_row(b'{"seq":1}') is None
    assert fast_row(b'{"action":"a","actor":"b","details":{},"seq":1}') is None


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_export_then_offline_verify_passes_and_the_export_is_audited(ca_env, tmp_path):
    auth = ca_env.auth
    create_audit_key(auth, actor="test")
    add_events(auth, 10)
    checkpoint(auth)
    out = tmp_path / "bundle.zip"
    made = run(ca_env.data_dir, "audit", "export", "--out", str(out))
    assert made.returncode == 0, made.stderr
    assert "exported events 1 to" in made.stdout
    assert not list(tmp_path.glob(".bundle.zip.*"))  # no temporary file left behind

    [exported] = auth.db.audit_events("audit.exported")
    rng = json.loads(members(out.read_bytes())["manifest.json"])["range"]
    assert exported.actor.startswith("cli:")
    assert exported.details["first_seq"] == 1 == rng["first_seq"]
    assert exported.details["last_seq"] == rng["last_seq"] == exported.seq - 1
    assert exported.details["requester"] == exported.actor and exported.details["via"] == "cli"

    checked = run(None, "audit", "verify", str(out), "--root", str(ca_env.root_pem))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"audit bundle OK: {rng['last_seq']} events")


def test_cli_export_refuses_bad_bounds_clearly(sqlite_ca_env, tmp_path):
    out = str(tmp_path / "b.zip")
    bad = run(sqlite_ca_env.data_dir, "audit", "export", "--from", "last tuesday", "--out", out)
    assert bad.returncode == 1 and "neither a seq nor an RFC 3339 time" in bad.stderr
    empty = run(sqlite_ca_env.data_dir, "audit", "export", "--from", "9", "--to", "3", "--out", out)
    assert empty.returncode == 1 and "no audit events from 9 to 3" in empty.stderr
    assert "Traceback" not in bad.stderr + empty.stderr and not Path(out).exists()


def test_cli_verify_of_a_bundle_needs_file_and_root(sqlite_ca_env, tmp_path):
    bundle = tmp_path / "b.zip"
    bundle.write_bytes(export(sqlite_ca_env.auth))
    alone = run(None, "audit", "verify", str(bundle))
    assert alone.returncode == 2 and "--root" in alone.stderr
    not_a_root = tmp_path / "leaf.pem"
    not_a_root.write_bytes(sqlite_ca_env.issuing_pem())  # a CA, but not a self-signed root
    refused = run(None, "audit", "verify", str(bundle), "--root", str(not_a_root))
    assert refused.returncode == 1 and "no self-signed root" in refused.stderr
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"not a zip at all")
    broken = run(None, "audit", "verify", str(garbage), "--root", str(sqlite_ca_env.root_pem))
    assert broken.returncode == 3 and "not an hsmca audit bundle" in broken.stderr


def test_export_and_verify_show_progress_on_a_long_log(ca_env, tmp_path):
    auth = ca_env.auth
    create_audit_key(auth, actor="test")
    add_events(auth, 5000)
    checkpoint(auth)
    out = tmp_path / "long.zip"
    made = run(ca_env.data_dir, "audit", "export", "--out", str(out))
    assert made.returncode == 0, made.stderr
    total = head(auth) - 1  # the export's own audit.exported event came after it
    assert f"exporting: {total}/{total} events (100%)" in made.stderr
    checked = run(None, "audit", "verify", str(out), "--root", str(ca_env.root_pem))
    assert checked.returncode == 0, checked.stderr
    assert f"verifying: {total}/{total} events (100%)" in checked.stderr


# --- tampering ----------------------------------------------------------------------------------


@dataclass
class Layout:
    """A module's CA with a known chain: checkpoints at c1 and c2, and 10 events after c2 + 1."""

    env: CaEnv
    bundle: bytes
    c1: int
    c2: int
    last: int


@pytest.fixture(scope="module")
def layout(
    softhsm_token: tuple[SoftHsmToken, str], tmp_path_factory: pytest.TempPathFactory
) -> Layout:
    token, pin = softhsm_token
    tmp = tmp_path_factory.mktemp("tamper")
    env = make_ca_env(tmp, token, pin, f"sqlite:///{tmp / 'hsmca.db'}")
    auth = env.auth
    create_audit_key(auth, actor="test")
    add_events(auth, 20)
    c1 = checkpoint(auth)
    add_events(auth, 20)
    c2 = checkpoint(auth)
    add_events(auth, 10)
    bundle = export(auth)
    yield Layout(env, bundle, c1, c2, head(auth))
    env.auth.db.dispose()


def rebuild(
    data: bytes,
    events: Callable[[list[dict[str, object]]], list[dict[str, object]]] | None = None,
    checkpoints: Callable[[list[dict[str, object]]], list[dict[str, object]]] | None = None,
    chain: Callable[[bytes], bytes] | None = None,
    manifest: Callable[[dict[str, object]], None] | None = None,
    fix_files: bool = True,
) -> bytes:
    """The bundle with members changed; ``fix_files`` recomputes the manifest's SHA-256s and
    sizes as a careful forger would (so only deeper checks can catch the change)."""
    files = members(data)
    if events is not None:
        rows = events([json.loads(x) for x in files["events.jsonl"].splitlines()])
        files["events.jsonl"] = b"".join(canonical_json(r) + b"\n" for r in rows)
    if checkpoints is not None:
        cps = checkpoints([json.loads(x) for x in files["checkpoints.jsonl"].splitlines()])
        files["checkpoints.jsonl"] = b"".join(canonical_json(c) + b"\n" for c in cps)
    if chain is not None:
        files["chain.pem"] = chain(files["chain.pem"])
    stated = json.loads(files["manifest.json"])
    if fix_files:
        for name in ("events.jsonl", "checkpoints.jsonl", "chain.pem"):
            stated["files"][name] = {
                "sha256": hashlib.sha256(files[name]).hexdigest(),
                "bytes": len(files[name]),
            }
    if manifest is not None:
        manifest(stated)
    files["manifest.json"] = json.dumps(stated, indent=2, sort_keys=True).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, body in files.items():
            z.writestr(name, body)
    return out.getvalue()


def rehash_from(rows: list[dict[str, object]], start: int) -> list[dict[str, object]]:
    """Recompute prev_hash/hash from index ``start`` on (a forger without the audit key)."""
    for i in range(start, len(rows)):
        row = rows[i]
        prev = bytes.fromhex(str(rows[i - 1]["hash"])) if i else bytes(32)
        event = {k: row[k] for k in ("seq", "time", "actor", "action", "subject", "details")}
        row["prev_hash"] = prev.hex()
        row["hash"] = chain_hash(prev, event).hex()
    return rows


def index_of(rows: list[dict[str, object]], seq: int) -> int:
    return next(i for i, r in enumerate(rows) if r["seq"] == seq)


def edited(lay: Layout) -> tuple[bytes, int, str]:
    k = lay.c1 - 5

    def change(rows):
        rows[index_of(rows, k)]["actor"] = "mallory"
        return rows

    return rebuild(lay.bundle, events=change), k, "hash does not match the event (edited)"


def deleted(lay: Layout) -> tuple[bytes, int, str]:
    k = lay.c1 - 5
    return (
        rebuild(lay.bundle, events=lambda rows: [r for r in rows if r["seq"] != k]),
        k,
        f"expected seq {k}, found {k + 1}",
    )


def inserted(lay: Layout) -> tuple[bytes, int, str]:
    k = lay.c1 - 5

    def insert(rows):
        i = index_of(rows, k)
        fake = dict(rows[i], actor="mallory", details={"forged": True})
        return rehash_from([*rows[:i], fake], i) + rows[i:]

    return rebuild(lay.bundle, events=insert), k + 1, f"expected seq {k + 1}, found {k}"


def reordered(lay: Layout) -> tuple[bytes, int, str]:
    k = lay.c1 - 5

    def swap(rows):
        i = index_of(rows, k)
        rows[i], rows[i + 1] = rows[i + 1], rows[i]
        return rows

    return rebuild(lay.bundle, events=swap), k, f"expected seq {k}, found {k + 1}"


def truncated(lay: Layout) -> tuple[bytes, int, str]:
    cut = lay.c2 - 3  # the newest checkpoint (and everything after it) cut off, files re-hashed
    return (
        rebuild(lay.bundle, events=lambda rows: [r for r in rows if int(r["seq"]) < cut]),
        cut,
        "truncated",
    )


def truncated_with_manifest(lay: Layout) -> tuple[bytes, int, str]:
    """The tail cut and the whole manifest rewritten to match: the checkpoint shows it."""
    cut = lay.c2 - 3

    def shorten(rows):
        return [r for r in rows if int(r["seq"]) < cut]

    def restate(stated):
        rows = shorten(events_of(lay.bundle))
        stated["range"]["last_seq"] = cut - 1
        stated["counts"]["events"] = len(rows)
        stated["last_hash"] = rows[-1]["hash"]

    return rebuild(lay.bundle, events=shorten, manifest=restate), cut, "truncated"


def rewritten(lay: Layout) -> tuple[bytes, int, str]:
    k = lay.c2 - 5  # between c1 and c2: the forger recomputes every hash after it

    def rewrite(rows):
        i = index_of(rows, k)
        rows[i]["details"] = {"forged": True}
        return rehash_from(rows, i)

    def restate(stated):
        stated["last_hash"] = rehash_from_bundle(lay, rewrite)

    return (
        rebuild(lay.bundle, events=rewrite, manifest=restate),
        lay.c1 + 1,
        "were rewritten",
    )


def rehash_from_bundle(lay: Layout, change: Callable) -> str:
    return str(change(events_of(lay.bundle))[-1]["hash"])


def foreign_signature(lay: Layout) -> tuple[bytes, int, str]:
    key = ec.generate_private_key(ec.SECP256R1())

    def resign(cps):
        for c in cps:
            if c["seq"] == lay.c2:
                message = checkpoint_message(c["seq"], c["hash"], c["time"])
                signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
                c["signature"] = base64.b64encode(signature).decode()
        return cps

    return rebuild(lay.bundle, checkpoints=resign), lay.c2, "does not verify"


def forged_audit_certificate(lay: Layout) -> tuple[bytes, int, str]:
    """A forger's own CA issues an 'audit certificate' and re-signs the newest checkpoint."""
    root, root_key = software_root("hsmca tests Root CA")  # same name, another key
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    fake = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hsmca audit")]))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(0x1234ABCD)
        .not_valid_before(now - timedelta(days=400))
        .not_valid_after(now + timedelta(days=400))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([DOCUMENT_SIGNING]), critical=False)
        .sign(root_key, hashes.SHA256())
    )

    def resign(cps):
        for c in cps:
            if c["seq"] == lay.c2:
                message = checkpoint_message(c["seq"], c["hash"], c["time"])
                c["signature"] = base64.b64encode(
                    key.sign(message, ec.ECDSA(hashes.SHA256()))
                ).decode()
                c["key_serial"] = "1234abcd"
        return cps

    return (
        rebuild(lay.bundle, checkpoints=resign, chain=lambda b: pem(fake) + pem(root) + b),
        lay.c2,
        "1234abcd",
    )


def checkpoint_removed(lay: Layout) -> tuple[bytes, int, str]:
    def drop(cps):
        return [c for c in cps if c["seq"] != lay.c1]

    def restate(stated):
        stated["counts"]["checkpoints"] -= 1

    return rebuild(lay.bundle, checkpoints=drop, manifest=restate), lay.c1, "checkpoint"


TAMPERS = {
    "edited-field": edited,
    "deleted-event": deleted,
    "inserted-event": inserted,
    "reordered-events": reordered,
    "truncated": truncated,
    "truncated-manifest-rewritten": truncated_with_manifest,
    "rewritten-with-recomputed-hashes": rewritten,
    "checkpoint-signed-by-another-key": foreign_signature,
    "checkpoint-under-a-forged-audit-certificate": forged_audit_certificate,
    "checkpoint-removed": checkpoint_removed,
}


def test_the_untouched_bundle_verifies_with_hsmca_and_the_reference_verifier(layout, tmp_path):
    bundle = tmp_path / "intact.zip"
    bundle.write_bytes(layout.bundle)
    checked = run(None, "audit", "verify", str(bundle), "--root", str(layout.env.root_pem))
    assert checked.returncode == 0, checked.stderr
    assert f"{layout.last} events (seq 1 to {layout.last})" in checked.stdout
    assert f"the last at seq {layout.c2}" in checked.stdout
    assert f"events {layout.c2 + 2} to {layout.last} (10) are not covered" in checked.stderr

    reference = run_reference(reference_verifier(tmp_path), bundle, layout.env.root_pem)
    assert reference.returncode == 0, reference.stderr
    assert reference.stdout.startswith(f"OK: events 1 to {layout.last}")
    assert f"signed up to seq {layout.c2}" in reference.stdout


@pytest.mark.parametrize("kind", list(TAMPERS))
def test_each_kind_of_tampering_is_detected_and_located_by_both_verifiers(layout, tmp_path, kind):
    data, seq, what = TAMPERS[kind](layout)
    bundle = tmp_path / f"{kind}.zip"
    bundle.write_bytes(data)

    checked = run(None, "audit", "verify", str(bundle), "--root", str(layout.env.root_pem))
    assert checked.returncode == 3, checked.stdout + checked.stderr
    first = checked.stderr.splitlines()[0]
    assert first.startswith(f"hsmca: error: audit bundle broken at seq {seq}: "), checked.stderr
    assert what in first, checked.stderr

    reference = run_reference(reference_verifier(tmp_path), bundle, layout.env.root_pem)
    assert reference.returncode == 1, reference.stdout + reference.stderr
    assert reference.stderr.startswith(f"BROKEN at seq {seq}: "), reference.stderr


def test_an_altered_member_or_manifest_is_detected(layout, tmp_path):
    cases = {
        "chain-appended": rebuild(layout.bundle, chain=lambda b: b + b"\n", fix_files=False),
        "manifest-hash": rebuild(
            layout.bundle,
            manifest=lambda m: m["files"]["checkpoints.jsonl"].update(sha256="0" * 64),  # type: ignore[index]
        ),
        "manifest-count": rebuild(
            layout.bundle,
            manifest=lambda m: m["counts"].update(events=1),  # type: ignore[attr-defined]
        ),
    }
    for name, data in cases.items():
        bundle = tmp_path / f"{name}.zip"
        bundle.write_bytes(data)
        checked = run(None, "audit", "verify", str(bundle), "--root", str(layout.env.root_pem))
        assert checked.returncode == 3, (name, checked.stderr)
        assert "audit bundle not verified" in checked.stderr, (name, checked.stderr)
    report = verify(cases["chain-appended"], layout.env.root_pem)
    assert [e.what for e in report.errors] == [
        next(e.what for e in report.errors if e.what.startswith("chain.pem differs"))
    ]
    reference = run_reference(
        reference_verifier(tmp_path), tmp_path / "manifest-hash.zip", layout.env.root_pem
    )
    assert reference.returncode == 1 and "checkpoints.jsonl differs" in reference.stderr


def test_a_wrong_root_fails_verification(layout, tmp_path):
    other, _ = software_root("hsmca tests Root CA")  # same name as the real root, another key
    root = tmp_path / "other-root.pem"
    root.write_bytes(pem(other))
    bundle = tmp_path / "b.zip"
    bundle.write_bytes(layout.bundle)
    checked = run(None, "audit", "verify", str(bundle), "--root", str(root))
    assert checked.returncode == 3
    [cp1] = [c.seq for c in stored_checkpoints(layout.env.auth.db)][:1]
    assert checked.stderr.startswith(f"hsmca: error: audit bundle broken at seq {cp1}: ")
    assert "not a trusted audit certificate" in checked.stderr
    assert "does not chain to the given root" in checked.stderr
    reference = run_reference(reference_verifier(tmp_path), bundle, root)
    assert reference.returncode == 1 and reference.stderr.startswith(f"BROKEN at seq {cp1}: ")


# --- REST ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audit_api(live_api):
    """The live server's CA with an audit key, a checkpoint, and clients with and without
    the audit role."""
    auth = live_api.env.auth
    create_audit_key(auth, actor="test")
    add_events(auth, 10)
    checkpoint(auth)
    return {
        "auditor": live_api.add_client("auditor", ["audit"]),
        "enroller": live_api.add_client("enroller", ["enroll"]),
    }


def get_export(live_api, token: str | None, **params: str) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(
        live_api.url("/api/v1/audit/export"), params=params, headers=headers, timeout=60
    )


def test_rest_export_streams_a_bundle_that_verifies_and_is_audited(live_api, audit_api, tmp_path):
    before = live_api.audit_seq()
    resp = get_export(live_api, audit_api["auditor"])
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == "application/zip"
    assert resp.headers["Content-Disposition"] == (
        f'attachment; filename="hsmca-audit-1-{before}.zip"'
    )
    report = verify(resp.content, live_api.env.root_pem)
    assert report.ok, report.findings
    assert (report.first_seq, report.last_seq) == (1, before)

    [exported] = [e for e in live_api.audit_since(before) if e.action == "audit.exported"]
    assert exported.actor == "auditor" and exported.details["requester"] == "auditor"
    assert (exported.details["first_seq"], exported.details["last_seq"]) == (1, before)
    assert exported.details["via"] == "api"

    part = get_export(live_api, audit_api["auditor"], **{"from": "3", "to": str(before - 2)})
    assert part.status_code == 200
    report = verify(part.content, live_api.env.root_pem)
    assert report.ok and (report.first_seq, report.last_seq) == (3, before - 2)
    bundle = tmp_path / "part.zip"
    bundle.write_bytes(part.content)
    checked = run(None, "audit", "verify", str(bundle), "--root", str(live_api.env.root_pem))
    assert checked.returncode == 0, checked.stderr


def test_rest_export_needs_the_audit_role(live_api, audit_api):
    before = live_api.audit_seq()
    resp = get_export(live_api, audit_api["enroller"])
    assert resp.status_code == 403
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert "'audit' role" in resp.json()["detail"]
    denied = [e for e in live_api.audit_since(before) if e.action == "api.denied"]
    assert [e.actor for e in denied] == ["enroller"]
    assert not [e for e in live_api.audit_since(before) if e.action == "audit.exported"]

    anonymous = get_export(live_api, None)
    assert anonymous.status_code == 401
    assert anonymous.headers["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize(
    "params",
    [
        {"from": "soon"},
        {"to": "2026-01-01"},
        {"from": "0"},
        {"from": "999999999"},
        {"from": "5", "to": "2"},
        {"since": "1"},
        {"from": "0001-01-01T00:00:00+01:00"},
        {"to": "9999-12-31T23:59:59-01:00"},
    ],
)
def test_rest_export_refuses_bad_parameters_with_a_problem(live_api, audit_api, params):
    resp = get_export(live_api, audit_api["auditor"], **params)
    assert resp.status_code == 400, resp.text
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert resp.json()["type"] == "urn:hsmca:problem:malformed-request"


def get_audit(live_api, path: str, token: str | None, **params: str) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(live_api.url(path), params=params, headers=headers, timeout=60)


def test_rest_events_page_through_the_whole_chain_oldest_first_with_linked_hashes(
    live_api, audit_api
):
    head = live_api.audit_seq()
    seen: list[dict] = []
    params = {"limit": "7"}
    while True:
        resp = get_audit(live_api, "/api/v1/audit/events", audit_api["auditor"], **params)
        assert resp.status_code == 200, resp.text
        assert resp.headers["Content-Type"] == "application/json"
        page = resp.json()
        seen += page["items"]
        if page["next_after"] is None:
            assert "Link" not in resp.headers
            break
        assert len(page["items"]) == 7
        assert resp.headers["Link"] == (
            f'</api/v1/audit/events?after={page["next_after"]}&limit=7>; rel="next"'
        )
        params["after"] = str(page["next_after"])
    seqs = [e["seq"] for e in seen]
    assert seqs[:head] == list(range(1, head + 1))  # reading is not audited: nothing new
    assert seen[0]["prev_hash"] == "0" * 64
    for older, newer in zip(seen, seen[1:], strict=False):
        assert newer["prev_hash"] == older["hash"]
    # Each event is the one that is chained: its hash recomputes from the fields shown.
    for e in seen[:head]:
        event = event_dict(e["seq"], e["time"], e["actor"], e["action"], e["subject"], e["details"])
        assert chain_hash(bytes.fromhex(e["prev_hash"]), event).hex() == e["hash"]


def test_rest_events_filter_by_action_actor_subject_and_time(live_api, audit_api):
    token = audit_api["auditor"]
    checkpoints = get_audit(
        live_api, "/api/v1/audit/events", token, action="audit.checkpoint"
    ).json()["items"]
    assert checkpoints and {e["action"] for e in checkpoints} == {"audit.checkpoint"}
    prefixed = get_audit(live_api, "/api/v1/audit/events", token, action="audit.*").json()
    assert {e["action"] for e in prefixed["items"]} >= {"audit.checkpoint", "audit.key.created"}
    assert all(e["action"].startswith("audit.") for e in prefixed["items"])
    by_actor = get_audit(live_api, "/api/v1/audit/events", token, actor="test").json()["items"]
    assert by_actor and {e["actor"] for e in by_actor} == {"test"}
    by_subject = get_audit(live_api, "/api/v1/audit/events", token, subject="e3").json()["items"]
    assert by_subject and all("e3" in e["subject"] for e in by_subject)

    everything = get_audit(live_api, "/api/v1/audit/events", token, limit="1000").json()["items"]
    middle = everything[len(everything) // 2]["time"]
    later = get_audit(live_api, "/api/v1/audit/events", token, since=middle, limit="1000").json()
    earlier = get_audit(live_api, "/api/v1/audit/events", token, until=middle, limit="1000").json()
    assert all(e["time"] >= middle for e in later["items"])
    assert all(e["time"] < middle for e in earlier["items"])
    assert len(later["items"]) + len(earlier["items"]) == len(everything)


def test_rest_verify_reports_the_live_chain_and_locates_an_edit(live_api, audit_api):
    token = audit_api["auditor"]
    resp = get_audit(live_api, "/api/v1/audit/verify", token)
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert report["ok"] is True and report["first_bad_seq"] is None and report["problem"] is None
    assert report["checkpoints"] >= 1 and report["head_seq"] >= report["events"] > 10
    assert report["last_checkpoint_seq"] is not None

    seq = 5
    db = live_api.env.auth.db
    with db.engine.begin() as conn:
        actor = conn.execute(text("SELECT actor FROM audit_events WHERE seq = :s"), {"s": seq})
        original = actor.scalar_one()
        conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = :s"), {"s": seq})
    try:
        broken = get_audit(live_api, "/api/v1/audit/verify", token).json()
    finally:
        with db.engine.begin() as conn:
            conn.execute(
                text("UPDATE audit_events SET actor = :a WHERE seq = :s"), {"a": original, "s": seq}
            )
    assert broken["ok"] is False and broken["first_bad_seq"] == seq
    assert broken["events"] == seq - 1 and broken["problem"]
    assert get_audit(live_api, "/api/v1/audit/verify", token).json()["ok"] is True


@pytest.mark.parametrize("path", ["/api/v1/audit/events", "/api/v1/audit/verify"])
def test_rest_reading_and_verifying_need_the_audit_role(live_api, audit_api, path):
    before = live_api.audit_seq()
    resp = get_audit(live_api, path, audit_api["enroller"])
    assert resp.status_code == 403
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert "'audit' role" in resp.json()["detail"]
    denied = [e for e in live_api.audit_since(before) if e.action == "api.denied"]
    assert [e.actor for e in denied] == ["enroller"]
    assert get_audit(live_api, path, None).status_code == 401


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/audit/events", {"since": "yesterday"}),
        ("/api/v1/audit/events", {"until": "2026-01-01"}),
        (
            "/api/v1/audit/events",
            {"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
        ),
        ("/api/v1/audit/events", {"after": "-1"}),
        ("/api/v1/audit/events", {"limit": "0"}),
        ("/api/v1/audit/events", {"limit": "1001"}),
        ("/api/v1/audit/events", {"actor": "x" * 257}),
        ("/api/v1/audit/events", {"seq": "1"}),
        ("/api/v1/audit/events", {"since": "0001-01-01T00:00:00+01:00"}),
        ("/api/v1/audit/events", {"until": "9999-12-31T23:59:59-01:00"}),
        ("/api/v1/audit/verify", {"full": "1"}),
    ],
)
def test_rest_audit_reads_refuse_bad_parameters_with_a_problem(live_api, audit_api, path, params):
    resp = get_audit(live_api, path, audit_api["auditor"], **params)
    assert resp.status_code == 400, resp.text
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert resp.json()["type"] == "urn:hsmca:problem:malformed-request"
