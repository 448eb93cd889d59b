"""Signing audit checkpoints and writing them to the witnesses.

A checkpoint signs the chain head ``(seq, hash, time)`` with the audit key in the HSM (the
message is :func:`ca.checkpoint.checkpoint_message`; see ``ca/audit_key.py`` for the key). One
write transaction, holding the chain's writer lock, reads the head, signs it, stores the
``audit_checkpoints`` row and appends the event ``audit.checkpoint`` (details: seq, hash, time,
key_serial, algorithm, signature). So the event recording the checkpoint of seq ``C`` is always
event ``C + 1`` — after the head it signs, and covered by the next checkpoint. Verification
relies on this: a chain that ends at a checkpoint's seq has lost that event (truncation).

Only then, outside the transaction, is the checkpoint written to the witnesses (``ca/witness.py``):
a witness failure is logged and never loses the checkpoint; the witness file catches up with
every stored checkpoint it misses at the next run of :func:`run_once`.

A checkpoint is due (:func:`due_reason`) when ``[audit] checkpoint_every_events`` events came
since the last one, or when the last one is ``checkpoint_every_seconds`` old and any event came
since. The ``audit.checkpoint`` event of the last checkpoint does not count, so an idle CA does not
sign a new checkpoint over its own checkpoint events forever.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from sqlalchemy import Connection, insert, select

from ca import witness
from ca.audit import rfc3339
from ca.audit_key import (
    AuditSigner,
    audit_certificate_rows,
    create_audit_key,
    current_row,
    load_signer,
    renewal_reason,
)
from ca.authority import Authority
from ca.checkpoint import Checkpoint, algorithm_of, checkpoint_message, signature_valid
from ca.config import AuditConfig
from ca.errors import CAError, KeyMismatch
from ca.store import tables as t
from ca.store.db import Database

log = logging.getLogger(__name__)

ACTION = "audit.checkpoint"

_HEAD = select(t.AuditEvent.seq, t.AuditEvent.hash).order_by(t.AuditEvent.seq.desc()).limit(1)
_NEWEST = select(t.AuditCheckpoint.__table__).order_by(t.AuditCheckpoint.seq.desc()).limit(1)

# Per process: say once that there is no audit key, and once per witness/database disagreement.
_said: set[str] = set()


@dataclass(frozen=True)
class ChainState:
    """The chain head and the newest checkpoint, as :func:`due_reason` needs them."""

    head_seq: int
    last: Checkpoint | None

    @property
    def unsigned_events(self) -> int:
        """Events after the newest checkpoint, not counting that checkpoint's own event."""
        if self.last is None:
            return self.head_seq
        return max(0, self.head_seq - self.last.seq - 1)


@dataclass
class WitnessReport:
    """What the witnesses got: checkpoints written per witness, and the failures."""

    written: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Signed:
    """A checkpoint just signed and stored, and how its witnesses fared."""

    checkpoint: Checkpoint
    witnesses: WitnessReport


# --- reading --------------------------------------------------------------------------------


def checkpoint_from_row(row: Any) -> Checkpoint:
    """A stored checkpoint (a signature that is not base64 becomes one that never verifies)."""
    m = row._mapping
    try:
        signature = base64.b64decode(m["signature"], validate=True)
    except (binascii.Error, ValueError, TypeError):
        signature = b""
    return Checkpoint(
        seq=int(m["seq"]),
        hash=str(m["hash"]),
        time=str(m["time"]),
        key_serial=str(m["key_serial"]),
        algorithm=str(m["algorithm"]),
        signature=signature,
    )


def stored_checkpoints(db: Database, after_seq: int = 0) -> list[Checkpoint]:
    """Every stored checkpoint with seq > ``after_seq``, in seq order."""
    query = (
        select(t.AuditCheckpoint.__table__)
        .where(t.AuditCheckpoint.seq > after_seq)
        .order_by(t.AuditCheckpoint.seq)
    )
    with db.read() as conn:
        return [checkpoint_from_row(r) for r in conn.execute(query).all()]


def head_seq(db: Database) -> int:
    """The seq of the newest event (0: the chain is empty)."""
    with db.read() as conn:
        row = conn.execute(_HEAD).first()
    return int(row[0]) if row else 0


def chain_state(db: Database) -> ChainState:
    with db.read() as conn:
        newest = conn.execute(_NEWEST).first()
        head = conn.execute(_HEAD).first()
    return ChainState(
        int(head[0]) if head else 0, checkpoint_from_row(newest) if newest is not None else None
    )


# --- deciding -------------------------------------------------------------------------------


def due_reason(state: ChainState, now: datetime, cfg: AuditConfig) -> str | None:
    """Why a checkpoint is due at ``now`` (None: not due)."""
    new = state.unsigned_events
    if new == 0:
        return None
    if new >= cfg.checkpoint_every_events:
        return f"{new} events since the last checkpoint"
    if state.last is None:
        return "no checkpoint yet"
    try:
        signed_at = datetime.fromisoformat(state.last.time.replace("Z", "+00:00"))
    except ValueError:
        return "the last checkpoint's time is unreadable"
    if now - signed_at >= timedelta(seconds=cfg.checkpoint_every_seconds):
        return f"{new} events since the last checkpoint at {state.last.time}"
    return None


def due(auth: Authority, now: datetime) -> bool:
    """Whether a checkpoint is due at ``now`` (see :func:`due_reason`)."""
    return due_reason(chain_state(auth.db), now, auth.config.audit) is not None


