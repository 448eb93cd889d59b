"""What runs after a state change commits, wired once for the REST API and the CLI.

**After-revoke hooks**: each is called as ``hook(authority, revocation)`` once a revocation
(``ca.revocation.revoke`` / ``revoke_ca``) has committed, in the process that revoked. A hook
that raises is logged and reported; the revocation stands. The REST endpoint
``POST /api/v1/certificates/{serial}/revoke`` and ``hsmca revoke`` / ``hsmca ca revoke`` all take
their hooks from :func:`after_revoke_hooks`.

The CRLs need no hook: the scheduler's ``crl.publisher.run_once`` publishes them within
``[crl] revocation_delay_seconds``.
"""

from __future__ import annotations

from ca.revocation import AfterRevoke


def after_revoke_hooks() -> tuple[AfterRevoke, ...]:
    """The hooks to run after every revocation: the OCSP response is re-signed at once
    (DESIGN.md), so every worker answers ``revoked`` within its cache time (0.5 s)."""
    from ocsp import refresh_after_revoke

    return (refresh_after_revoke,)
