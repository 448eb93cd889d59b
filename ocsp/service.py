"""The responder of one worker process: request bytes in, response bytes out, never an exception.

How a request is answered:

* Not a DER OCSPRequest, more than ``max_serials_per_request`` certificates, or a nonce outside
  1..32 octets: ``malformedRequest``.
* A CertID naming a CA that is not ours (or a hash algorithm we do not support): ``unauthorized``.
* One certificate, no nonce (RFC 5019, the common case): the pre-signed response. Responses are
  cached in this process by (CA, serial) for at most :data:`CACHE_TTL` seconds and then read from
  the database again, so a re-signed response (after a revocation) is served by every worker
  within that time. A response that is missing, past its nextUpdate, or whose status disagrees
  with the certificate row (a revocation whose re-signing has not happened yet) is signed on the
  spot and stored, so a certificate issued a moment ago, or revoked, is answered correctly at once.
* A nonce (``[ocsp] nonce = "accept"``), a CertID hash other than SHA-1, or several certificates:
  a response signed now for this request (echoing the nonce). These signatures are rate-limited
  per worker by a token bucket (``nonce_rate_per_second``, burst of one second) so that requests
  cannot exhaust the HSM. Over the limit, a one-certificate SHA-1 request gets the pre-signed
  response without the nonce (RFC 8954 lets a responder leave the nonce out; the client decides
  whether that is acceptable); other requests get ``tryLater``.
* A serial this CA never issued: ``unknown`` (signed now, rate-limited as above, and kept in a
  small per-worker cache for five minutes), or ``unauthorized`` when ``unknown_status =
  "unauthorized"`` or over the limit. A certificate that has expired: ``unauthorized`` (its
  response is no longer kept).
* The database or the HSM unavailable when they are needed: ``tryLater``; any other failure:
  ``internalError``. Cached responses are still served while the database is down.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from ca.authority import Authority, serial_hex
from ca.errors import CAError, HsmUnavailable, StoreError
from ca.store import ocsp as store
from ca.store.ocsp import CertStatus
from ocsp import der
from ocsp.presign import sign_statuses
from ocsp.request import MalformedRequest, OcspRequest, RequestedCert, nonce_ok, parse_request
from ocsp.responders import current, load_signer
from ocsp.signer import IssuerIds, ResponderSigner, single_for

log = logging.getLogger(__name__)


class NoResponder(CAError):
    """The CA has no responder certificate yet (the scheduler or ``hsmca init`` makes one)."""

    kind = "noResponder"


#: Seconds a response stays in a worker's memory before the database is asked again.
CACHE_TTL = 0.5
#: Entries kept per worker (about 1 KiB each); the oldest half is dropped beyond this.
CACHE_MAX = 50_000
#: Seconds between re-reads of the CA and responder lists.
ISSUERS_TTL = 30.0
#: Validity of ``unknown`` answers, and how long a worker reuses one.
UNKNOWN_VALIDITY = timedelta(hours=1)
UNKNOWN_CACHE_SECONDS = 300.0
UNKNOWN_CACHE_MAX = 10_000
#: A stored response this close to its nextUpdate is re-signed rather than served.
NEXT_UPDATE_MARGIN = timedelta(minutes=5)

MALFORMED = der.unsuccessful("malformedRequest")
UNAUTHORIZED = der.unsuccessful("unauthorized")
TRY_LATER = der.unsuccessful("tryLater")
INTERNAL_ERROR = der.unsuccessful("internalError")


@dataclass(frozen=True)
class Reply:
    """A response and what HTTP caching needs to know about it.

    ``status`` is the certificate status (``good``/``revoked``/``unknown``) of a successful reply,
    else the OCSP error (``malformedRequest``/``unauthorized``/``tryLater``/``internalError``).
    Only ``cacheable`` replies (pre-signed, no nonce) get RFC 5019 caching headers.
    """

    body: bytes
    status: str
    cacheable: bool = False
    this_update: datetime | None = None
    next_update: datetime | None = None
    produced_at: datetime | None = None
    etag: str = ""
    detail: str = ""


@dataclass(frozen=True)
class _Entry:
    """What the database says about one (CA, serial), as cached."""

    fetched: float  # monotonic time of the read
    status: CertStatus | None  # None: no such certificate
    reply: Reply | None  # the pre-signed response, if usable


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; thread-safe."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = max(1.0, burst)
        self._tokens = self.burst
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, n: float = 1.0) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= n:
                self._tokens -= n
                return True
            return False


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


class OcspService:
    """Answers OCSP requests for one :class:`Authority` (one per worker process)."""

    def __init__(self, auth: Authority, clock: Callable[[], float] = time.monotonic) -> None:
        self.auth = auth
        self.config = auth.config.ocsp
        self._clock = clock
        self._lock = threading.Lock()
        self._sign_lock = threading.Lock()
        self._cache: dict[tuple[int, int], _Entry] = {}
        self._unknown: OrderedDict[tuple[int, int, str], tuple[float, Reply]] = OrderedDict()
        self._issuers: dict[tuple[str, bytes, bytes], IssuerIds] = {}
        self._issuers_loaded = float("-inf")
        self._signers: dict[int, ResponderSigner] = {}
        self._responder_ids: dict[int, int] = {}  # CA id -> current responder id
        self.bucket = TokenBucket(
            self.config.nonce_rate_per_second, self.config.nonce_rate_per_second
        )

    # The entry point ---------------------------------------------------------------------------

    def respond(self, data: bytes) -> Reply:
        """The reply to the DER request ``data``; failures become OCSP error statuses."""
        try:
            return self._respond(data)
        except MalformedRequest as exc:
            return Reply(MALFORMED, "malformedRequest", detail=str(exc))
        except (HsmUnavailable, StoreError, NoResponder) as exc:
            log.warning("OCSP: answering tryLater: %s", exc)
            return Reply(TRY_LATER, "tryLater", detail=str(exc))
        except Exception:
            log.exception("OCSP: internal error")
            return Reply(INTERNAL_ERROR, "internalError")

    @staticmethod
    def malformed(detail: str) -> Reply:
        """The reply to something that is not a request at all (e.g. bad base64 in a GET)."""
        return Reply(MALFORMED, "malformedRequest", detail=detail)

    def _respond(self, data: bytes) -> Reply:
        request = parse_request(data, self.config.max_serials_per_request)
        nonce = request.nonce
        if nonce is not None:
            if self.config.nonce == "ignore":
                nonce = None
            elif not nonce_ok(nonce):
                return Reply(MALFORMED, "malformedRequest", detail="nonce size")
        issuers = []
        for cert in request.certs:
            ids = self._issuer(cert)
            if ids is None:
                return Reply(UNAUTHORIZED, "unauthorized", detail="not an issuer of this CA")
            issuers.append(ids)
        if len(request.certs) == 1:
            return self._one(request.certs[0], issuers[0], nonce)
        return self._several(request, issuers, nonce)

    # One certificate ---------------------------------------------------------------------------

    def _one(self, cert: RequestedCert, ids: IssuerIds, nonce: bytes | None) -> Reply:
        assert cert.hash_name is not None
        entry = self._entry(ids, cert.serial)
        if entry.status is None:
            return self._unknown_reply(cert, ids, nonce)
        if entry.status.not_after <= self._now():
            return Reply(UNAUTHORIZED, "unauthorized", detail="certificate expired")
        presigned = entry.reply
        if nonce is None and cert.hash_name == "sha1" and presigned is not None:
            return presigned
        # Signed for this request: a nonce to echo, or a CertID hash other than SHA-1.
        if not self.bucket.take():
            if presigned is not None and cert.hash_name == "sha1":
                return presigned  # over the limit: the pre-signed response, without the nonce
            return Reply(TRY_LATER, "tryLater", detail="rate limit")
        return self._sign_now([(cert, ids, entry.status)], nonce)

    def _several(
        self, request: OcspRequest, issuers: list[IssuerIds], nonce: bytes | None
    ) -> Reply:
        items: list[tuple[RequestedCert, IssuerIds, CertStatus | None]] = []
        now = self._now()
        for cert, ids in zip(request.certs, issuers, strict=True):
            entry = self._entry(ids, cert.serial)
            if entry.status is not None and entry.status.not_after <= now:
                return Reply(UNAUTHORIZED, "unauthorized", detail="certificate expired")
            if entry.status is None and self.config.unknown_status == "unauthorized":
                return Reply(UNAUTHORIZED, "unauthorized", detail="unknown serial")
            items.append((cert, ids, entry.status))
        if not self.bucket.take():
            return Reply(TRY_LATER, "tryLater", detail="rate limit")
        return self._sign_now(items, nonce)

    def _unknown_reply(self, cert: RequestedCert, ids: IssuerIds, nonce: bytes | None) -> Reply:
        if self.config.unknown_status == "unauthorized":
            return Reply(UNAUTHORIZED, "unauthorized", detail="unknown serial")
        assert cert.hash_name is not None
        key = (ids.ca_id, cert.serial, cert.hash_name)
        if nonce is None:
            with self._lock:
                cached = self._unknown.get(key)
            if cached is not None and self._clock() - cached[0] < UNKNOWN_CACHE_SECONDS:
                return cached[1]
        if not self.bucket.take():
            return Reply(UNAUTHORIZED, "unauthorized", detail="unknown serial, rate limit")
        reply = self._sign_now([(cert, ids, None)], nonce)
        if nonce is None:
            with self._lock:
                self._unknown[key] = (self._clock(), reply)
                while len(self._unknown) > UNKNOWN_CACHE_MAX:
                    self._unknown.popitem(last=False)
        return reply

    def _sign_now(
        self,
        items: list[tuple[RequestedCert, IssuerIds, CertStatus | None]],
        nonce: bytes | None,
    ) -> Reply:
        now = self._now()
        singles = []
        signer = None
        for cert, ids, status in items:
            signer_here = self._signer(ids)
            if signer is not None and signer_here is not signer:
                # One response has one signer: CertIDs of two CAs cannot be answered together.
                return Reply(UNAUTHORIZED, "unauthorized", detail="several CAs in one request")
            signer = signer_here
            assert cert.hash_name is not None
            if status is None:
                this_update = now.replace(microsecond=0)
                next_update = min(this_update + UNKNOWN_VALIDITY, signer.not_after)
            else:
                this_update, next_update = signer.validity(now, self.config.response_validity_hours)
            singles.append(
                single_for(ids, status, cert.serial, this_update, next_update, cert.hash_name)
            )
        assert signer is not None
        body = signer.sign(singles, now, nonce)
        status_text = singles[0].status if len(singles) == 1 else "several"
        return Reply(body, status_text, detail="signed now")

    # The cache ---------------------------------------------------------------------------------

    def _entry(self, ids: IssuerIds, serial: int) -> _Entry:
        key = (ids.ca_id, serial)
        entry = self._cache.get(key)
        clock = self._clock()
        if entry is not None and clock - entry.fetched < CACHE_TTL:
            if entry.reply is None or entry.reply.next_update is None:
                return entry
            if entry.reply.next_update > self._now():
                return entry
        try:
            fresh = self._load(ids, serial, clock)
        except StoreError:
            if entry is not None and entry.reply is not None and entry.reply.next_update:
                if entry.reply.next_update > self._now():
                    return entry  # the database is away: keep serving what is still valid
            raise
        with self._lock:
            self._cache.pop(key, None)
            self._cache[key] = fresh
            if len(self._cache) > CACHE_MAX:
                for old in list(self._cache)[: CACHE_MAX // 2]:
                    del self._cache[old]
        return fresh

    def _load(self, ids: IssuerIds, serial: int, clock: float) -> _Entry:
        if serial <= 0:
            return _Entry(clock, None, None)
        status, stored = store.lookup(self.auth.db, ids.ca_id, serial_hex(serial))
        if status is None:
            return _Entry(clock, None, None)
        now = self._now()
        if status.not_after <= now:
            return _Entry(clock, status, None)
        if (
            stored is None
            or stored.cert_status != status.ocsp_status
            or stored.next_update <= now + NEXT_UPDATE_MARGIN
        ):
            stored_reply = self._sign_and_store(ids, status)
            return _Entry(clock, status, stored_reply)
        return _Entry(
            clock,
            status,
            Reply(
                stored.der,
                stored.cert_status,
                cacheable=True,
                this_update=stored.this_update,
                next_update=stored.next_update,
                produced_at=stored.produced_at,
                etag=etag_of(stored.der),
            ),
        )

    def _sign_and_store(self, ids: IssuerIds, status: CertStatus) -> Reply:
        """Sign a missing or outdated pre-signed response now and store it (best effort)."""
        with self._sign_lock:
            signer = self._signer(ids)
            (row,) = sign_statuses(
                signer, [status], self._now(), self.config.response_validity_hours, False
            )
            try:
                with self.auth.db.write() as conn:
                    store.store_responses(conn, [row])
            except StoreError as exc:
                log.warning("OCSP: could not store a response signed on demand: %s", exc)
        return Reply(
            row["der"],
            row["cert_status"],
            cacheable=True,
            this_update=row["this_update"],
            next_update=row["next_update"],
            produced_at=row["produced_at"],
            etag=etag_of(row["der"]),
        )

    # Issuers and signers -----------------------------------------------------------------------

    def _issuer(self, cert: RequestedCert) -> IssuerIds | None:
        if cert.hash_name is None:
            return None
        key = (cert.hash_name, cert.name_hash, cert.key_hash)
        if self._clock() - self._issuers_loaded > ISSUERS_TTL:
            self._reload_issuers()
        return self._issuers.get(key)

    def _reload_issuers(self) -> None:
        try:
            cas = self.auth.db.list_cas()
            responders = store.responders(self.auth.db)
        except StoreError:
            if self._issuers:
                return  # keep answering from what we know
            raise
        issuers: dict[tuple[str, bytes, bytes], IssuerIds] = {}
        current_ids: dict[int, int] = {}
        for ca in cas:
            if ca.status != "active":
                continue
            ids = IssuerIds.of(ca.id, ca.name, x509.load_der_x509_certificate(ca.certificate_der))
            for hash_name in ids.name_hashes:
                issuers[(hash_name, ids.name_hashes[hash_name], ids.key_hashes[hash_name])] = ids
            row = current(responders, ca.id)
            if row is not None:
                current_ids[ca.id] = row.id
        with self._lock:
            self._issuers = issuers
            self._responder_ids = current_ids
            # A renewed responder replaces the loaded one on next use.
            self._signers = {
                ca_id: s for ca_id, s in self._signers.items() if current_ids.get(ca_id) == s.row.id
            }
            self._issuers_loaded = self._clock()

    def _signer(self, ids: IssuerIds) -> ResponderSigner:
        signer = self._signers.get(ids.ca_id)
        if signer is not None:
            return signer
        with self._lock:
            responder_id = self._responder_ids.get(ids.ca_id)
        rows = store.responders(self.auth.db)
        row = current(rows, ids.ca_id)
        if row is None:
            raise NoResponder(f"CA {ids.ca_name!r} has no OCSP responder yet")
        signer = load_signer(self.auth, row, ids)
        with self._lock:
            if responder_id is None or responder_id != row.id:
                self._responder_ids[ids.ca_id] = row.id
            self._signers[ids.ca_id] = signer
        return signer

    def _now(self) -> datetime:
        return self.auth.now()
