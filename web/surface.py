"""The plain-HTTP surface: what ``hsmca serve`` answers on its unencrypted listener.

RFC 5280 clients fetch CA certificates (AIA), OCSP responses and CRLs over http, so those are served
there, beside the health checks and metrics. Everything else (the REST API, ACME, the UI, and any
path added later) is refused with a 403 problem document pointing to the HTTPS listener: an
allow-list, so a new blueprint is never reachable in clear text by accident.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

from flask import Flask, Response, request

from ca.config import AppConfig
from web.problems import problem

Surface = Literal["all", "plain"]
SURFACES: tuple[Surface, ...] = ("all", "plain")

#: Exact paths and path prefixes the plain listener serves.
PLAIN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/ocsp"})
PLAIN_PREFIXES = ("/ca/", "/ocsp/", "/crl/")

HTTPS_REQUIRED = "urn:hsmca:problem:https-required"


def check_surface(surface: str) -> Surface:
    """``surface`` if it is one of :data:`SURFACES`; ValueError otherwise."""
    for known in SURFACES:
        if surface == known:
            return known
    raise ValueError(f"unknown surface {surface!r} (use one of {', '.join(SURFACES)})")


def plain_allows(path: str) -> bool:
    """Whether the plain-HTTP listener serves ``path``."""
    return path in PLAIN_PATHS or path.startswith(PLAIN_PREFIXES)


def restrict_to_plain(app: Flask, config: Callable[[], AppConfig]) -> None:
    """Refuse, with 403 problem+json, every request the plain listener must not serve."""
    load = functools.cache(config)

    @app.before_request
    def _plain_only() -> Response | None:
        if plain_allows(request.path):
            return None
        https_bind = load().server.https_bind
        if not https_bind:
            detail = (
                "this plain-HTTP listener serves only CA certificates, OCSP, CRLs and health "
                "checks; the API is served over HTTPS only, which is disabled on this server"
            )
        else:
            detail = (
                "this plain-HTTP listener serves only CA certificates, OCSP, CRLs and health "
                f"checks; use {https_url(https_bind, request.host, request.path)}"
            )
        return problem(403, "HTTPS required", detail, HTTPS_REQUIRED)


def https_url(https_bind: str, request_host: str, path: str) -> str:
    """The HTTPS URL of ``path``: the host the client used, the port of the HTTPS listener."""
    host = request_host
    if host.startswith("["):  # [IPv6]:port
        host = host[: host.find("]") + 1]
    elif host.count(":") == 1:  # name:port
        host = host.partition(":")[0]
    port = https_bind.rpartition(":")[2]
    if not port.isdigit():  # unix:PATH (behind a proxy): the client knows the URL better
        return f"https://{host}{path}"
    return f"https://{host}{'' if port == '443' else ':' + port}{path}"
