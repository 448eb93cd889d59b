"""Pure parts of the OCSP responder: DER pieces, base64 of GET requests, the token bucket,
RFC 5019 caching headers."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from asn1crypto import ocsp as asn1_ocsp
from cryptography.x509 import ocsp as xocsp

from ocsp import der
from ocsp.service import Reply, TokenBucket
from web.ocsp import caching_headers, decode_base64


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "020100"),
        (1, "020101"),
        (127, "02017f"),
        (128, "02020080"),
        (255, "020200ff"),
        (256, "02020100"),
        (-1, "0201ff"),
        (-128, "020180"),
        (-129, "0202ff7f"),
    ],
)
def test_integers_are_minimal_twos_complement(value, encoded):
    assert der.integer(value).hex() == encoded


def test_long_lengths():
    assert der.tlv(0x04, b"x" * 127)[:2].hex() == "047f"
    assert der.tlv(0x04, b"x" * 128)[:3].hex() == "048180"
    assert der.tlv(0x04, b"x" * 300)[:4].hex() == "0482012c"


@pytest.mark.parametrize("status", list(der.UNSUCCESSFUL))
def test_unsuccessful_responses_parse(status):
    body = der.unsuccessful(status)
    parsed = xocsp.load_der_ocsp_response(body)
    assert parsed.response_status.value == der.UNSUCCESSFUL[status]


def test_single_response_statuses_encode_as_rfc6960():
    cert_id = der.CertId("sha1", b"\x01" * 20, b"\x02" * 20, 0x1234)
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    revoked = der.Single(cert_id, "revoked", now, now + timedelta(days=1), now, 1)
    parsed = asn1_ocsp.SingleResponse.load(revoked.der())
    assert parsed["cert_status"].name == "revoked"
    assert parsed["cert_status"].chosen["revocation_reason"].native == "key_compromise"
    assert parsed["this_update"].native == now
    unspecified = der.Single(cert_id, "revoked", now, None, now, None)
    parsed = asn1_ocsp.SingleResponse.load(unspecified.der())
    assert parsed["cert_status"].chosen["revocation_reason"].native is None
    assert parsed["next_update"].native is None
    with pytest.raises(ValueError):
        der.Single(cert_id, "revoked", now, None).der()
    with pytest.raises(ValueError):
        der.Single(cert_id, "maybe", now, None).der()


def test_get_base64_variants():
    data = bytes(range(256)) * 2
    std = base64.b64encode(data)
    assert decode_base64(std) == data
    assert decode_base64(std.rstrip(b"=")) == data
    assert decode_base64(base64.urlsafe_b64encode(data)) == data
    assert decode_base64(std.replace(b"+", b" ")) == data  # a '+' turned into a space
    for bad in (b"", b"!!!!", b"A", b"AAAAA", b"not base64 at all?"):
        assert decode_base64(bad) is None, bad


def test_token_bucket_refills_at_its_rate():
    now = [0.0]
    bucket = TokenBucket(10.0, 10.0, clock=lambda: now[0])
    assert sum(bucket.take() for _ in range(20)) == 10
    now[0] += 0.5
    assert sum(bucket.take() for _ in range(20)) == 5
    now[0] += 100
    assert sum(bucket.take() for _ in range(20)) == 10  # never more than the burst


def test_caching_headers_follow_rfc5019():
    produced = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
    reply = Reply(
        b"x",
        "good",
        cacheable=True,
        this_update=produced,
        next_update=produced + timedelta(hours=96),
        produced_at=produced,
        etag='"abc"',
    )
    headers = dict(caching_headers(reply, produced + timedelta(hours=1), refresh_hours=24))
    assert headers["ETag"] == '"abc"'
    assert headers["Last-Modified"] == "Thu, 01 Jan 2026 00:00:00 GMT"
    assert headers["Expires"] == "Mon, 05 Jan 2026 00:00:00 GMT"
    assert headers["Cache-Control"] == f"max-age={23 * 3600}, public, no-transform, must-revalidate"
    late = dict(caching_headers(reply, produced + timedelta(hours=30), refresh_hours=24))
    assert late["Cache-Control"].startswith("max-age=0,")
