"""The REST enrollment API, ``/api/v1``: enrollment, inventory, profiles, CAs, approvals.

Every handler authenticates first (401), then checks the role (403, audited), then parses the
body strictly (4xx problem documents), and only then calls the core. Denials of an authenticated
client are audited; anonymous failures are not (so nobody can flood the audit chain), but they
are counted in the log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import Blueprint, Response, current_app, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from ca import metrics
from ca.authority import Authority, normalize_serial
from ca.batching import IssuanceQueue
from ca.enrollment import (
    approve,
    client_lookup,
    expire_requests,
    get_request,
    reject,
    submit,
)
from ca.errors import CAError, Forbidden, NotFound
from ca.issuance import IssuanceRequest, IssuedCertificate, profile_label
from ca.policy import Requester
from ca.revocation import REASON_NAMES, AfterRevoke, revoke
from ca.store.db import CertificateFilter, CertificateRow, RequestRow
from web.api import schemas as s
from web.api.auth import TokenCache, Unauthorized, current_requester
from web.problems import problem_for, problem_of

log = logging.getLogger("hsmca.api")

PEM_CHAIN = "application/pem-certificate-chain"
PKIX_CERT = "application/pkix-cert"
PEM_FILE = "application/x-pem-file"
JSON = "application/json"
_DURATION = re.compile(r"^([1-9][0-9]{0,5})([dhm])$")
_LIST_PARAMS = {
    "status",
    "profile",
    "issuer",
    "name",
    "name_exact",
    "owner",
    "requester",
    "expiring_within",
    "limit",
    "cursor",
}
_STATUSES = {"issued", "revoked"}
_REQUEST_STATES = ("pending", "approved", "issued", "rejected", "expired")


class ApiProblem(Exception):
    """A web-level problem (malformed body, wrong media type, ...) of a kind in KINDS."""

    def __init__(self, kind: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.kind = kind
        self.extra = extra


def api_blueprint(
    authority: Callable[[], Authority],
    queue: Callable[[], IssuanceQueue],
    after_revoke: Sequence[AfterRevoke] = (),
) -> Blueprint:
    """The ``/api/v1`` blueprint, bound to the per-process authority and issuance queue.

    ``after_revoke``: run after each revocation commits (``web/hooks.py`` lists them).
    """
    bp = Blueprint("api", __name__, url_prefix="/api/v1")
    tokens = TokenCache()

    def who(role: str | None, action: str) -> tuple[Authority, Requester]:
        auth = authority()
        try:
            requester = current_requester(auth, tokens)
        except Unauthorized:
            log.info("api: unauthenticated %s %s", request.method, request.path)
            raise
        if role is not None and not requester.has_role(role):
            detail = f"client {requester.name!r} lacks the {role!r} role needed to {action}"
            auth.audit(requester.name, "api.denied", action, {"reason": detail, "role": role})
            raise Forbidden(detail)
        return auth, requester

    # Enrollment -----------------------------------------------------------------------------

    @bp.post("/certificates")
    def enroll() -> Response:
        auth, requester = who("enroll", "enroll certificates")
        try:
            body = _parse(EnrollInModel, required=True)
            _accept_for_certificate()
        except ApiProblem as exc:
            _audit_denial(auth, requester.name, exc)
            raise
        assert isinstance(body, s.EnrollIn)
        req = IssuanceRequest(
            csr=body.csr.encode("utf-8"),
            profile=body.profile,
            requester=requester.name,
            validity_days=body.validity_days,
            client=requester,
            metadata=dict(body.metadata),
        )
        if body.profile not in auth.config.profiles:
            # Audited like any denial; the core would say the same.
            _audit_denial(auth, requester.name, ApiProblem("unknownProfile", ""), body.profile)
            raise ApiProblem(
                "unknownProfile",
                f"no profile {body.profile!r} (GET /api/v1/profiles lists them)",
            )
        result = submit(auth, req, issuer=queue().issue)
        if isinstance(result, RequestRow):
            resp = _json(_request_out(result), 202)
            resp.headers["Location"] = f"/api/v1/requests/{result.id}"
            resp.headers["Retry-After"] = "60"
            return resp
        return _issued_response(auth, result, req)

    # Inventory ------------------------------------------------------------------------------

    @bp.get("/certificates")
    def list_certificates() -> Response:
        auth, requester = who(None, "list certificates")
        unknown = set(request.args) - _LIST_PARAMS
        if unknown:
            raise ApiProblem(
                "malformed", f"unknown query parameter(s): {', '.join(sorted(unknown))}"
            )
        args = request.args
        status = args.get("status")
        if status is not None and status not in _STATUSES:
            raise ApiProblem("malformed", f"status must be one of {', '.join(sorted(_STATUSES))}")
        now = auth.now()
        expiring_before = None
        if "expiring_within" in args:
            expiring_before = now + _duration(args["expiring_within"])
        limit = _int_arg("limit", auth.config.api.page_size, 1, 1000)
        after = _decode_cursor(args.get("cursor"))
        owner_filter = args.get("requester")
        if not (requester.has_role("read") or requester.has_role("audit")):
            if not requester.has_role("enroll"):
                raise Forbidden(
                    f"client {requester.name!r} needs the 'read' role to list certificates"
                )
            owner_filter = requester.name  # enroll-only clients see their own certificates
        flt = CertificateFilter(
            status=status,
            profile=args.get("profile"),
            issuer=args.get("issuer"),
            name=args.get("name"),
            name_exact=args.get("name_exact"),
            owner=args.get("owner"),
            requester=owner_filter,
            expiring_before=expiring_before,
            now=now if expiring_before is not None else None,
        )
        for key in ("profile", "issuer", "name", "name_exact", "owner", "requester"):
            value = args.get(key)
            if value is not None and not 1 <= len(value) <= 256:
                raise ApiProblem("malformed", f"{key} must be 1 to 256 characters")
        rows = auth.db.find_certificates(flt, after_id=after, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        items = [_certificate_out(auth, r, with_chain=False) for r in rows]
        cursor = _encode_cursor(rows[-1].id) if more and rows else None
        page = s.CertificatePage(items=items, next_cursor=cursor)
        resp = _json(page)
        if cursor:
            query = request.args.to_dict()
            query["cursor"] = cursor
            link = "/api/v1/certificates?" + "&".join(
                f"{k}={_quote(v)}" for k, v in sorted(query.items())
            )
            resp.headers["Link"] = f'<{link}>; rel="next"'
        return resp

    @bp.get("/certificates/<serial>")
    def get_certificate(serial: str) -> Response:
        auth, requester = who(None, "read certificates")
        normal = normalize_serial(serial)  # NotFound (404) for anything that is not hex
        row = auth.db.get_certificate(normal)
        if not (requester.has_role("read") or requester.has_role("audit")):
            if row.requester != requester.name:
                raise NotFound(f"no certificate with serial {normal}")
        kind = _negotiate([JSON, PEM_CHAIN, PEM_FILE, PKIX_CERT])
        cert = x509.load_der_x509_certificate(row.der)
        if kind == PKIX_CERT:
            return Response(row.der, mimetype=PKIX_CERT)
        if kind in (PEM_CHAIN, PEM_FILE):
            body = cert.public_bytes(serialization.Encoding.PEM)
            if kind == PEM_CHAIN:
                body += _chain_pem(auth, row.issuer_name).encode()
            return Response(body, mimetype=kind)
        return _json(_certificate_out(auth, row, with_chain=True))

    # Revocation -----------------------------------------------------------------------------

    @bp.post("/certificates/<serial>/revoke")
    def revoke_certificate(serial: str) -> Response:
        """Revoke a certificate: its requester, or a client with the ``revoke`` role."""
        auth, requester = who(None, "revoke certificates")
        normal = normalize_serial(serial)  # NotFound (404) for anything that is not hex
        body = _parse(s.RevokeIn, required=True)
        assert isinstance(body, s.RevokeIn)
        revoke(
            auth,
            normal,
            body.reason,
            requester.name,
            requester=requester,
            comment=body.comment,
            after=after_revoke,
        )
        return _json(_certificate_out(auth, auth.db.get_certificate(normal), with_chain=False))

    # Profiles and CAs -----------------------------------------------------------------------

    @bp.get("/profiles")
    def list_profiles() -> Response:
        auth, requester = who(None, "list profiles")
        out = []
        for name, profile in sorted(auth.profiles.items()):
            if (
                requester.profiles
                and name not in requester.profiles
                and not requester.has_role("read")
            ):
                continue
            cfg = auth.config.profiles[name]
            out.append(
                s.ProfileOut(
                    name=name,
                    description=cfg.description,
                    issuer=profile.issuer,
                    key_types=sorted(profile.key_types),
                    validity_days=cfg.validity_days,
                    max_validity_days=cfg.max_validity_days,
                    dns_names=list(cfg.dns_names),
                    allow_wildcards=cfg.allow_wildcards,
                    ip_ranges=list(cfg.ip_ranges),
                    uri_patterns=list(cfg.uri_patterns),
                    email_patterns=list(cfg.email_patterns),
                    extended_key_usage=list(cfg.extended_key_usage),
                    key_usage=list(cfg.key_usage),
                    subject_attributes=list(cfg.subject_attributes),
                    common_name=cfg.common_name,
                    requires_approval=cfg.requires_approval,
                    sha256=profile.sha256,
                ).model_dump()
            )
        return _json_raw({"items": out})

    @bp.get("/cas")
    def list_cas() -> Response:
        auth, _ = who(None, "list CAs")
        rows = auth.db.list_cas()
        by_id = {r.id: r.name for r in rows}
        base = auth.config.server.public_base_url
        out = []
        for r in rows:
            cert = x509.load_der_x509_certificate(r.certificate_der)
            out.append(
                s.CaOut(
                    name=r.name,
                    subject=r.subject,
                    serial=r.serial,
                    key_type=r.key_type,
                    not_before=_rfc3339(r.not_before),
                    not_after=_rfc3339(r.not_after),
                    status=r.status,
                    parent=by_id.get(r.parent_id) if r.parent_id else None,
                    fingerprint_sha256=r.fingerprint_sha256,
                    certificate=cert.public_bytes(serialization.Encoding.PEM).decode(),
                    links=s.Links(self=f"{base}/ca/{r.name}.crt"),
                ).model_dump()
            )
        return _json_raw({"items": out})

    # Approvals ------------------------------------------------------------------------------

    @bp.get("/requests")
    def list_requests() -> Response:
        auth, requester = who(None, "list requests")
        unknown = set(request.args) - {"state", "limit"}
        if unknown:
            raise ApiProblem(
                "malformed", f"unknown query parameter(s): {', '.join(sorted(unknown))}"
            )
        state = request.args.get("state", "pending")
        if state not in _REQUEST_STATES:
            raise ApiProblem("malformed", f"state must be one of {', '.join(_REQUEST_STATES)}")
        limit = _int_arg("limit", auth.config.api.page_size, 1, 1000)
        own = None
        if not (requester.has_role("approve") or requester.has_role("read")):
            own = requester.name  # a requester sees their own requests only
        if state == "pending":
            expire_requests(auth)  # so nobody is shown a request that can no longer be approved
        rows = auth.db.requests_in_state(state, requester=own, limit=limit)
        return _json_raw({"items": [_request_out(r).model_dump() for r in rows]})

    @bp.get("/requests/<request_id>")
    def show_request(request_id: str) -> Response:
        auth, requester = who(None, "read requests")
        row = get_request(auth, _request_id(request_id))
        if row.requester != requester.name and not (
            requester.has_role("approve") or requester.has_role("read")
        ):
            raise NotFound(f"no enrollment request {row.id}")
        return _json(_request_out(row))

    @bp.post("/requests/<request_id>/approve")
    def approve_request(request_id: str) -> Response:
        auth, requester = who("approve", "approve requests")
        _parse(s.ApproveIn, required=False)
        _accept_for_certificate()
        issued = approve(
            auth, _request_id(request_id), requester, client_lookup(auth), issuer=queue().issue
        )
        return _issued_response(auth, issued)

    @bp.post("/requests/<request_id>/reject")
    def reject_request(request_id: str) -> Response:
        auth, requester = who(None, "reject requests")
        body = _parse(s.RejectIn, required=False)
        reason = body.reason if isinstance(body, s.RejectIn) else ""
        row = reject(auth, _request_id(request_id), requester, reason)
        return _json(_request_out(row))

    # Errors ---------------------------------------------------------------------------------

    @bp.errorhandler(Unauthorized)
    def unauthorized(exc: Unauthorized) -> Response:
        resp = problem_of("unauthorized", str(exc))
        resp.headers["WWW-Authenticate"] = 'Bearer realm="hsmca"'
        return resp

    @bp.errorhandler(ApiProblem)
    def api_problem(exc: ApiProblem) -> Response:
        return problem_of(exc.kind, str(exc), **exc.extra)

    @bp.errorhandler(CAError)
    def ca_error(exc: CAError) -> Response:
        resp = problem_for(exc)
        if resp.status_code >= 500:
            # The client sees a generic problem; the operator needs the real cause.
            log.error("api: %s %s failed: %s: %s", request.method, request.path, exc.kind, exc)
        return resp

    return bp


EnrollInModel = s.EnrollIn


# Helpers ---------------------------------------------------------------------------------------


def _parse(model: type[BaseModel], required: bool) -> BaseModel | None:
    """The JSON body as ``model``; problems for a wrong media type or malformed content."""
    raw = _body()
    if not raw.strip():
        if required:
            raise ApiProblem("malformed", "a JSON body is required")
        return model()
    mimetype = request.mimetype
    if mimetype != JSON:
        raise ApiProblem(
            "unsupportedMediaType", f"send the body as {JSON} (got {mimetype or 'no type'})"
        )
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ApiProblem("malformed", "the body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiProblem("malformed", f"the body is not valid JSON ({_first_line(exc)})") from None
    if not isinstance(data, dict):
        raise ApiProblem("malformed", "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ][:20]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        raise ApiProblem(
            "malformed", f"the body does not match the schema: {summary}", errors=errors
        ) from None


def _body() -> bytes:
    """The request body, or a ``tooLarge`` problem beyond ``[api] max_body_bytes``.

    werkzeug raises 413 for a declared Content-Length over the limit, but silently truncates a
    chunked body at the limit: a body that fills the limit is therefore refused too.
    """
    limit = current_app.config.get("MAX_CONTENT_LENGTH") or 0
    try:
        raw = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise ApiProblem("tooLarge", f"the body is over the limit of {limit} bytes") from None
    if limit and request.content_length is None and len(raw) >= limit:
        raise ApiProblem("tooLarge", f"the body is over the limit of {limit} bytes")
    return raw


def _audit_denial(auth: Authority, requester: str, exc: ApiProblem, profile: str = "") -> None:
    try:
        raw = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raw = b""  # never read: only its declared size is known
    size = request.content_length if exc.kind == "tooLarge" and request.content_length else len(raw)
    auth.audit(
        requester,
        "certificate.denied",
        profile or "-",
        {
            "profile": profile,
            "reason": str(exc) or exc.kind,
            "error": exc.kind,
            "request_bytes": size,
            "request_sha256": hashlib.sha256(raw).hexdigest() if exc.kind != "tooLarge" else None,
        },
    )
    metrics.certificate_denied(profile_label(auth, profile) if profile else "other", exc.kind)


def _accept_for_certificate() -> str:
    return _negotiate([JSON, PEM_CHAIN])


def _negotiate(offers: list[str]) -> str:
    """The best offer for the Accept header (JSON when absent); 406 when none fits."""
    if not request.headers.get("Accept"):
        return offers[0]
    best = request.accept_mimetypes.best_match(offers)
    if best is None:
        raise ApiProblem("notAcceptable", f"acceptable types: {', '.join(offers)}")
    return best


def _issued_response(
    auth: Authority, issued: IssuedCertificate, req: IssuanceRequest | None = None
) -> Response:
    location = f"/api/v1/certificates/{issued.serial}"
    if _negotiate([JSON, PEM_CHAIN]) == PEM_CHAIN:
        resp = Response(issued.pem_chain(), status=201, mimetype=PEM_CHAIN)
    else:
        # Built from what was just stored: no second database round trip on the hot path.
        row = _row_of(issued, req) if req is not None else auth.db.get_certificate(issued.serial)
        resp = _json(_certificate_out(auth, row, with_chain=True, issued=issued), 201)
    resp.headers["Location"] = location
    return resp


def _row_of(issued: IssuedCertificate, req: IssuanceRequest) -> CertificateRow:
    """The stored row of a certificate just issued, from what issuance already computed."""
    cert = issued.certificate
    metadata = dict(req.metadata or {})
    return CertificateRow(
        serial=issued.serial,
        issuer_id=0,
        issuer_name=issued.issuer,
        subject=cert.subject.rfc4514_string(),
        sans=list(issued.sans),
        key_type=issued.key_type,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        profile=issued.profile,
        requester=req.requester,
        status="issued",
        der=issued.der,
        fingerprint_sha256=issued.fingerprint_sha256,
        created_at=cert.not_valid_before_utc,
        owner=metadata.get("owner"),
        meta=metadata,
    )


def _certificate_out(
    auth: Authority,
    row: CertificateRow,
    with_chain: bool,
    issued: IssuedCertificate | None = None,
) -> s.CertificateOut:
    pem = _der_to_pem(row.der)
    base = auth.config.server.public_base_url
    chain = None
    if with_chain:
        chain = (
            "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in issued.chain)
            if issued is not None
            else _chain_pem(auth, row.issuer_name)
        )
    meta = {str(k): str(v) for k, v in row.meta.items()}
    return s.CertificateOut(
        serial=row.serial,
        status=row.status,
        profile=row.profile,
        issuer=row.issuer_name,
        subject=row.subject,
        sans=list(row.sans),
        key_type=row.key_type,
        not_before=_rfc3339(row.not_before),
        not_after=_rfc3339(row.not_after),
        requester=row.requester,
        owner=row.owner,
        metadata=meta,
        fingerprint_sha256=row.fingerprint_sha256,
        revoked_at=_rfc3339(row.revoked_at) if row.revoked_at else None,
        revocation_reason=(
            REASON_NAMES.get(row.revocation_reason or 0, "unspecified")
            if row.status == "revoked"
            else None
        ),
        certificate=pem,
        chain=chain,
        links=s.Links(
            self=f"/api/v1/certificates/{row.serial}",
            issuer=f"{base}/ca/{row.issuer_name}.crt",
        ),
    )


def _chain_pem(auth: Authority, issuer_name: str) -> str:
    try:
        loaded = auth.issuer_chain(issuer_name)
    except CAError:
        return ""
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in loaded)


def _request_out(row: RequestRow) -> s.RequestOut:
    return s.RequestOut(
        id=row.id,
        state=row.state,  # type: ignore[arg-type]
        requester=row.requester,
        profile=row.profile,
        validity_days=row.validity_days,
        metadata={str(k): str(v) for k, v in row.meta.items()},
        created_at=_rfc3339(row.created_at),
        expires_at=_rfc3339(row.expires_at),
        decided_by=row.decided_by,
        decided_at=_rfc3339(row.decided_at) if row.decided_at else None,
        reason=row.reason,
        serial=row.serial,
        links=s.Links(
            self=f"/api/v1/requests/{row.id}",
            chain=f"/api/v1/certificates/{row.serial}" if row.serial else None,
        ),
    )


def _request_id(value: str) -> str:
    if not re.fullmatch(r"req_[0-9a-f]{24}", value):
        raise NotFound(f"no enrollment request {value[:64]!r}")
    return value


def _duration(text: str) -> timedelta:
    match = _DURATION.match(text)
    if not match:
        raise ApiProblem("malformed", "expiring_within is a number and a unit: 14d, 12h or 30m")
    n, unit = int(match.group(1)), match.group(2)
    return {"d": timedelta(days=n), "h": timedelta(hours=n), "m": timedelta(minutes=n)}[unit]


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    value = request.args.get(name)
    if value is None:
        return default
    if not re.fullmatch(r"[0-9]{1,7}", value) or not low <= int(value) <= high:
        raise ApiProblem("malformed", f"{name} must be an integer from {low} to {high}")
    return int(value)


def _encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"c1:{last_id}".encode()).decode().rstrip("=")


def _decode_cursor(value: str | None) -> int:
    if value is None:
        return 0
    try:
        text = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
        tag, _, number = text.partition(":")
        if tag != "c1" or not number.isdigit() or len(number) > 18:
            raise ValueError
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiProblem("malformed", "cursor is not one this server handed out") from None


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status=status, mimetype=JSON)


def _json_raw(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, mimetype=JSON)


def _der_to_pem(der: bytes) -> str:
    b64 = base64.encodebytes(der).decode().replace("\n", "")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
