"""The pages of ``/ui``: sign-in, dashboard, audit browser (verify, export), certificates.

Every page but sign-in needs a signed-in user (:func:`web.ui.security.signed_in`); both roles
see the same pages today, since nothing here changes the CA (auditor: read, verify, export;
operator: the same, until write actions exist).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import Blueprint, Response, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response as BaseResponse

from ca.audit_export import MEDIA_TYPE, bundle_chunks, record_export, resolve_range
from ca.authority import Authority, normalize_serial
from ca.revocation import REASON_NAMES
from ca.store.db import CertificateFilter
from ca.store.ui import (
    EXPIRY_WINDOWS,
    UserRow,
    certificate_counts,
    certificate_trail,
    distinct_actions,
    find_events,
)
from ca.users import actor_of, sign_in, sign_out
from web.ui.forms import (
    EXPIRY_CHOICES,
    PAGE_SIZE,
    STATUS_CHOICES,
    audit_form,
    certificate_form,
)
from web.ui.security import end_session, safe_next, session_user, signed_in, start_session
from web.ui.status import checkpoint_status, duration_text, full_verification, quick_check

log = logging.getLogger("hsmca.ui")

Page = str | tuple[str, int] | tuple[str, int, dict[str, str]] | BaseResponse


def register(bp: Blueprint, authority: Callable[[], Authority]) -> None:
    """Add the pages to ``bp``."""
    login_required = signed_in(authority)

    @bp.route("/login", methods=["GET", "POST"])
    def login() -> Page:
        """The sign-in form; POST checks it (rate-limited, audited)."""
        auth = authority()
        if request.method == "GET":
            if session_user(auth) is not None:
                return redirect(url_for("ui.dashboard"))
            expired = bool(session.pop("expired", False))
            return render_template(
                "ui/login.html", next=request.args.get("next", ""), expired=expired
            )
        name = (request.form.get("name") or "").strip()
        password = request.form.get("password") or ""
        target = request.form.get("next", "")
        if not name or not password:
            return _login_page("Enter your name and your password.", 400, name, target)
        outcome = sign_in(auth, name, password, request.remote_addr or "unknown")
        if outcome.outcome == "limited":
            log.warning(
                "ui sign-in refused by the rate limit (name %r, address %s)",
                name[:64],
                request.remote_addr,
            )
            minutes = max(1, (outcome.retry_after + 59) // 60)
            message = (
                "Too many failed sign-ins for this name or from this address. "
                f"Try again in {minutes} minute{'s' if minutes != 1 else ''}."
            )
            page, status = _login_page(message, 429, name, target)
            return page, status, {"Retry-After": str(outcome.retry_after)}
        if outcome.outcome != "ok" or outcome.user is None:
            return _login_page("Wrong name or password.", 401, name, target)
        start_session(outcome.user)
        return redirect(safe_next(target) or url_for("ui.dashboard"))

    @bp.post("/logout")
    def logout() -> BaseResponse:
        """Sign out (audited) and go back to the sign-in page."""
        auth = authority()
        user = session_user(auth)
        if user is not None:
            sign_out(auth, user.name, request.remote_addr or "unknown")
        end_session()
        return redirect(url_for("ui.login"))

    @bp.get("/", endpoint="dashboard")
    @bp.get("", endpoint="dashboard")  # registered first: url_for gives /ui
    @login_required
    def dashboard(user: UserRow) -> Page:
        """Certificates issued, revoked and expiring; chain status; last checkpoint."""
        auth = authority()
        now = auth.now()
        return render_template(
            "ui/dashboard.html",
            user=user,
            counts=certificate_counts(auth.db, now),
            windows=EXPIRY_WINDOWS,
            chain=quick_check(auth),
            checkpoint=checkpoint_status(auth, now),
            duration_text=duration_text,
            now=now,
        )

    @bp.get("/audit")
    @login_required
    def audit(user: UserRow) -> Page:
        """The audit event browser: filters, newest first, keyset pages by seq."""
        auth = authority()
        form = audit_form(request.args)
        page = None
        if not form.errors:
            page = find_events(auth.db, form.query, form.before, form.after, PAGE_SIZE)
        filters = {k: v for k, v in form.values.items() if v}
        body = render_template(
            "ui/audit.html",
            user=user,
            form=form,
            page=page,
            filters=filters,
            export_args={k: v for k, v in filters.items() if k in ("from", "to")},
            actions=distinct_actions(auth.db),
        )
        return (body, 400) if form.errors else body

    @bp.post("/audit/verify")
    @login_required
    def verify(user: UserRow) -> Page:
        """Verify the whole chain and show the outcome."""
        result = full_verification(authority())
        return render_template("ui/verify.html", user=user, result=result)

    @bp.get("/audit/export")
    @login_required
    def export(user: UserRow) -> Page:
        """Stream an export bundle of the chain, optionally of a time range (audited as
        ``audit.exported``, like the exports of the CLI and the API)."""
        auth = authority()
        form = audit_form(request.args)
        if form.errors:
            return render_template(
                "ui/error.html", status=400, title="Bad Request", message="; ".join(form.errors)
            ), 400
        until = form.until - timedelta(microseconds=1) if form.until else None  # inclusive end
        with auth.db.read() as conn:
            rng = resolve_range(conn, form.since, until)
        record_export(auth, actor_of(user.name), rng, via="ui")  # audited before any byte
        name = rng.filename()
        return Response(
            _stream(bundle_chunks(auth, rng)),
            mimetype=MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @bp.get("/certificates")
    @login_required
    def certificates(user: UserRow) -> Page:
        """The inventory: name, owner, status and expiry filters; pages by id."""
        auth = authority()
        form = certificate_form(request.args)
        rows, more = [], False
        now = auth.now()
        if not form.errors:
            flt = CertificateFilter(
                status=form.status,
                name=form.name,
                owner=form.owner,
                expiring_before=(
                    now + timedelta(days=form.expiring_days) if form.expiring_days else None
                ),
                now=now if form.expiring_days else None,
            )
            rows = auth.db.find_certificates(flt, after_id=form.after, limit=PAGE_SIZE + 1)
            more = len(rows) > PAGE_SIZE
            rows = rows[:PAGE_SIZE]
        body = render_template(
            "ui/certificates.html",
            user=user,
            form=form,
            rows=rows,
            more=more,
            now=now,
            filters={k: v for k, v in form.values.items() if v},
            statuses=STATUS_CHOICES,
            expiry_choices=EXPIRY_CHOICES,
        )
        return (body, 400) if form.errors else body

    @bp.get("/certificates/<serial>")
    @login_required
    def certificate(user: UserRow, serial: str) -> Page:
        """One certificate: details, PEM download and its whole audit trail."""
        auth = authority()
        row = auth.db.get_certificate(normalize_serial(serial))
        return render_template(
            "ui/certificate.html",
            user=user,
            cert=row,
            now=auth.now(),
            trail=certificate_trail(auth.db, row.serial),
            pem=_pem(row.der),
            reason=REASON_NAMES.get(row.revocation_reason or 0, str(row.revocation_reason)),
        )

    @bp.get("/certificates/<serial>/certificate.pem")
    @login_required
    def certificate_pem(user: UserRow, serial: str) -> BaseResponse:
        """The certificate as a PEM file."""
        row = authority().db.get_certificate(normalize_serial(serial))
        return Response(
            _pem(row.der),
            mimetype="application/x-pem-file",
            headers={"Content-Disposition": f'attachment; filename="{row.serial}.pem"'},
        )


def _login_page(message: str, status: int, name: str, target: str) -> tuple[str, int]:
    page = render_template("ui/login.html", error=message, name=name[:64], next=target)
    return page, status


def _pem(der: bytes) -> str:
    cert = x509.load_der_x509_certificate(der)
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _stream(chunks: Iterator[bytes]) -> Iterator[bytes]:
    # A failure mid-stream cannot become an error page any more: log it and cut the download
    # short (the bundle's manifest is then missing, so it never verifies).
    try:
        yield from chunks
    except Exception:
        log.exception("ui export failed while streaming")
        raise
