"""ACME ``revokeCert`` (RFC 8555 §7.6): ``POST /acme/revoke-cert``.

Signed with a ``kid`` (the ordering account, or one authorized for every identifier of the
certificate) or with a ``jwk`` that is the certificate's own key; the rules are in
:mod:`ca.acme.revocation`. The after-revoke hooks are the REST API's (``web/hooks.py``), so
the OCSP response is re-signed before the answer.
"""

from __future__ import annotations

from flask import Blueprint, Response

from ca.acme import revocation
from ca.acme.errors import malformed
from ca.acme.jws import b64url_decode, verify
from web.acme.http import AcmeHttp
from web.hooks import after_revoke_hooks

#: A certificate larger than this is not one of ours.
MAX_CERTIFICATE_BYTES = 16384


def register(bp: Blueprint, h: AcmeHttp) -> None:
    """Add ``revokeCert`` to ``bp`` and the directory."""
    h.directory["revokeCert"] = "acme.revoke_cert"
    hooks = after_revoke_hooks()

    @bp.post("/revoke-cert")
    def revoke_cert() -> Response:
        jws = h.parse_request()
        if jws.kid is not None:
            account, key = h.verified_account(jws), None
        else:
            verify(jws)  # with its own jwk: the certificate's key, checked by the core
            account, key = None, jws.key
        payload = jws.json()
        encoded = payload.get("certificate")
        if not isinstance(encoded, str) or not encoded:
            raise malformed("revokeCert needs certificate (base64url DER)")
        if len(encoded) > MAX_CERTIFICATE_BYTES * 4 // 3 + 4:
            raise malformed("certificate is too large to be one of ours")
        der = b64url_decode(encoded, "certificate")
        revocation.revoke_certificate(
            h.auth(), der, payload.get("reason"), account=account, jwk_key=key, after=hooks
        )
        return h.reply(None, 200)
