"""The OCSP endpoints: ``POST /ocsp`` and ``GET /ocsp/{base64}`` (RFC 6960 appendix A, RFC 5019).

They are a small WSGI layer in front of the Flask app rather than Flask routes: an OCSP request
is answered from a per-worker cache in a few microseconds, and Flask's request machinery would
cost several times that (see ``bench/ocsp.py``); it also spares the base64 path from URL routing
(slash merging, a leading ``/``). Every request to ``/ocsp`` or below is answered here and never
reaches Flask. The answer is always an ``application/ocsp-response`` with status 200, errors
included (``malformedRequest``, ``unauthorized``, ``tryLater``, ``internalError``), except for
HTTP-level mistakes: a body over ``[ocsp] max_request_bytes`` (413), a POST whose content type is
not ``application/ocsp-request`` (415), another method (405). Those get problem+json.

GET answers that are pre-signed carry the RFC 5019 section 6 caching headers: ``ETag``,
``Last-Modified`` (producedAt), ``Expires`` (nextUpdate), ``Cache-Control: max-age=N, public,
no-transform, must-revalidate`` with N the seconds until the response is due to be re-signed
(never past nextUpdate); ``If-None-Match`` gets a 304.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes
from wsgiref.handlers import format_date_time

from ca import metrics
from ca.authority import Authority
from ocsp.service import INTERNAL_ERROR, OcspService, Reply
from web.problems import KINDS, TYPE_PREFIX

log = logging.getLogger(__name__)

PREFIX = "/ocsp"
REQUEST_TYPE = "application/ocsp-request"
RESPONSE_TYPE = "application/ocsp-response"

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class OcspMiddleware:
    """WSGI: answers ``/ocsp`` and ``/ocsp/…`` itself and passes every other request to ``app``."""

    def __init__(self, app: WsgiApp, authority: Callable[[], Authority]) -> None:
        self.app = app
        self._authority = authority
        self._lock = threading.Lock()
        self._service: OcspService | None = None
        self._pid = 0

    def service(self) -> OcspService:
        """This process's responder, rebuilt when the Authority changes (after a fork)."""
        auth = self._authority()
        service = self._service
        if service is not None and service.auth is auth and self._pid == os.getpid():
            return service
        with self._lock:
            if self._service is None or self._service.auth is not auth:
                self._service = OcspService(auth)
                self._pid = os.getpid()
            return self._service

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return self.app(environ, start_response)
        try:
            status, headers, body = self.handle(environ)
        except Exception:  # never a 500: the client gets an OCSP internalError
            log.exception("OCSP: request failed")
            metrics.ocsp_answered("internalError")
            status, headers, body = "200 OK", _ocsp_headers(len(INTERNAL_ERROR)), INTERNAL_ERROR
        start_response(status, headers)
        return [body]

    def handle(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        if method == "POST" and path in (PREFIX, PREFIX + "/"):
            return self._post(environ)
        if method in ("GET", "HEAD") and path.startswith(PREFIX + "/") and len(path) > 6:
            status, headers, body = self._get(environ)
            return status, headers, b"" if method == "HEAD" else body
        allowed = "POST" if path in (PREFIX, PREFIX + "/") else "GET, HEAD"
        return _problem(
            405,
            "methodNotAllowed",
            f"{method} is not allowed here: POST {PREFIX} or GET {PREFIX}/{{base64 request}}",
            [("Allow", allowed)],
        )

    def _post(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        service = self.service()
        limit = service.config.max_request_bytes
        ctype = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        if ctype != REQUEST_TYPE:
            return _problem(
                415,
                "unsupportedMediaType",
                f"an OCSP request is sent as {REQUEST_TYPE}, not {ctype or 'no content type'}",
            )
        length_text = environ.get("CONTENT_LENGTH") or ""
        stream = environ["wsgi.input"]
        if length_text:
            try:
                length = int(length_text)
            except ValueError:
                return _problem(400, "malformed", "bad Content-Length")
            if length > limit:
                return _too_large(limit)
            body = stream.read(length) if length > 0 else b""
        else:  # chunked or unknown length: read one byte past the limit to detect an overrun
            body = stream.read(limit + 1)
            if len(body) > limit:
                return _too_large(limit)
        reply = service.respond(body)
        _count(reply, service)
        headers = _ocsp_headers(len(reply.body))
        headers.append(("Cache-Control", "no-store"))
        return "200 OK", headers, reply.body

    def _get(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        service = self.service()
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
        if raw.startswith(PREFIX + "/"):
            encoded = unquote_to_bytes(raw[len(PREFIX) + 1 :].split("?", 1)[0])
        else:  # no raw URI from the server: PATH_INFO is already percent-decoded (latin-1)
            encoded = environ.get("PATH_INFO", "")[len(PREFIX) + 1 :].encode("latin-1")
        limit = service.config.max_request_bytes
        if len(encoded) > (limit * 4) // 3 + 4:
            return _too_large(limit)
        data = decode_base64(encoded)
        reply = service.respond(data) if data is not None else service.malformed("bad base64")
        headers = _ocsp_headers(len(reply.body))
        if not reply.cacheable:
            _count(reply, service)
            headers.append(("Cache-Control", "no-store"))
            return "200 OK", headers, reply.body
        now = service.auth.now()
        _count(reply, service, now)
        headers += caching_headers(reply, now, service.config.refresh_hours)
        if _etag_matches(environ.get("HTTP_IF_NONE_MATCH", ""), reply.etag):
            return "304 Not Modified", [h for h in headers if h[0] != "Content-Length"], b""
        return "200 OK", headers, reply.body


def _count(reply: Reply, service: OcspService, now: datetime | None = None) -> None:
    """Count the reply by status; a pre-signed one also by age (now - thisUpdate)."""
    if reply.this_update is None:
        metrics.ocsp_answered(reply.status)
        return
    now = now or service.auth.now()
    metrics.ocsp_answered(reply.status, (now - reply.this_update).total_seconds())


def decode_base64(encoded: bytes) -> bytes | None:
    """Standard or URL-safe base64, padding optional, whitespace ignored; None if invalid."""
    text = bytes(encoded).strip().replace(b" ", b"+")  # a '+' decoded as a space by a client
    text = text.replace(b"-", b"+").replace(b"_", b"/").rstrip(b"=")
    if not text or len(text) % 4 == 1:
        return None
    try:
        return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def caching_headers(reply: Reply, now: datetime, refresh_hours: int) -> list[tuple[str, str]]:
    """RFC 5019 section 6.2 headers of a pre-signed response served over GET."""
    assert reply.next_update is not None and reply.produced_at is not None
    due = min(reply.next_update, reply.produced_at + timedelta(hours=refresh_hours))
    max_age = max(0, int((due - now).total_seconds()))
    return [
        ("ETag", reply.etag),
        ("Last-Modified", _http_date(reply.produced_at)),
        ("Expires", _http_date(reply.next_update)),
        ("Cache-Control", f"max-age={max_age}, public, no-transform, must-revalidate"),
    ]


def _http_date(when: datetime) -> str:
    return format_date_time(when.astimezone(UTC).timestamp())


def _etag_matches(header: str, etag: str) -> bool:
    if not header or not etag:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def _ocsp_headers(length: int) -> list[tuple[str, str]]:
    return [("Content-Type", RESPONSE_TYPE), ("Content-Length", str(length))]


def _too_large(limit: int) -> tuple[str, list[tuple[str, str]], bytes]:
    return _problem(413, "tooLarge", f"an OCSP request is at most {limit} bytes")


def _problem(
    status: int, kind: str, detail: str, extra: list[tuple[str, str]] | None = None
) -> tuple[str, list[tuple[str, str]], bytes]:
    metrics.ocsp_answered(kind)
    _, slug, title = KINDS[kind]
    body = json.dumps(
        {"type": TYPE_PREFIX + slug, "title": title, "status": status, "detail": detail}
    ).encode("utf-8")
    headers = [
        ("Content-Type", "application/problem+json"),
        ("Content-Length", str(len(body))),
        ("Connection", "close") if status == 413 else ("Cache-Control", "no-store"),
        *(extra or []),
    ]
    return f"{status} {HTTPStatus(status).phrase}", headers, body


def install(app: Any) -> None:
    """Put the OCSP endpoints in front of a Flask app made by :func:`web.create_app`."""
    app.wsgi_app = OcspMiddleware(app.wsgi_app, app.extensions["hsmca.authority"])
