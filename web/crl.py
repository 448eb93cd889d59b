"""CRLs over plain HTTP: ``/crl/NAME.crl``, or ``/crl/NAME/SHARD.crl`` for a partitioned CRL.

The newest published CRL, as DER (``application/pkix-crl``, RFC 2585), with:

* ``ETag``: the SHA-256 of the DER; ``Last-Modified``: its thisUpdate;
* ``Cache-Control: public, max-age=N``: until the next scheduled publication, never beyond
  nextUpdate (a CRL after a revocation may come sooner: clients that need it sooner revalidate);
* ``304 Not Modified`` for a matching ``If-None-Match``, or (without one) ``If-Modified-Since``
  not older than thisUpdate; the DER is only read from the database when it is sent.

Publication is the scheduler's job (``crl.publisher``): before the first one, 503 with
Retry-After. Unknown CAs and partitions are 404 problem documents.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from flask import Blueprint, Response, request

from ca.authority import Authority
from ca.errors import NotFound
from ca.store import crls
from crl.publisher import refresh_interval
from web.problems import problem_of

PKIX_CRL = "application/pkix-crl"
_SHARD = re.compile(r"^(0|[1-9][0-9]{0,3})$")
#: Retry-After before the first CRL of a CA is published (the scheduler runs about every minute).
FIRST_CRL_RETRY_SECONDS = 60


def crl_blueprint(authority: Callable[[], Authority]) -> Blueprint:
    bp = Blueprint("crl", __name__)

    @bp.get("/crl/<name>.crl")
    def full_crl(name: str) -> Response:
        """The CA's CRL (when it is not partitioned)."""
        return _serve(authority(), name, None)

    @bp.get("/crl/<name>/<shard>.crl")
    def partition(name: str, shard: str) -> Response:
        """One partition of the CA's CRL (``[crl] shards`` > 1)."""
        if not _SHARD.match(shard):
            return problem_of("notFound", f"no CRL partition {shard[:16]!r} of CA {name[:64]!r}")
        return _serve(authority(), name, int(shard))

    return bp


def _serve(auth: Authority, name: str, shard: int | None) -> Response:
    try:
        ca = auth.db.get_ca(name)
    except NotFound:
        return problem_of("notFound", f"no CA named {name[:64]!r}")
    count = auth.urls_for(name).crl_shards
    if shard is None and count > 1:
        return problem_of(
            "notFound",
            f"the CRL of CA {name!r} is partitioned: /crl/{name}/0.crl to /crl/{name}/{count - 1}.crl "
            "(a certificate's CRL distribution point names its partition)",
        )
    if shard is not None and (count == 1 or shard >= count):
        where = f"/crl/{name}.crl" if count == 1 else f"partitions 0 to {count - 1}"
        return problem_of("notFound", f"CA {name!r} has no CRL partition {shard} (see {where})")
    meta = crls.latest_crl(auth.db, ca.id, shard or 0)
    if meta is None:
        resp = problem_of("unavailable", f"no CRL of CA {name!r} has been published yet")
        resp.headers["Retry-After"] = str(FIRST_CRL_RETRY_SECONDS)
        return resp
    now = datetime.now(UTC)
    fresh_until = min(meta.created_at + refresh_interval(auth, ca), meta.next_update)
    max_age = max(0, int((fresh_until - now) / timedelta(seconds=1)))
    headers = {
        "ETag": f'"{meta.sha256}"',
        "Last-Modified": _http_date(meta.this_update),
        "Cache-Control": f"public, max-age={max_age}, no-transform",
    }
    if _not_modified(meta.sha256, meta.this_update):
        return Response(status=304, headers=headers)
    return Response(crls.crl_der(auth.db, meta.id), mimetype=PKIX_CRL, headers=headers)


def _not_modified(etag: str, this_update: datetime) -> bool:
    """RFC 9110 13.2.2: If-None-Match (weak comparison) wins over If-Modified-Since."""
    if request.headers.get("If-None-Match"):
        tags = request.if_none_match
        return bool(tags.star_tag or tags.contains_weak(etag))
    since = request.if_modified_since
    return since is not None and this_update <= since


def _http_date(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
