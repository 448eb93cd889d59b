"""Building X.509 certificates (pure: returns cryptography builders; signing happens elsewhere).

Profiles follow the CA/Browser Forum TLS profile although the CA is private, so TLS stacks and
linters (pkilint) treat our certificates like public ones.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from ca.csr import CsrFacts, subject_name
from ca.keys import PublicKey
from ca.policy import Decision
from ca.profiles import Profile

ANY_POLICY = x509.ObjectIdentifier("2.5.29.32.0")


@dataclass(frozen=True)
class CaUrls:
    """The http URLs a certificate issued by one CA points to."""

    ca_issuers: str  # the issuer's certificate (DER)
    ocsp: str
    crl: str  # the CA's CRL, ``BASE/crl/NAME.crl`` (partitioned: see crl_url)
    #: Partitions of the CA's CRL ([crl] shards): a certificate's CDP names its partition's CRL.
    crl_shards: int = 1

    @classmethod
    def for_issuer(cls, public_base_url: str, issuer_name: str, crl_shards: int = 1) -> CaUrls:
        base = public_base_url.rstrip("/")
        return cls(
            ca_issuers=f"{base}/ca/{issuer_name}.crt",
            ocsp=f"{base}/ocsp",
            crl=f"{base}/crl/{issuer_name}.crl",
            crl_shards=crl_shards,
        )

    def crl_shard(self, serial: int) -> int:
        """The CRL partition of the certificate with ``serial`` (fixed at issuance)."""
        return serial % self.crl_shards

    def crl_url(self, shard: int) -> str:
        """The CRL of one partition: ``BASE/crl/NAME.crl`` if there is one, else ``BASE/crl/NAME/SHARD.crl``."""
        if self.crl_shards == 1:
            return self.crl
        return f"{self.crl.removesuffix('.crl')}/{shard}.crl"


def ca_subject(common_name: str, organization: str, country: str = "") -> x509.Name:
    """A CA's distinguished name: C (if set), O, CN."""
    attrs = []
    if country:
        attrs.append(x509.NameAttribute(NameOID.COUNTRY_NAME, country))
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def build_root(
    subject: x509.Name,
    public_key: PublicKey,
    serial: int,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    """A self-signed root: CA critical, keyCertSign+cRLSign critical, SKI."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def build_intermediate(
    subject: x509.Name,
    public_key: PublicKey,
    issuer: x509.Certificate,
    serial: int,
    not_before: datetime,
    not_after: datetime,
    urls: CaUrls,
) -> x509.CertificateBuilder:
    """An issuing CA under ``issuer``: pathLen 0, AKI/SKI, AIA, CDP, anyPolicy."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(min(not_after, issuer.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(authority_key_identifier(issuer), critical=False)
        .add_extension(_aia(urls), critical=False)
        .add_extension(_cdp(urls.crl_url(urls.crl_shard(serial))), critical=False)
        .add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(ANY_POLICY, None)]), critical=False
        )
    )


def leaf_validity(
    profile: Profile, now: datetime, issuer: x509.Certificate, validity: timedelta | None = None
) -> tuple[datetime, datetime]:
    """notBefore (backdated per profile) and notAfter (never beyond the issuer's)."""
    span = validity or profile.validity
    not_before = (now - profile.backdate).replace(microsecond=0)
    # RFC 5280 validity is inclusive of both ends: subtract a second so "90 days" is 90 days.
    not_after = min(not_before + span - timedelta(seconds=1), issuer.not_valid_after_utc)
    return not_before, not_after


def build_leaf(
    facts: CsrFacts,
    decision: Decision,
    profile: Profile,
    issuer: x509.Certificate,
    serial: int,
    not_before: datetime,
    not_after: datetime,
    urls: CaUrls,
) -> x509.CertificateBuilder:
    """An end-entity certificate for an allowed ``decision``; no CSR extension is ever copied.

    Names, subject and key usage come from the decision (normalised, CN dropped or checked);
    only the public key comes from ``facts``.
    """
    if not decision.allowed:
        raise ValueError("build_leaf needs an allowed decision")
    public_key = facts.public_key
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in decision.dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in decision.ip_addresses]
    sans += [x509.UniformResourceIdentifier(u) for u in decision.uris]
    sans += [x509.RFC822Name(e) for e in decision.emails]
    subject = subject_name(decision.subject)
    usage = set(decision.key_usage)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(authority_key_identifier(issuer), critical=False)
        .add_extension(_aia(urls), critical=False)
        .add_extension(_cdp(urls.crl_url(urls.crl_shard(serial))), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature="digitalSignature" in usage,
                content_commitment="contentCommitment" in usage,
                key_encipherment="keyEncipherment" in usage,
                data_encipherment="dataEncipherment" in usage,
                key_agreement="keyAgreement" in usage,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if profile.extended_key_usage:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(list(profile.extended_key_usage)), critical=False
        )
    if profile.certificate_policies:
        builder = builder.add_extension(
            x509.CertificatePolicies(
                [x509.PolicyInformation(oid, None) for oid in profile.certificate_policies]
            ),
            critical=False,
        )
    if sans:
        # RFC 5280 4.2.1.6: with an empty subject the SAN extension is critical.
        builder = builder.add_extension(
            x509.SubjectAlternativeName(sans), critical=len(subject) == 0
        )
    return builder


@functools.lru_cache(maxsize=64)  # the same for every certificate of an issuer
def authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The AKI naming ``issuer``'s key: its SKI, or one computed from its public key."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]


@functools.lru_cache(maxsize=64)  # the same for every certificate of an issuer
def _aia(urls: CaUrls) -> x509.AuthorityInformationAccess:
    return x509.AuthorityInformationAccess(
        [
            x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(urls.ocsp)
            ),
            x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS,
                x509.UniformResourceIdentifier(urls.ca_issuers),
            ),
        ]
    )


@functools.lru_cache(maxsize=4096)  # the same for every certificate of an issuer's partition
def _cdp(url: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints(
        [
            x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(url)],
                relative_name=None,
                reasons=None,
                crl_issuer=None,
            )
        ]
    )
