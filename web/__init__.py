"""The web layer: a Flask app factory with nothing done at import time.

For now it serves health checks and the CA certificates (AIA caIssuers); REST, ACME, OCSP and CRL
blueprints join later. The :class:`ca.authority.Authority` is built lazily in each worker process,
after gunicorn forks, so no HSM session crosses a fork.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import Flask, Response, jsonify

from ca.authority import Authority
from ca.config import AppConfig, load_config
from ca.errors import CAError, HsmUnavailable, NotFound, StoreError
from web.problems import problem


def create_app(
    config: AppConfig | None = None,
    authority_factory: Callable[[AppConfig], Authority] | None = None,
) -> Flask:
    """Build the app. ``config`` defaults to the data directory in ``HSMCA_HOME``."""
    app = Flask("hsmca")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    state: dict[str, Any] = {}
    lock = threading.Lock()

    def authority() -> Authority:
        # One Authority per process: rebuilt if this process is a fork of the one that built it.
        with lock:
            current = state.get("authority")
            if current is None or state.get("pid") != os.getpid():
                cfg = config or load_config(Path(os.environ.get("HSMCA_HOME", ".")))
                current = (authority_factory or Authority.from_config)(cfg)
                state.update(authority=current, pid=os.getpid())
            return current

    app.extensions["hsmca.authority"] = authority

    @app.get("/healthz")
    def healthz() -> Response:
        """Liveness: the process answers."""
        return jsonify(status="ok")

    @app.get("/readyz")
    def readyz() -> Response | tuple[Response, int, dict[str, str]]:
        """Readiness: the database answers and the issuing CA's key is usable in the HSM."""
        auth = authority()
        checks: dict[str, str] = {}
        try:
            auth.db.list_cas()
            checks["database"] = "ok"
        except StoreError as exc:
            checks["database"] = str(exc)
        try:
            auth.issuer(auth.config.ca.default_issuer)
            checks["hsm"] = "ok"
        except HsmUnavailable as exc:
            checks["hsm"] = str(exc)
        except CAError as exc:
            checks["hsm"] = str(exc)
        if all(v == "ok" for v in checks.values()):
            return jsonify(status="ok", checks=checks)
        return jsonify(status="unavailable", checks=checks), 503, {"Retry-After": "5"}

    @app.get("/ca/<name>.crt")
    def ca_der(name: str) -> Response:
        """The CA certificate as DER (the AIA caIssuers URL of certificates it issued)."""
        cert = _ca_certificate(authority(), name)
        return _cert_response(
            cert.public_bytes(serialization.Encoding.DER), "application/pkix-cert"
        )

    @app.get("/ca/<name>.pem")
    def ca_pem(name: str) -> Response:
        """The CA certificate as PEM."""
        cert = _ca_certificate(authority(), name)
        return _cert_response(
            cert.public_bytes(serialization.Encoding.PEM), "application/x-pem-file"
        )

    @app.errorhandler(CAError)
    def ca_error(exc: CAError) -> Response:
        if isinstance(exc, NotFound):
            return problem(404, "Not Found", str(exc))
        if isinstance(exc, (HsmUnavailable, StoreError)):
            resp = problem(503, "Service Unavailable", "the CA is temporarily unavailable")
            resp.headers["Retry-After"] = "5"
            return resp
        return problem(400, "Bad Request", str(exc))

    @app.errorhandler(404)
    def not_found(_exc: Exception) -> Response:
        return problem(404, "Not Found", "no such resource")

    @app.errorhandler(405)
    def not_allowed(_exc: Exception) -> Response:
        return problem(405, "Method Not Allowed", "method not allowed on this resource")

    @app.errorhandler(500)
    def internal(_exc: Exception) -> Response:
        return problem(500, "Internal Server Error", "internal error")

    return app


def _ca_certificate(auth: Authority, name: str) -> x509.Certificate:
    row = auth.db.get_ca(name)
    return x509.load_der_x509_certificate(row.certificate_der)


def _cert_response(body: bytes, mimetype: str) -> Response:
    resp = Response(body, mimetype=mimetype)
    resp.headers["Cache-Control"] = "public, max-age=3600"
    return resp
