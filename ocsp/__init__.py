"""OCSP (RFC 6960, RFC 5019): delegated responders, pre-signed responses, the per-worker responder.

* ``ocsp.responders`` — one delegated responder certificate per active CA (key in the HSM),
  created and renewed by :func:`ocsp.responders.run_once` (a scheduler job).
* ``ocsp.presign`` — the pre-signed response of every unexpired certificate, refreshed by
  :func:`ocsp.presign.run_once` (a scheduler job); :func:`refresh_certificate` re-signs one now.
* ``ocsp.service`` — :class:`~ocsp.service.OcspService` answers request bytes in a web worker.
* ``ocsp.request`` parses requests; ``ocsp.der`` and ``ocsp.signer`` build and sign responses.

No Flask here: ``web/ocsp.py`` serves the endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

# Submodules are imported inside the functions below, not here: the scheduler imports
# ocsp.presign and ocsp.responders from two threads at once, and a package __init__ that imports
# its own submodules turns that into an import-lock cycle.
if TYPE_CHECKING:
    from ca.authority import Authority
    from ca.revocation import Revocation
    from ca.store.ocsp import StoredResponse
    from ocsp.presign import PresignReport
    from ocsp.responders import RespondersReport


@dataclass(frozen=True)
class SetupReport:
    responders: RespondersReport
    presigned: PresignReport


def set_up(auth: Authority, actor: str = "hsmca", now: datetime | None = None) -> SetupReport:
    """Create the missing responders and pre-sign every response (``hsmca init``)."""
    from ocsp import presign, responders

    when = now or auth.now()
    return SetupReport(responders.run_once(auth, when, actor), presign.run_once(auth, when))


def refresh_certificate(
    auth: Authority, serial: str, now: datetime | None = None
) -> StoredResponse:
    """Re-sign and store certificate ``serial``'s response now (see :mod:`ocsp.presign`)."""
    from ocsp.presign import refresh_certificate as refresh

    return refresh(auth, serial, now)


def refresh_after_revoke(auth: Authority, revoked: Revocation) -> None:
    """After-revoke hook (``web/hooks.py``): re-sign the revoked certificate's response now.

    A CA without a responder yet has no responses to refresh: nothing to do (the responder signs
    on demand once it exists, and never serves a response that disagrees with the certificate).
    """
    from ca.store import ocsp as store
    from ocsp.responders import current

    status = store.certificate_status(auth.db, revoked.serial)
    if status is None or current(store.responders(auth.db), status.issuer_id) is None:
        return
    refresh_certificate(auth, revoked.serial)


__all__ = ["SetupReport", "refresh_after_revoke", "refresh_certificate", "set_up"]
