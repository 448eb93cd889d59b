"""RFC 9457 problem documents (``application/problem+json``)."""

from __future__ import annotations

import json

from flask import Response


def problem(status: int, title: str, detail: str, type_: str = "about:blank") -> Response:
    """A problem+json response; 5xx details stay generic so nothing internal leaks."""
    body = {"type": type_, "title": title, "status": status, "detail": detail}
    return Response(json.dumps(body), status=status, mimetype="application/problem+json")