# --- signing --------------------------------------------------------------------------------


def sign_message(signer: AuditSigner, message: bytes) -> bytes:
    """Sign ``message`` with the audit key in the HSM: ECDSA-SHA256 (DER) or RSA PKCS#1 v1.5 SHA-256."""
    key = signer.key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(message, ec.ECDSA(hashes.SHA256()))
    return key.sign(message, padding.PKCS1v15(), hashes.SHA256())


def sign_checkpoint(
    auth: Authority, now: datetime | None = None, actor: str = "hsmca"
) -> Signed | None:
    """Sign the chain head now, store it with its ``audit.checkpoint`` event, then witness it.

    None when there is nothing to sign (an empty chain) or no audit key yet.
    """
    now = now or auth.now()
    signer = load_signer(auth, now)
    if signer is None:
        return None
    with auth.db.write() as conn:
        checkpoint = _sign_head(auth, conn, signer, now, actor)
    if checkpoint is None:
        return None
    return Signed(checkpoint, publish(auth, checkpoint))


def _sign_head(
    auth: Authority, conn: Connection, signer: AuditSigner, now: datetime, actor: str
) -> Checkpoint | None:
    head = conn.execute(_HEAD).first()
    if head is None:
        return None
    seq, hash_hex, time = int(head[0]), str(head[1]), rfc3339(now)
    signature = sign_message(signer, checkpoint_message(seq, hash_hex, time))
    checkpoint = Checkpoint(
        seq, hash_hex, time, signer.serial, algorithm_of(signer.certificate), signature
    )
    if not signature_valid(checkpoint, signer.certificate):
        raise KeyMismatch("the audit key's checkpoint signature does not verify; nothing stored")
    record = checkpoint.to_json()
    conn.execute(
        insert(t.AuditCheckpoint),
        {
            "seq": seq,
            "hash": hash_hex,
            "time": time,
            "key_serial": checkpoint.key_serial,
            "algorithm": checkpoint.algorithm,
            "signature": record["signature"],
        },
    )
    details = {k: v for k, v in record.items() if k != "type"}
    auth.db.append_audit(conn, now, actor, ACTION, str(seq), details)
    return checkpoint


# --- witnessing -----------------------------------------------------------------------------


def catch_up_file(auth: Authority) -> int:
    """Append to the witness file every stored checkpoint after its last line; returns how many."""
    cfg = auth.config.audit
    if not cfg.witness_file:
        return 0
    path = auth.config.path(cfg.witness_file)
    last = witness.last_witnessed_seq(path)
    missing = stored_checkpoints(auth.db, after_seq=last)
    if not missing:
        state = chain_state(auth.db)
        newest = state.last.seq if state.last else 0
        if newest < last:
            _say_once(
                f"witness:{last}:{newest}",
                f"the witness file {path} has checkpoints up to seq {last} but the database only "
                f"to seq {newest}: the database was rolled back or truncated (hsmca audit verify)",
            )
        return 0
    return witness.append_to_file(path, missing)


def publish(auth: Authority, checkpoint: Checkpoint) -> WitnessReport:
    """Write ``checkpoint`` to every configured witness; failures are logged and reported."""
    cfg = auth.config.audit
    report = WitnessReport()
    if cfg.witness_file:
        try:
            report.written["file"] = catch_up_file(auth)
        except (OSError, CAError) as exc:
            report.errors["file"] = str(exc)
    if cfg.witness_syslog:
        try:
            witness.send_syslog(checkpoint)
            report.written["syslog"] = 1
        except OSError as exc:
            report.errors["syslog"] = str(exc)
    if cfg.witness_webhook:
        try:
            witness.post_webhook(cfg.witness_webhook, checkpoint)
            report.written["webhook"] = 1
        except witness.WitnessError as exc:
            report.errors["webhook"] = str(exc)
    for name, error in report.errors.items():
        log.warning("audit checkpoint %d: witness %s failed: %s", checkpoint.seq, name, error)
    return report


# --- the scheduler job ----------------------------------------------------------------------


def run_once(auth: Authority, now: datetime, actor: str = "hsmca") -> list[Checkpoint]:
    """Renew the audit key near its end, sign a checkpoint if one is due, catch up the witness file.

    Signs nothing (and says so once) while there is no audit key: ``hsmca audit key create``.
    Returns the checkpoints signed (at most one).
    """
    rows = audit_certificate_rows(auth.db)
    current = current_row(rows, now)
    if current is None:
        _say_once("no-key", "no audit key: checkpoints are not signed (hsmca audit key create)")
        _catch_up_logged(auth)
        return []
    if renewal_reason(current, now) is not None:
        try:
            made = create_audit_key(auth, actor=actor, now=now)
        except CAError as exc:  # the current key still signs; renewal is tried at the next run
            log.warning("audit key renewal failed: %s: %s", exc.kind, exc)
        else:
            if made.created:
                log.info("audit key renewed: certificate %s (%s)", made.serial, made.reason)
    signed: list[Checkpoint] = []
    if due_reason(chain_state(auth.db), now, auth.config.audit) is not None:
        done = sign_checkpoint(auth, now, actor)
        if done is not None:
            signed.append(done.checkpoint)
    else:
        _catch_up_logged(auth)
    return signed


def _catch_up_logged(auth: Authority) -> None:
    try:
        catch_up_file(auth)
    except OSError as exc:
        log.warning("audit witness file: %s", exc)


def _say_once(key: str, message: str) -> None:
    if key not in _said:
        _said.add(key)
        log.warning("%s", message)
