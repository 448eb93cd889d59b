"""Pre-signed responses: one per unexpired certificate, kept fresh in the database.

:func:`run_once` (the scheduler's job) signs every response that is missing, older than
``[ocsp] refresh_hours``, signed by a superseded responder, past its nextUpdate or out of step
with the certificate's status, and drops the responses of expired certificates. Responses are
signed in the HSM one after another and stored one transaction per batch, by a second thread
that reads and writes the database while the token signs.
:func:`refresh_certificate` re-signs one certificate's response at once (after a revocation).

A response is valid ``response_validity_hours`` (default 96 h, BR maximum 10 days) and re-signed
after ``refresh_hours`` (default 24 h), so with the job running hourly none is older than about
25 hours and every one has days left before its nextUpdate.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp as x509_ocsp

from ca.authority import Authority, normalize_serial
from ca.errors import CAError, NotFound
from ca.store import ocsp as store
from ca.store.ocsp import CertStatus, StoredResponse
from ocsp.responders import current, load_signer
from ocsp.signer import IssuerIds, ResponderSigner, single_for

BATCH = 500  # ~10 ms of writer lock per batch: issuance never waits long behind pre-signing


@dataclass
class PresignReport:
    """What one :func:`run_once` did."""

    signed: int = 0
    dropped: int = 0
    errors: dict[str, str] = field(default_factory=dict)  # CA name -> reason


class SignatureCheckFailed(CAError):
    """A freshly signed OCSP response did not verify against its responder certificate."""

    kind = "signatureCheckFailed"


def sign_statuses(
    signer: ResponderSigner,
    statuses: Sequence[CertStatus],
    now: datetime,
    validity_hours: int,
    check_first: bool = True,
) -> list[dict[str, Any]]:
    """Sign one response per certificate; rows for :func:`ca.store.ocsp.store_responses`.

    The first response is parsed and its signature verified, so a wrong key or encoding stops
    the batch before anything is stored.
    """
    this_update, next_update = signer.validity(now, validity_hours)
    produced_at = now.replace(microsecond=0)
    rows: list[dict[str, Any]] = []
    for status in statuses:
        single = single_for(signer.issuer, status, int(status.serial, 16), this_update, next_update)
        der_bytes = signer.sign([single], produced_at)
        if check_first and not rows:
            check_response(signer, der_bytes)
        rows.append(
            {
                "issuer_id": status.issuer_id,
                "serial": status.serial,
                "cert_status": status.ocsp_status,
                "this_update": this_update,
                "next_update": next_update,
                "produced_at": produced_at,
                "der": der_bytes,
            }
        )
    return rows


def check_response(signer: ResponderSigner, der_bytes: bytes) -> None:
    """Parse a signed response and verify its signature with the responder's certificate."""
    try:
        resp = x509_ocsp.load_der_ocsp_response(der_bytes)
        public = signer.certificate.public_key()
        algorithm = resp.signature_hash_algorithm
        if algorithm is None:
            raise ValueError("no signature hash")
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(algorithm))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), algorithm)
        else:
            raise TypeError("unsupported responder key")
    except Exception as exc:  # noqa: BLE001 - any failure means the signer is not usable
        raise SignatureCheckFailed(
            f"OCSP response signed by responder {signer.row.serial} does not verify: "
            f"{type(exc).__name__}"
        ) from exc


def signers(auth: Authority) -> dict[int, ResponderSigner]:
    """The current responder of every CA that has one, keys loaded (CA id -> signer)."""
    rows = store.responders(auth.db)
    found: dict[int, ResponderSigner] = {}
    for ca in auth.db.list_cas():
        row = current(rows, ca.id)
        if row is not None:
            ids = IssuerIds.of(ca.id, ca.name, x509.load_der_x509_certificate(ca.certificate_der))
            found[ca.id] = load_signer(auth, row, ids)
    return found


def run_once(auth: Authority, now: datetime, batch: int = BATCH) -> PresignReport:
    """Sign what is missing or stale, for every CA with a responder; drop expired ones."""
    cfg = auth.config.ocsp
    report = PresignReport()
    with auth.db.write() as conn:
        report.dropped = store.delete_expired_responses(conn, now)
    rows = store.responders(auth.db)
    for ca in auth.db.list_cas():
        responder = current(rows, ca.id)
        if responder is None:
            continue
        try:
            ids = IssuerIds.of(ca.id, ca.name, x509.load_der_x509_certificate(ca.certificate_der))
            signer = load_signer(auth, responder, ids)
            # Responses of a superseded responder are re-signed too (those made in the few minutes
            # between the new certificate's backdated notBefore and its creation wait a cycle).
            stale_before = max(now - timedelta(hours=cfg.refresh_hours), responder.not_before)
            report.signed += _sign_issuer(auth, signer, now, stale_before, batch)
        except CAError as exc:
            report.errors[ca.name] = f"{exc.kind}: {exc}"
    if report.signed or report.dropped:
        # Responses are derived data (a certificate's audited status, signed by an audited
        # responder key): one summary per run that did something, not an event per response.
        auth.audit(
            "hsmca",
            "ocsp.presigned",
            "ocsp",
            {"signed": report.signed, "dropped": report.dropped, "errors": report.errors},
        )
    return report


def _sign_issuer(
    auth: Authority, signer: ResponderSigner, now: datetime, stale_before: datetime, batch: int
) -> int:
    """Sign every stale response of one CA, batch by batch; returns how many.

    The database work runs in a second thread, one batch behind or ahead of the signing: while
    the token signs (python-pkcs11 releases the GIL for it), the previous batch is stored and the
    next one read.
    """
    validity = auth.config.ocsp.response_validity_hours
    ca_id = signer.issuer.ca_id

    def fetch(after_id: int) -> list[CertStatus]:
        return store.certificates_to_sign(auth.db, ca_id, now, stale_before, after_id, batch)

    def save(rows: list[dict[str, Any]]) -> None:
        with auth.db.write() as conn:
            store.store_responses(conn, rows)

    signed = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ocsp-presign-db") as db:
        saving: Future[None] | None = None
        todo = fetch(0)
        while todo:
            following = db.submit(fetch, todo[-1].id)
            rows = sign_statuses(signer, todo, now, validity)
            if saving is not None:
                saving.result()
            saving = db.submit(save, rows)
            signed += len(rows)
            todo = following.result()
        if saving is not None:
            saving.result()
    return signed


def refresh_certificate(
    auth: Authority, serial: str, now: datetime | None = None
) -> StoredResponse:
    """Re-sign and store certificate ``serial``'s response now (call it after a revocation).

    Raises :class:`NotFound` if there is no such certificate or its CA has no responder yet.
    """
    status = store.certificate_status(auth.db, normalize_serial(serial))
    if status is None:
        raise NotFound(f"no certificate with serial {serial}")
    row = current(store.responders(auth.db), status.issuer_id)
    if row is None:
        raise NotFound(f"the CA of certificate {status.serial} has no OCSP responder yet")
    signer = load_signer(auth, row)
    when = now or auth.now()
    (signed,) = sign_statuses(signer, [status], when, auth.config.ocsp.response_validity_hours)
    with auth.db.write() as conn:
        store.store_responses(conn, [signed])
    return StoredResponse(**{k: signed[k] for k in StoredResponse.__dataclass_fields__})
