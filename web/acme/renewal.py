"""ACME Renewal Information (RFC 9773): ``GET /acme/renewal-info/{certID}``.

A plain, unauthenticated GET (not POST-as-GET). The answer is the certificate's suggested
renewal window (:func:`ca.acme.renewal.suggested_window`) with ``Retry-After``; an unknown
certificate is 404 ``malformed``, a certID that does not parse 400 ``malformed``. The
directory's ``renewalInfo`` is the base URL; clients append ``/{certID}``.
"""

from __future__ import annotations

import json

from flask import Blueprint, Response

from ca.acme import renewal
from ca.acme.errors import malformed
from web.acme.http import AcmeHttp, rfc3339


def register(bp: Blueprint, h: AcmeHttp) -> None:
    """Add ``renewalInfo`` to ``bp`` and the directory."""
    h.directory["renewalInfo"] = "acme.renewal_info"

    @bp.get("/renewal-info", defaults={"cert_id": ""})
    @bp.get("/renewal-info/<cert_id>")
    def renewal_info(cert_id: str) -> Response:
        if not cert_id:
            raise malformed("append /{certID} to the renewalInfo URL (RFC 9773 §4.1)")
        a = h.auth()
        row = renewal.certificate_of(a.db, renewal.parse_cert_id(cert_id))
        start, end = renewal.suggested_window(
            row.not_before, row.not_after, row.status == "revoked", a.now()
        )
        body = {"suggestedWindow": {"start": rfc3339(start), "end": rfc3339(end)}}
        resp = Response(json.dumps(body), status=200, mimetype="application/json")
        resp.headers["Retry-After"] = str(renewal.RETRY_AFTER_SECONDS)
        resp.headers["Link"] = h.index_link()
        return resp
