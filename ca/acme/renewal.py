"""ACME Renewal Information (ARI, RFC 9773): certificate identifiers, suggested renewal
windows, and the ``replaces`` member of a new order.

**certID** (RFC 9773 §4.1): ``base64url(AKI keyIdentifier) "." base64url(serial)``, both
without padding, where the serial is the *content octets* of its DER INTEGER (so a serial
whose top bit is set starts with a 0x00 octet). :func:`build_cert_id` and
:func:`parse_cert_id` are pure; the parser is strict (DER-minimal, positive serial of at
most 20 octets, RFC 5280 §4.1.2.2), so one certificate has exactly one certID.

**Suggested window** (:func:`suggested_window`): from 2/3 to 3/4 of the validity period,
so a client renews with a quarter to a third of the validity left (a 90-day certificate:
days 60 to 67.5; a 24-hour one: hours 16 to 18). A revoked certificate gets a window that
ended an hour ago, which RFC 9773 §4.2 says means "renew now".

**replaces** (RFC 9773 §5, :func:`check_replaces`): the certID of a certificate this
account ordered over ACME, sharing at least one identifier with the new order and not
already replaced by another order that may still issue (``alreadyReplaced``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from ca.acme.errors import AcmeError, malformed
from ca.acme.jws import b64url_decode, b64url_encode
from ca.authority import serial_hex
from ca.errors import NotFound
from ca.store import acme as store
from ca.store.acme import AccountRow
from ca.store.db import CertificateRow, Database

#: RFC 5280 §4.1.2.2: conforming serials are at most 20 octets.
MAX_SERIAL_OCTETS = 20
#: A certID longer than this is not one of ours (AKI ≤ 64 octets, serial ≤ 20).
MAX_CERT_ID_CHARS = 128
#: How long clients should wait before asking again (RFC 9773 §4.3 ``Retry-After``).
RETRY_AFTER_SECONDS = 6 * 3600


# certID ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertId:
    """A parsed certID: the issuer's key identifier and the certificate serial."""

    key_identifier: bytes
    serial: int

    @property
    def serial_hex(self) -> str:
        """The serial as the store keeps it (lowercase hex, no leading zeros)."""
        return serial_hex(self.serial)


