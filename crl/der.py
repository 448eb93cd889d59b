"""The fast path for large CRLs: the revokedCertificates list written as DER by hand.

cryptography's ``CertificateRevocationListBuilder`` needs a ``RevokedCertificate`` object per
entry and re-encodes the whole list; for a million entries that is about 5 s and 470 MB
(``bench/crl.py``), over the 3 s target. Here only the entries are hand-written: everything else
(version, signature algorithm, issuer, thisUpdate, nextUpdate, the CRL extensions) comes from a
CRL that cryptography built and the HSM signed with no entries (the *template*), and the list is
spliced into its TBSCertList before the extensions. The result is byte-for-byte what the builder
produces for the same input (``tests/unit/test_crl_der.py`` compares them), and it is signed by
the same key the builder would use.

An entry (RFC 5280 5.1.2.6)::

    SEQUENCE { userCertificate INTEGER, revocationDate Time,
               crlEntryExtensions SEQUENCE { reasonCode } OPTIONAL }

is at most 54 bytes (a serial of at most 20 octets), so every entry length fits in one byte.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ca.keys import IssuerKey, SigningHash

#: ``(serial, revocationDate as Unix seconds, reasonCode)``; reason 0 (unspecified) is omitted.
Entry = tuple[int, int, int]

#: The reason codes a CRL entry may carry (RFC 5280 5.3.1; 7 is unused).
REASON_CODES = frozenset({0, 1, 2, 3, 4, 5, 6, 8, 9, 10})

# Extensions ::= SEQUENCE { Extension { extnID id-ce-cRLReasons, extnValue OCTET STRING {
#   ENUMERATED code } } }; criticality FALSE is the DEFAULT and therefore absent in DER.
_REASON_EXTENSION = [
    b"" if code == 0 else bytes.fromhex("300c300a0603551d1504030a01") + bytes((code,))
    for code in range(11)
]
# "HHMMSSZ" for every second of a day: times are assembled from a day part and this.
_SECONDS_OF_DAY = [
    b"%02d%02d%02dZ" % (second // 3600, second // 60 % 60, second % 60) for second in range(86400)
]
_DAY = 86400


def _day_prefix(day: int) -> bytes:
    """Tag, length and date of a Time for day ``day`` (days since the epoch): UTCTime before 2050."""
    moment = datetime.fromtimestamp(day * _DAY, UTC)
    if 1950 <= moment.year < 2050:
        return b"\x17\x0d" + moment.strftime("%y%m%d").encode()
    return b"\x18\x0f" + moment.strftime("%Y%m%d").encode()


def encode_entries(entries: Iterable[Entry]) -> bytearray:
    """The contents (without tag and length) of ``revokedCertificates``, entries in the given order.

    Raises ValueError for a serial that is not positive or longer than 20 octets, a reason code
    RFC 5280 does not define, or a date before 1950.
    """
    out = bytearray()
    days: dict[int, bytes] = {}
    reasons = _REASON_EXTENSION
    seconds = _SECONDS_OF_DAY
    for serial, when, reason in entries:
        size = serial.bit_length() // 8 + 1  # one more octet than needed when the top bit is set
        if serial <= 0 or size > 20:
            raise ValueError(f"serial {serial:#x} is not a positive integer of at most 20 octets")
        if reason not in REASON_CODES:
            raise ValueError(f"{reason} is not an RFC 5280 reason code")
        day, second = divmod(when, _DAY)
        prefix = days.get(day)
        if prefix is None:
            if when < -631152000:  # 1950-01-01
                raise ValueError("revocation dates before 1950 cannot be encoded")
            prefix = days[day] = _day_prefix(day)
        tail = reasons[reason]
        out += bytes((0x30, 2 + size + len(prefix) + 7 + len(tail), 0x02, size))
        out += serial.to_bytes(size, "big")
        out += prefix
        out += seconds[second]
        out += tail
    return out


def header(tag: int, length: int) -> bytes:
    """A DER tag and length (definite form)."""
    if length < 0x80:
        return bytes((tag, length))
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets


def read_tlv(data: bytes | memoryview, offset: int) -> tuple[int, int, int]:
    """``(tag, start of contents, end of contents)`` of the element at ``offset``."""
    tag = data[offset]
    first = data[offset + 1]
    if first < 0x80:
        return tag, offset + 2, offset + 2 + first
    count = first & 0x7F
    if not 1 <= count <= 4:
        raise ValueError("unsupported DER length")
    length = int.from_bytes(bytes(data[offset + 2 : offset + 2 + count]), "big")
    start = offset + 2 + count
    return tag, start, start + length


def splice_entries(template_crl_der: bytes, entries_der: bytes | bytearray) -> tuple[bytes, bytes]:
    """From a signed CRL without entries: ``(new TBSCertList, signatureAlgorithm)`` with the entries.

    The entries go after ``nextUpdate`` and before ``[0] crlExtensions`` (RFC 5280 5.1).
    """
    view = memoryview(template_crl_der)
    tag, start, end = read_tlv(view, 0)  # CertificateList
    if tag != 0x30 or end != len(view):
        raise ValueError("the template is not one DER CertificateList")
    tbs_tag, tbs_start, tbs_end = read_tlv(view, start)
    if tbs_tag != 0x30:
        raise ValueError("the template's TBSCertList is not a SEQUENCE")
    alg_tag, alg_start, alg_end = read_tlv(view, tbs_end)
    if alg_tag != 0x30:
        raise ValueError("the template's signatureAlgorithm is not a SEQUENCE")
    algorithm = bytes(view[tbs_end:alg_end])
    fields = []
    at = tbs_start
    while at < tbs_end:
        field = read_tlv(view, at)
        fields.append((at, field[0]))
        at = field[2]
    if sum(1 for _, field_tag in fields if field_tag == 0x30) != 2:  # signature, issuer
        raise ValueError("the template must list no revoked certificates")
    cut = next((at for at, field_tag in fields if field_tag == 0xA0), tbs_end)  # [0] crlExtensions
    body = bytes(view[tbs_start:cut])
    extensions = bytes(view[cut:tbs_end])
    revoked = header(0x30, len(entries_der)) + entries_der if entries_der else b""
    content_length = len(body) + len(revoked) + len(extensions)
    tbs = b"".join((header(0x30, content_length), body, revoked, extensions))
    return tbs, algorithm


def sign_tbs(key: IssuerKey, hash_algorithm: SigningHash, tbs: bytes) -> bytes:
    """Sign a TBSCertList the way cryptography's builders do (ECDSA, or RSA PKCS#1 v1.5)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(tbs, ec.ECDSA(hash_algorithm))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(tbs, padding.PKCS1v15(), hash_algorithm)
    raise TypeError(f"cannot sign with a {type(key).__name__}")


def certificate_list(tbs: bytes, algorithm: bytes, signature: bytes) -> bytes:
    """``CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue }``."""
    bits = header(0x03, len(signature) + 1) + b"\x00" + signature
    return b"".join((header(0x30, len(tbs) + len(algorithm) + len(bits)), tbs, algorithm, bits))
