"""A tls-alpn-01 responder for tests (RFC 8737): TLS on 127.0.0.1, ALPN ``acme-tls/1``, and per
SNI name the certificate a test put there.

    responder = TlsAlpnResponder().start()               # responder.port
    responder.answer("dns", "x.test", key_authorization)  # the right certificate for x.test
    responder.set("x.test", *challenge_cert("dns", "x.test", key_authz, critical=False))
    responder.clear(); responder.stop()

:func:`challenge_cert` builds the self-signed certificates (right ones, and wrong ones on
request); an SNI name without a certificate fails the handshake.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
import ssl
import tempfile
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ALPN = "acme-tls/1"
ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")


def sni_for(identifier_type: str, value: str) -> str:
    """The SNI a validator sends: the name, or the address's reverse name (RFC 8738 §6)."""
    return ipaddress.ip_address(value).reverse_pointer if identifier_type == "ip" else value


def _general_name(identifier_type: str, value: str) -> x509.GeneralName:
    if identifier_type == "ip":
        return x509.IPAddress(ipaddress.ip_address(value))
    return x509.DNSName(value)


def challenge_cert(
    identifier_type: str,
    value: str,
    key_authorization: str,
    *,
    critical: bool = True,
    with_extension: bool = True,
    digest: bytes | None = None,
    extension_der: bytes | None = None,
    extra_names: tuple[tuple[str, str], ...] = (),
    san: tuple[str, str] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed tls-alpn-01 certificate for the identifier; the keyword arguments make it
    wrong in one way (non-critical or missing extension, another digest or raw extension DER,
    more names, another name)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names = [_general_name(*(san or (identifier_type, value)))]
    names += [_general_name(t, v) for t, v in extra_names]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme-tls-alpn")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme-tls-alpn")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
    )
    if with_extension:
        sha = digest if digest is not None else hashlib.sha256(key_authorization.encode()).digest()
        der = extension_der if extension_der is not None else b"\x04" + bytes([len(sha)]) + sha
        builder = builder.add_extension(
            x509.UnrecognizedExtension(ACME_IDENTIFIER, der), critical=critical
        )
    return builder.sign(key, hashes.SHA256()), key


class TlsAlpnResponder:
    """TLS server answering each SNI name with the certificate set for it."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="tlsalpn-"))
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._alpn = [ALPN]
        self.port = 0

    def start(self) -> TlsAlpnResponder:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self._sock, self.port = sock, int(sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def set(
        self,
        sni: str,
        cert: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        alpn: list[str] | None = None,
    ) -> None:
        """Serve ``cert`` for ``sni`` (negotiating ``alpn``, default acme-tls/1 only)."""
        stem = self._dir / hashlib.sha256(sni.encode()).hexdigest()[:16]
        cert_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = self._server_context(alpn if alpn is not None else [ALPN])
        context.load_cert_chain(cert_path, key_path)
        with self._lock:
            self._contexts[sni] = context

    def answer(self, identifier_type: str, value: str, key_authorization: str) -> None:
        """Serve the right certificate for the identifier."""
        self.set(
            sni_for(identifier_type, value),
            *challenge_cert(identifier_type, value, key_authorization),
        )

    def clear(self) -> None:
        with self._lock:
            self._contexts.clear()

    @staticmethod
    def _server_context(alpn: list[str]) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if alpn:
            context.set_alpn_protocols(alpn)
        return context

    def _pick(self, sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
        with self._lock:
            context = self._contexts.get(name or "")
        if context is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sock.context = context
        return None

    def _serve(self) -> None:
        listener = self._sock
        while listener is not None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handshake, args=(conn,), daemon=True).start()

    def _handshake(self, conn: socket.socket) -> None:
        # This context only routes: the SNI callback swaps in the name's (with its certificate).
        front = self._server_context([ALPN])
        front.sni_callback = self._pick
        conn.settimeout(10)
        try:
            with front.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)  # until the validator closes
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()
