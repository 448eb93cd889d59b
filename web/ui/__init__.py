"""The compliance view, ``/ui``: server-rendered pages for compliance officers and operators.

Sign-in for local users (``hsmca user add``), a dashboard, the audit event browser with chain
verification and export, and the certificate inventory with each certificate's audit trail.
Served on the HTTPS listener only (the plain-HTTP surface refuses ``/ui``); with ``[ui] enabled
= false`` every ``/ui`` path is 404.

Every response carries a strict Content-Security-Policy (no scripts at all, styles from this
origin only, no framing), ``Cache-Control: no-store`` and ``nosniff``. Templates are Jinja with
autoescaping, so event content such as ``<script>`` in a subject shows as text. Sessions and
CSRF: :mod:`web.ui.security`; pages: :mod:`web.ui.views`.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Flask, Response, abort, render_template, request
from werkzeug.exceptions import HTTPException

from ca.authority import Authority
from ca.errors import CAError, HsmUnavailable, NotFound, StoreError
from web.ui import views
from web.ui.security import (
    SESSION_ERROR,
    UiSessionInterface,
    check_csrf,
    csrf_token,
)

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_ERROR_CODES = (400, 401, 403, 404, 405, 413, 429, 500, 503)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def install_ui(app: Flask, authority: Callable[[], Authority]) -> None:
    """Register ``/ui`` on ``app`` with its session interface (sessions exist only under /ui)."""
    app.session_interface = UiSessionInterface(authority)
    app.register_blueprint(ui_blueprint(authority))


def ui_blueprint(authority: Callable[[], Authority]) -> Blueprint:
    """The ``/ui`` blueprint over the process's Authority."""
    bp = Blueprint(
        "ui",
        __name__,
        url_prefix="/ui",
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    )

    @bp.before_request
    def _gate() -> None:
        if not authority().config.ui.enabled:
            abort(404)
        if SESSION_ERROR in request.environ:
            abort(503, "the CA's database is unavailable; try again shortly")
        check_csrf()

    @bp.after_request
    def _headers(resp: Response) -> Response:
        resp.headers.update(SECURITY_HEADERS)
        return resp

    @bp.context_processor
    def _template_globals() -> dict[str, object]:
        return {"csrf_token": csrf_token}

    def _http_error(exc: HTTPException) -> tuple[str, int, dict[str, str]]:
        status = exc.code or 500
        headers = {"Retry-After": "5"} if status == 503 else {}
        message = exc.description if status < 500 or status == 503 else "internal error"
        return (
            render_template("ui/error.html", status=status, title=exc.name, message=message),
            status,
            headers,
        )

    # By code as well: the app's own 404/405 handlers (problem+json) would otherwise come first.
    bp.register_error_handler(HTTPException, _http_error)
    for code in _ERROR_CODES:
        bp.register_error_handler(code, _http_error)

    @bp.errorhandler(CAError)
    def _ca_error(exc: CAError) -> tuple[str, int, dict[str, str]]:
        if isinstance(exc, NotFound):
            status, title = 404, "Not Found"
        elif isinstance(exc, (HsmUnavailable, StoreError)):
            status, title = 503, "Service Unavailable"
        else:
            status, title = 400, "Bad Request"
        message = (
            str(exc) if status != 503 else "the CA is temporarily unavailable; try again shortly"
        )
        headers = {"Retry-After": "5"} if status == 503 else {}
        return (
            render_template("ui/error.html", status=status, title=title, message=message),
            status,
            headers,
        )

    views.register(bp, authority)

    @bp.route("/<path:_rest>", methods=["GET", "POST"])
    def _unknown(_rest: str) -> Response:
        # Unknown /ui paths get this view's 404 page (and headers), not the API's problem+json.
        abort(404)

    return bp
