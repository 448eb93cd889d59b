"""Building and signing one CRL (pure apart from the key's ``sign()``, which runs in the HSM).

A CRL here is a full CRL of one CA, or of one partition (shard) of its certificates:

* version 2, signed by the CA's key with the hash it signs certificates with;
* ``authorityKeyIdentifier`` (the CA's SKI) and ``cRLNumber``, non-critical (RFC 5280 5.2.1, 5.2.3);
* for a partition, a critical ``issuingDistributionPoint`` naming the partition's URL, which
  is the CRL distribution point of every certificate in it (RFC 5280 5.2.5);
* one entry per revoked certificate with its revocation date, and a ``reasonCode`` entry
  extension unless the reason is ``unspecified`` (RFC 5280 5.3.1: "SHOULD be absent").

cryptography's builder makes every CRL of up to :data:`FAST_PATH_MIN_ENTRIES` entries; larger ones
take the fast path of :mod:`crl.der`, which produces the same bytes (see there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.keys import IssuerKey, SigningHash
from ca.x509build import authority_key_identifier
from crl import der
from crl.der import Entry

#: From this many entries on, the list is written by :func:`crl.der.encode_entries`. Below it the
#: builder takes under 0.3 s; at 1M entries it takes 5 s against 1.5 s (bench/crl.py).
FAST_PATH_MIN_ENTRIES = 50_000

#: RFC 5280 reason codes and cryptography's names for them.
_REASON_FLAGS = {
    0: x509.ReasonFlags.unspecified,
    1: x509.ReasonFlags.key_compromise,
    2: x509.ReasonFlags.ca_compromise,
    3: x509.ReasonFlags.affiliation_changed,
    4: x509.ReasonFlags.superseded,
    5: x509.ReasonFlags.cessation_of_operation,
    6: x509.ReasonFlags.certificate_hold,
    8: x509.ReasonFlags.remove_from_crl,
    9: x509.ReasonFlags.privilege_withdrawn,
    10: x509.ReasonFlags.aa_compromise,
}
_REASON_EXTENSIONS: dict[int, list[x509.Extension[x509.ExtensionType]]] = {
    code: []
    if code == 0
    else [x509.Extension(x509.CRLReason.oid, False, x509.CRLReason(_REASON_FLAGS[code]))]
    for code in _REASON_FLAGS
}


@dataclass(frozen=True)
class CrlSpec:
    """Everything in a CRL but its entries."""

    issuer: x509.Certificate
    number: int
    this_update: datetime
    next_update: datetime
    #: The partition's URL for its issuingDistributionPoint; ``None`` for a CA's only CRL.
    distribution_point: str | None = None


def issuing_distribution_point(url: str) -> x509.IssuingDistributionPoint:
    return x509.IssuingDistributionPoint(
        full_name=[x509.UniformResourceIdentifier(url)],
        relative_name=None,
        only_contains_user_certs=False,
        only_contains_ca_certs=False,
        only_some_reasons=None,
        indirect_crl=False,
        only_contains_attribute_certs=False,
    )


def _builder(
    spec: CrlSpec, revoked: list[x509.RevokedCertificate]
) -> x509.CertificateRevocationListBuilder:
    # The entries go to the constructor: add_revoked_certificate() copies the list each time.
    builder = (
        x509.CertificateRevocationListBuilder(revoked_certificates=revoked)
        .issuer_name(spec.issuer.subject)
        .last_update(spec.this_update)
        .next_update(spec.next_update)
        .add_extension(authority_key_identifier(spec.issuer), critical=False)
        .add_extension(x509.CRLNumber(spec.number), critical=False)
    )
    if spec.distribution_point is not None:
        builder = builder.add_extension(
            issuing_distribution_point(spec.distribution_point), critical=True
        )
    return builder


def revoked_certificate(entry: Entry) -> x509.RevokedCertificate:
    serial, when, reason = entry
    return x509.RevokedCertificateBuilder(
        serial, datetime.fromtimestamp(when, UTC).replace(tzinfo=None), _REASON_EXTENSIONS[reason]
    ).build()


def build_crl(
    key: IssuerKey,
    hash_algorithm: SigningHash,
    spec: CrlSpec,
    entries: Sequence[Entry],
    fast: bool | None = None,
) -> bytes:
    """The signed CRL as DER; its signature is checked against the issuer's certificate.

    ``fast`` forces the path (tests and the benchmark); by default the builder makes CRLs of
    fewer than :data:`FAST_PATH_MIN_ENTRIES` entries and the fast path the others.
    """
    if spec.next_update <= spec.this_update:
        raise ValueError("nextUpdate must be after thisUpdate")
    use_fast = len(entries) >= FAST_PATH_MIN_ENTRIES if fast is None else fast
    if use_fast:
        template = _builder(spec, []).sign(key, hash_algorithm)
        tbs, algorithm = der.splice_entries(
            template.public_bytes(serialization.Encoding.DER), der.encode_entries(entries)
        )
        data = der.certificate_list(tbs, algorithm, der.sign_tbs(key, hash_algorithm, tbs))
    else:
        revoked = [revoked_certificate(e) for e in entries]
        data = (
            _builder(spec, revoked)
            .sign(key, hash_algorithm)
            .public_bytes(serialization.Encoding.DER)
        )
    crl = x509.load_der_x509_crl(data)
    if not crl.is_signature_valid(spec.issuer.public_key()):  # type: ignore[arg-type]
        raise ValueError("the CRL's signature does not verify against the issuer's certificate")
    return data
