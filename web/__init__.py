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
from werkzeug.exceptions import HTTPException

from ca.authority import Authority
from ca.config import AppConfig, load_config
from ca.errors import CAError, HsmUnavailable, NotFound, StoreError
from web.acme import acme_blueprint, routing_problem
from web.crl import crl_blueprint
from web.metrics import freshness_checks, install_metrics
from web.ocsp import install as install_ocsp
from web.problems import problem, problem_of
from web.surface import Surface, check_surface, restrict_to_plain
from web.ui import install_ui


def create_app(
    config: AppConfig | None = None,
    authority_factory: Callable[[AppConfig], Authority] | None = None,
    surface: Surface = "all",
) -> Flask:
    """Build the app. ``config`` defaults to the data directory in ``HSMCA_HOME``.

    ``surface="plain"`` is the plain-HTTP listener's app: only /ca, /ocsp, /crl and health checks.
    """
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
    install_ocsp(app)  # POST /ocsp, GET /ocsp/{base64}: WSGI in front of Flask (web/ocsp.py)
    _register_api(app, authority, state, lock)
    app.register_blueprint(crl_blueprint(authority))  # /crl/NAME.crl, /crl/NAME/SHARD.crl
    app.register_blueprint(acme_blueprint(authority))  # /acme: RFC 8555 (web/acme)
    install_ui(app, authority)  # /ui: the compliance view (web/ui), sessions only there
    install_metrics(app, authority)  # /metrics: Prometheus (web/metrics.py, ca/metrics.py)
    if check_surface(surface) == "plain":
        restrict_to_plain(
            app, lambda: config or load_config(Path(os.environ.get("HSMCA_HOME", ".")))
        )

    @app.get("/healthz")
    def healthz() -> Response:
        """Liveness: the process answers."""
        return jsonify(status="ok")

    @app.get("/readyz")
    def readyz() -> Response | tuple[Response, int, dict[str, str]]:
        """Readiness: the database answers, the issuing CA's key is usable in the HSM, every CA's
        current CRL and its OCSP answers are fresh ([monitoring] limits). Each check is "ok" or
        says what is wrong; ``failed`` names the failing ones (503)."""
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
        checks.update(freshness_checks(auth))
        failed = [name for name, value in checks.items() if value != "ok"]
        if not failed:
            return jsonify(status="ok", checks=checks)
        body = jsonify(status="unavailable", failed=failed, checks=checks)
        return body, 503, {"Retry-After": "5"}

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

    def acme_routing(exc: HTTPException) -> Response | None:
        # Under /acme, ACME problems (with a nonce); the plain listener refuses /acme anyway.
        return routing_problem(exc) if surface == "all" else None

    @app.errorhandler(404)
    def not_found(exc: HTTPException) -> Response:
        return acme_routing(exc) or problem_of("notFound", "no such resource")

    @app.errorhandler(405)
    def not_allowed(exc: HTTPException) -> Response:
        return acme_routing(exc) or problem_of(
            "methodNotAllowed", "method not allowed on this resource"
        )

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


def _register_api(
    app: Flask, authority: Callable[[], Authority], state: dict[str, Any], lock: threading.Lock
) -> None:
    """The REST API with its per-process group-commit queue, body limit and problem handlers."""
    from werkzeug.exceptions import HTTPException

    from ca.batching import IssuanceQueue
    from web.api import api_blueprint
    from web.hooks import after_revoke_hooks
    from web.problems import problem_of

    def queue() -> IssuanceQueue:
        auth = authority()
        with lock:
            current = state.get("queue")
            if current is None or current.auth is not auth:
                api = auth.config.api
                current = IssuanceQueue(auth, api.batch_max, api.batch_window_ms / 1000)
                state["queue"] = current
            return current

    def body_limit() -> int:
        return int(authority().config.api.max_body_bytes)

    @app.before_request
    def _limit_body() -> None:
        # Flask reads MAX_CONTENT_LENGTH per request; set it from config lazily (after fork).
        app.config["MAX_CONTENT_LENGTH"] = state.get("max_body") or state.setdefault(
            "max_body", body_limit()
        )

    app.register_blueprint(api_blueprint(authority, queue, after_revoke_hooks()))
    by_status = {
        400: "malformed",
        401: "unauthorized",
        403: "forbidden",
        404: "notFound",
        405: "methodNotAllowed",
        406: "notAcceptable",
        409: "conflict",
        413: "tooLarge",
        415: "unsupportedMediaType",
    }

    @app.errorhandler(HTTPException)
    def http_problem(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status >= 500:
            return problem(status, "Internal Server Error", "internal error")
        kind = by_status.get(status)
        detail = exc.description or exc.name
        if kind is None:
            return problem(status, exc.name, detail)
        if status == 413:
            detail = f"the body is over the limit of {state.get('max_body', 0)} bytes"
        return problem_of(kind, detail)
