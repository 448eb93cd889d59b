"""ACME revokeCert (RFC 8555 §7.6): who may revoke a certificate, and the revocation.

A request is authorized in one of three ways (:func:`may_revoke`, pure):

- ``account``: signed with the ``kid`` of the account that ordered the certificate;
- ``authz``: signed with the ``kid`` of an account holding valid, unexpired authorizations for
  every identifier (SAN dNSName and iPAddress) in the certificate;
- ``certkey``: signed with a ``jwk`` that is the certificate's own public key.

Anything else is ``unauthorized`` (403) and audited as ``acme.revocation.denied``. The
revocation itself goes through :func:`ca.revocation.revoke` (status and audit event in one
transaction, then the after-revoke hooks that re-sign the OCSP response), with the actor
``acme:{account id}`` (account and authz modes) or ``acme-certkey:{serial}`` and a comment
naming the mode.

Reasons are RFC 5280 CRLReason codes an end-entity certificate may be revoked for
(:data:`ca.revocation.LEAF_REASONS`); 7 (unused), certificateHold, removeFromCRL,
cACompromise, aACompromise and anything out of range are ``badRevocationReason``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from ca.acme.errors import AcmeError, malformed
from ca.acme.jws import AccountKey
from ca.authority import Authority, serial_hex
from ca.errors import Conflict, NotFound
from ca.hierarchy import SUBORDINATE_PROFILE
from ca.revocation import LEAF_REASONS, REASON_CODES, AfterRevoke, Revocation, revoke
from ca.store import acme as store
from ca.store.acme import AccountRow

Mode = Literal["account", "authz", "certkey"]
Identifier = tuple[str, str]

#: What each mode means, for the audit comment.
MODE_COMMENTS: dict[str, str] = {
    "account": "ACME revokeCert by the account that ordered the certificate",
    "authz": "ACME revokeCert by an account authorized for every identifier of the certificate",
    "certkey": "ACME revokeCert signed with the certificate's own key",
}
#: The codes ACME clients may ask for (an end-entity certificate's reasons).
ALLOWED_CODES: dict[int, str] = {REASON_CODES[name]: name for name in LEAF_REASONS}


# Pure rules ------------------------------------------------------------------------------------


def check_reason(raw: object) -> str:
    """The reason name for the payload's ``reason`` (absent: unspecified)."""
    if raw is None:
        return "unspecified"
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise malformed("reason must be an RFC 5280 CRLReason code (an integer)")
    name = ALLOWED_CODES.get(raw)
    if name is None:
        allowed = ", ".join(f"{code} ({n})" for code, n in sorted(ALLOWED_CODES.items()))
        raise AcmeError(
            "badRevocationReason",
            f"revocation reason {raw} is not accepted; use one of {allowed}",
        )
    return name


def certificate_identifiers(cert: x509.Certificate) -> frozenset[Identifier]:
    """The certificate's SAN dNSNames (lowercased) and iPAddresses, as ACME identifiers."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    dns = {("dns", name.lower()) for name in san.get_values_for_type(x509.DNSName)}
    ips = {("ip", str(ip)) for ip in san.get_values_for_type(x509.IPAddress)}
    return frozenset(dns | ips)


def may_revoke(
    *,
    signer_account: int | None,
    signer_spki: bytes | None,
    owner_account: int | None,
    cert_spki: bytes,
    cert_identifiers: frozenset[Identifier],
    authorized: frozenset[Identifier],
) -> Mode:
    """Which RFC 8555 §7.6 mode authorizes this revocation; ``unauthorized`` if none.

    ``signer_account``: the account of a ``kid`` request (None for ``jwk``); ``signer_spki``:
    the SubjectPublicKeyInfo of a ``jwk`` request's key; ``owner_account``: the account that
    ordered the certificate (None if it was not issued over ACME); ``authorized``: the
    identifiers ``signer_account`` holds valid, unexpired authorizations for.
    """
    if signer_account is not None:
        if owner_account == signer_account:
            return "account"
        if cert_identifiers and cert_identifiers <= authorized:
            return "authz"
        missing = sorted(f"{k}:{v}" for k, v in cert_identifiers - authorized)
        raise AcmeError(
            "unauthorized",
            "this account did not order the certificate and holds no valid authorization for "
            + (", ".join(missing[:10]) or "its identifiers"),
        )
    if signer_spki is not None and signer_spki == cert_spki:
        return "certkey"
    raise AcmeError(
        "unauthorized",
        "a revocation signed with a jwk must be signed with the certificate's own key",
    )


def spki(key: CertificatePublicKeyTypes) -> bytes:
    """The DER SubjectPublicKeyInfo of a public key."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# The operation ---------------------------------------------------------------------------------


def revoke_certificate(
    auth: Authority,
    der: bytes,
    raw_reason: object,
    *,
    account: AccountRow | None,
    jwk_key: AccountKey | None,
    after: Sequence[AfterRevoke] = (),
) -> Revocation:
    """Revoke the certificate ``der`` for a verified ACME request.

    ``account``: the account of a ``kid`` request; ``jwk_key``: the public key of a verified
    ``jwk`` request. ``malformed`` 404 for a certificate this CA did not issue (or not these
    bytes), ``unauthorized`` (audited), ``alreadyRevoked``, ``badRevocationReason``.
    """
    reason = check_reason(raw_reason)
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise malformed("certificate is not a DER X.509 certificate") from None
    serial = serial_hex(cert.serial_number) if cert.serial_number > 0 else ""
    try:
        row = auth.db.get_certificate(serial) if serial else None
    except NotFound:
        row = None
    if row is None or row.der != der:
        raise AcmeError("malformed", "no such certificate", 404)
    owner = store.order_of_certificate(auth.db, serial)
    now = auth.now()
    # A denied jwk request is not the certificate's key: name the key that asked instead.
    actor = f"acme:{account.id}" if account is not None else "acme-jwk"
    try:
        if row.profile == SUBORDINATE_PROFILE:
            raise AcmeError("unauthorized", "a CA certificate is revoked by the CA operator")
        mode = may_revoke(
            signer_account=account.id if account is not None else None,
            signer_spki=spki(jwk_key) if jwk_key is not None else None,
            owner_account=owner.account_id if owner is not None else None,
            cert_spki=spki(cert.public_key()),
            cert_identifiers=certificate_identifiers(cert),
            authorized=(
                store.valid_authz_identifiers(auth.db, account.id, now)
                if account is not None
                else frozenset()
            ),
        )
    except AcmeError as exc:
        auth.audit(
            actor,
            "acme.revocation.denied",
            serial,
            {
                "serial": serial,
                "reason": exc.detail,
                "requested_reason": reason,
                **({"jwk_spki_sha256": _sha256(spki(jwk_key))} if jwk_key is not None else {}),
            },
        )
        raise
    if row.status == "revoked":
        raise _already_revoked(row.revoked_at)
    if mode == "certkey":
        actor = f"acme-certkey:{serial}"
    try:
        return revoke(auth, serial, reason, actor, comment=MODE_COMMENTS[mode], after=after)
    except Conflict:
        raise _already_revoked(auth.db.get_certificate(serial).revoked_at) from None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _already_revoked(when: datetime | None) -> AcmeError:
    at = f" at {when:%Y-%m-%dT%H:%M:%SZ}" if when else ""
    return AcmeError("alreadyRevoked", f"the certificate was already revoked{at}")