def serial_octets(serial: int) -> bytes:
    """The content octets of ``serial`` as a DER INTEGER (positive: a leading 0x00 when the
    top bit would be set)."""
    if serial < 0:
        raise ValueError("certificate serials are positive")
    return serial.to_bytes(serial.bit_length() // 8 + 1, "big")


def build_cert_id(key_identifier: bytes, serial: int) -> str:
    """The RFC 9773 certID of the certificate ``serial`` issued under ``key_identifier``."""
    return f"{b64url_encode(key_identifier)}.{b64url_encode(serial_octets(serial))}"


def parse_cert_id(text: object) -> CertId:
    """A certID parsed strictly; ``malformed`` (400) for anything else."""
    if not isinstance(text, str) or not text.isascii() or len(text) > MAX_CERT_ID_CHARS:
        raise malformed("the certID is not of the form base64url(AKI).base64url(serial)")
    aki_part, sep, serial_part = text.partition(".")
    if not sep or not aki_part or not serial_part:
        raise malformed("the certID is not of the form base64url(AKI).base64url(serial)")
    aki = b64url_decode(aki_part, "the certID's key identifier")
    octets = b64url_decode(serial_part, "the certID's serial")
    if not aki:
        raise malformed("the certID's key identifier is empty")
    if not octets or len(octets.lstrip(b"\x00")) > MAX_SERIAL_OCTETS:
        raise malformed("the certID's serial is empty or longer than 20 octets")
    if octets[0] & 0x80:
        raise malformed("the certID's serial is negative (certificate serials are positive)")
    if len(octets) > 1 and octets[0] == 0 and not octets[1] & 0x80:
        raise malformed("the certID's serial is not DER (a superfluous leading zero octet)")
    return CertId(aki, int.from_bytes(octets, "big"))


def key_identifier_of(cert: x509.Certificate) -> bytes | None:
    """The keyIdentifier of a certificate's AKI extension, or None."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    return aki.key_identifier


def cert_id_of(cert: x509.Certificate) -> str | None:
    """The certID of a certificate (None without an AKI keyIdentifier)."""
    kid = key_identifier_of(cert)
    return build_cert_id(kid, cert.serial_number) if kid else None


# Suggested window ------------------------------------------------------------------------------


def suggested_window(
    not_before: datetime, not_after: datetime, revoked: bool, now: datetime
) -> tuple[datetime, datetime]:
    """The renewal window (start, end), in whole seconds with end > start.

    Valid: 2/3 to 3/4 of the validity period. Revoked: from two hours to one hour ago, so
    clients renew at once.
    """
    if revoked:
        at = now.replace(microsecond=0)
        return at - timedelta(hours=2), at - timedelta(hours=1)
    lifetime = not_after - not_before
    start = (not_before + lifetime * 2 / 3).replace(microsecond=0)
    end = (not_before + lifetime * 3 / 4).replace(microsecond=0)
    return start, max(end, start + timedelta(seconds=1))  # RFC 9773 §4.2: end after start


# Finding the certificate -----------------------------------------------------------------------


def certificate_of(db: Database, cert_id: CertId) -> CertificateRow:
    """The stored certificate a certID names: its serial, issued under the AKI it names.

    ``malformed`` 404 when there is none (or the AKI is another issuer's).
    """
    try:
        row = db.get_certificate(cert_id.serial_hex)
    except NotFound:
        raise AcmeError("malformed", "no such certificate", 404) from None
    if key_identifier_of(x509.load_der_x509_certificate(row.der)) != cert_id.key_identifier:
        raise AcmeError("malformed", "no such certificate", 404)  # another issuer's serial
    return row


def cert_id_of_serial(db: Database, serial: str) -> str | None:
    """The certID of the stored certificate ``serial`` (for an order's ``replaces``)."""
    try:
        row = db.get_certificate(serial)
    except NotFound:
        return None
    return cert_id_of(x509.load_der_x509_certificate(row.der))


# replaces --------------------------------------------------------------------------------------


def replaced_by_live_order(statuses: Sequence[tuple[str, datetime]], now: datetime) -> bool:
    """Whether any order (status, expires) replacing a certificate may still issue: valid or
    processing, or pending/ready and not yet expired. An invalid one frees the certificate."""
    for status, expires in statuses:
        if status in ("valid", "processing"):
            return True
        if status in ("pending", "ready") and now < expires:
            return True
    return False


def check_replaces(
    db: Database,
    account: AccountRow,
    raw: object,
    identifiers: Sequence[dict[str, str]],
    now: datetime,
) -> str | None:
    """The serial a new order replaces (None without ``replaces``), checked (RFC 9773 §5).

    The certificate must exist and have been ordered over ACME by ``account`` (any other is
    ``malformed`` like an unknown one: it is not theirs to know of), must share an identifier
    with the new order (``malformed``) and must not be replaced already (``alreadyReplaced``).
    """
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise malformed("replaces must be a certID string (RFC 9773)")
    cert_id = parse_cert_id(raw)
    try:
        certificate_of(db, cert_id)
    except AcmeError:
        raise malformed("replaces names no certificate of this account") from None
    serial = cert_id.serial_hex
    order = store.order_of_certificate(db, serial)
    if order is None or order.account_id != account.id:
        raise malformed("replaces names no certificate of this account")
    old = {(i["type"], i["value"]) for i in order.identifiers}
    if not old & {(i["type"], i["value"]) for i in identifiers}:
        raise malformed("the order shares no identifier with the certificate it replaces")
    check_not_replaced(store.replacing_orders(db, serial), now)
    return serial


def check_not_replaced(statuses: Sequence[tuple[str, datetime]], now: datetime) -> None:
    """``alreadyReplaced`` if another order replacing the certificate may still issue."""
    if replaced_by_live_order(statuses, now):
        raise AcmeError("alreadyReplaced", "the certificate is already replaced by another order")
