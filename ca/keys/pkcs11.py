"""The HSM: the one module that imports python-pkcs11.

* The PKCS#11 library is opened lazily, once per process, after any fork (gunicorn workers), and
  re-initialised if the process id changes.
* Each token gets a small pool of sessions. PKCS#11 login state belongs to the application, not to a
  session, so one *anchor* session per token carries the login and the pooled sessions share it.
* Every PKCS#11 failure that means "the HSM cannot be used now" (token missing, session closed,
  device removed, login refused) becomes :class:`ca.errors.HsmUnavailable`. Lost sessions are
  re-opened on the next call; a refused PIN is tried once and never again in this process.
* :class:`Pkcs11EcKey` and :class:`Pkcs11RsaKey` subclass cryptography's private-key ABCs, so
  cryptography's builders sign with them directly; the private key never leaves the token.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pkcs11
from asn1crypto.core import OctetString
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding, PKCS1v15
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.util.ec import encode_named_curve_parameters

from ca import metrics
from ca.errors import Conflict, HsmKeyNotFound, HsmUnavailable
from ca.keys import IssuerKey, KeyRef, KeySpec, PublicKey

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors after which a session (or the whole token state) cannot be trusted and must be re-opened.
_SESSION_LOST = (
    p11e.SessionClosed,
    p11e.SessionHandleInvalid,
    p11e.DeviceRemoved,
    p11e.DeviceError,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.UserNotLoggedIn,
    p11e.ObjectHandleInvalid,
    p11e.KeyHandleInvalid,
    p11e.GeneralError,
    p11e.FunctionFailed,
)
# Errors that mean the PIN was refused: never retried.
_LOGIN_REFUSED = (
    p11e.PinIncorrect,
    p11e.PinLocked,
    p11e.PinExpired,
    p11e.PinInvalid,
    p11e.PinLenRange,
)

_CURVE_NAMES = {"P-256": "secp256r1", "P-384": "secp384r1"}
_CRYPTOGRAPHY_CURVES: dict[str, ec.EllipticCurve] = {
    "secp256r1": ec.SECP256R1(),
    "secp384r1": ec.SECP384R1(),
    "secp521r1": ec.SECP521R1(),
}
_EC_PARAMS_TO_CURVE = {
    encode_named_curve_parameters(name): curve for name, curve in _CRYPTOGRAPHY_CURVES.items()
}
_RSA_MECHANISMS = {
    "sha256": Mechanism.SHA256_RSA_PKCS,
    "sha384": Mechanism.SHA384_RSA_PKCS,
    "sha512": Mechanism.SHA512_RSA_PKCS,
}

# --- the library, once per process ------------------------------------------------------------

_lib_lock = threading.Lock()
_libs: dict[str, tuple[int, Any]] = {}

# NOTE: python-pkcs11 calls C_Initialize(NULL) and releases the GIL around every PKCS#11 call. With
# NULL init args the application promises never to call the library from two threads at once, and
# SoftHSM2 then runs without mutexes: two threads signing at the same moment corrupt its session
# state (CKR_GENERAL_ERROR, invalid handles, segfaults). So every use of the library in this process
# goes through this lock. One signature takes tens of microseconds, so the lock costs little.
_call_lock = threading.RLock()


def _open_library(module: str) -> Any:
    """The PKCS#11 library at ``module`` for this process (initialised after any fork)."""
    with _lib_lock:
        pid = os.getpid()
        cached = _libs.get(module)
        if cached is not None:
            owner_pid, lib = cached
            if owner_pid == pid:
                return lib
            # NOTE: a forked child inherits the parent's initialised library; PKCS#11 requires the
            # child to initialise again, so finalise the copied state and start afresh.
            try:
                lib.reinitialize()
            except p11e.PKCS11Error as exc:
                raise HsmUnavailable(
                    f"PKCS#11 module {module} failed to re-initialise: {_name(exc)}"
                ) from exc
            _clear_openssl_errors()
            _libs[module] = (pid, lib)
            return lib
        if not os.path.exists(module):
            raise HsmUnavailable(f"PKCS#11 module not found: {module}")
        try:
            lib = pkcs11.lib(module)
        except p11e.PKCS11Error as exc:
            raise HsmUnavailable(f"PKCS#11 module {module} failed to load: {_name(exc)}") from exc
        _clear_openssl_errors()
        _libs[module] = (pid, lib)
        return lib


def _clear_openssl_errors() -> None:
    """Drop errors SoftHSM leaves on this thread's OpenSSL error queue while initialising.

    Otherwise the next TLS operation on the thread (a gunicorn HTTPS worker) reports the stale
    ``NO_SUCH_ENGINE`` error as its own and the connection is logged as invalid.
    """
    global _libcrypto
    try:
        if _libcrypto is None:
            import ctypes
            import ctypes.util

            name = ctypes.util.find_library("crypto")
            _libcrypto = ctypes.CDLL(name) if name else False
        if _libcrypto:
            _libcrypto.ERR_clear_error()
    except (OSError, AttributeError):
        _libcrypto = False


_libcrypto: Any = None


def _name(exc: BaseException) -> str:
    """A short, PIN-free description of a PKCS#11 error."""
    return type(exc).__name__


# --- sessions ---------------------------------------------------------------------------------


class TokenSessions:
    """A pool of logged-in sessions on one token, safe to share between threads.

    ``pin_source`` is called only when a login is needed, so the PIN is not kept in memory longer
    than necessary and never appears in a repr or a message.
    """

    def __init__(
        self,
        module: str,
        token_label: str,
        pin_source: Callable[[], str],
        pool_size: int = 4,
        find_retries: int = 8,
    ) -> None:
        self.module = module
        self.token_label = token_label
        self._pin_source = pin_source
        self._pool_size = max(1, pool_size)
        self._find_retries = find_retries
        self._lock = threading.Lock()
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._created = 0
        self._anchor: Any = None
        self._token: Any = None
        self._pid = 0
        self._generation = 0
        self._login_refused = False
        self._keys: dict[tuple[int, str, str, int], Any] = {}

    def __repr__(self) -> str:
        return f"TokenSessions(module={self.module!r}, token={self.token_label!r})"

    # Opening ---------------------------------------------------------------------------------

    def _find_token(self) -> Any:
        lib = _open_library(self.module)
        delay = 0.05
        for attempt in range(self._find_retries + 1):
            try:
                return lib.get_token(token_label=self.token_label)
            except (
                p11e.NoSuchToken,
                p11e.TokenNotPresent,
                p11e.TokenNotRecognised,
                p11e.GeneralError,
            ) as exc:
                # NOTE: SoftHSM answers "no such token" or CKR_GENERAL_ERROR now and then when
                # several processes read its token files at the same moment (one of them is
                # rewriting the file); a short retry with a rescan settles it.
                if attempt == self._find_retries:
                    raise HsmUnavailable(
                        f"token {self.token_label!r} not found in PKCS#11 module "
                        f"{self.module} ({_name(exc)})"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                # Let the library rescan its slots (SoftHSM re-reads its token directory).
                try:
                    lib.reinitialize()
                except p11e.PKCS11Error:
                    pass
            except p11e.MultipleTokensReturned as exc:
                raise HsmUnavailable(
                    f"more than one token is labelled {self.token_label!r}"
                ) from exc
            except p11e.PKCS11Error as exc:
                raise HsmUnavailable(f"token {self.token_label!r}: {_name(exc)}") from exc
        raise AssertionError("unreachable")

    def _ensure_logged_in(self) -> Any:
        """Open the anchor session that holds the login. Caller holds ``self._lock``."""
        if self._pid != os.getpid():
            # A fork: nothing inherited from the parent is valid here.
            self._forget_locked()
            self._pid = os.getpid()
        if self._anchor is not None:
            return self._token
        if self._login_refused:
            raise HsmUnavailable(
                f"login to token {self.token_label!r} was refused earlier; not retrying "
                "(fix the PIN and restart)"
            )
        token = self._find_token()
        try:
            pin = self._pin_source()
        except OSError as exc:
            raise HsmUnavailable(
                f"cannot read the PIN for token {self.token_label!r}: {exc.strerror}"
            ) from None
        try:
            self._anchor = self._open_logged_in(token, pin)
        except p11e.UserAlreadyLoggedIn:
            # Another anchor in this process survived a reset; the login is still valid.
            self._anchor = token.open(rw=True)
        except _LOGIN_REFUSED as exc:
            self._login_refused = True
            raise HsmUnavailable(
                f"login to token {self.token_label!r} refused ({_name(exc)}); not retrying"
            ) from exc
        except p11e.PKCS11Error as exc:
            raise HsmUnavailable(
                f"cannot open a session on token {self.token_label!r}: {_name(exc)}"
            ) from exc
        finally:
            del pin
        self._token = token
        self._generation += 1
        return token

    def _open_logged_in(self, token: Any, pin: str) -> Any:
        """``token.open`` with the user PIN, retrying what a token file being rewritten causes.

        NOTE: SoftHSM reads a token's state from its files at login; while another process
        rewrites them it can answer CKR_USER_PIN_NOT_INITIALIZED or CKR_GENERAL_ERROR for a
        token whose PIN is set. A few short retries settle it; a refused PIN is never retried.
        """
        delay = 0.05
        for attempt in range(self._find_retries + 1):
            try:
                return token.open(rw=True, user_pin=pin)
            except (p11e.UserPinNotInitialized, p11e.GeneralError):
                if attempt == self._find_retries:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        raise AssertionError("unreachable")

    def _forget_locked(self) -> None:
        """Drop every session (after a loss or a fork). Caller holds ``self._lock``."""
        while True:
            try:
                session = self._idle.get_nowait()
            except queue.Empty:
                break
            self._close_quietly(session)
        if self._anchor is not None:
            self._close_quietly(self._anchor)
        self._anchor = None
        self._token = None
        self._created = 0
        self._keys.clear()
        self._generation += 1

    def _close_quietly(self, session: Any) -> None:
        if self._pid == os.getpid():
            try:
                session.close()
            except p11e.PKCS11Error:
                pass

    def reset(self) -> None:
        """Forget all sessions; the next call re-opens them (and logs in again)."""
        with _call_lock, self._lock:
            self._forget_locked()

    @contextmanager
    def session(self) -> Iterator[Any]:
        """Borrow a logged-in read/write session for the duration of the ``with`` block."""
        with self._lock:
            token = self._ensure_logged_in()
            generation = self._generation
            try:
                session = self._idle.get_nowait()
            except queue.Empty:
                session = None
            if session is None and self._created < self._pool_size:
                try:
                    session = token.open(rw=True)
                except p11e.PKCS11Error as exc:
                    self._forget_locked()
                    raise HsmUnavailable(
                        f"cannot open a session on token {self.token_label!r}: {_name(exc)}"
                    ) from exc
                self._created += 1
        if session is None:
            try:
                session = self._idle.get(timeout=30)
            except queue.Empty:
                raise HsmUnavailable(f"no free session on token {self.token_label!r}") from None
        try:
            yield session
        finally:
            with self._lock:
                # Sessions from before a reset are stale; the reset already closed them.
                if generation == self._generation:
                    self._idle.put(session)
                else:
                    self._close_quietly(session)

    def run(self, operation: Callable[[Any], T], name: str = "other") -> T:
        """Run ``operation(session)``; on a lost session, re-open once and retry; else HsmUnavailable.

        Operations of all threads of the process are serialised (see ``_call_lock``). ``name``
        labels failures in ``hsmca_hsm_errors_total`` (sign, load, generate, ...).
        """
        with _call_lock:
            try:
                return self._run_locked(operation, name)
            except HsmUnavailable as exc:
                cause = exc.__cause__
                kind = _name(cause) if isinstance(cause, p11e.PKCS11Error) else "unavailable"
                metrics.hsm_error(name, kind)
                raise

    def _run_locked(self, operation: Callable[[Any], T], name: str) -> T:
        for attempt in (1, 2):
            try:
                with self.session() as session:
                    return operation(session)
            except _SESSION_LOST as exc:
                log.warning(
                    "HSM session on token %r lost (%s); re-opening", self.token_label, _name(exc)
                )
                self.reset()
                if attempt == 1:
                    metrics.hsm_error(name, "sessionLost")  # re-opened; the retry may succeed
                if attempt == 2:
                    raise HsmUnavailable(
                        f"HSM token {self.token_label!r} unavailable: {_name(exc)}"
                    ) from exc
            except _LOGIN_REFUSED as exc:
                self._login_refused = True
                raise HsmUnavailable(f"login to token {self.token_label!r} refused") from exc
            except p11e.PKCS11Error as exc:
                if isinstance(exc, (p11e.NoSuchKey, p11e.MultipleObjectsReturned)):
                    raise
                raise HsmUnavailable(
                    f"HSM operation on token {self.token_label!r} failed: {_name(exc)}"
                ) from exc
        raise AssertionError("unreachable")

    def private_key(self, session: Any, label: str, key_id: str) -> Any:
        """The private-key object for (label, id) in ``session``, cached per session."""
        cache_key = (id(session), label, key_id, self._generation)
        key = self._keys.get(cache_key)
        if key is None:
            key = _find(session, ObjectClass.PRIVATE_KEY, label, key_id)
            self._keys[cache_key] = key
        return key


def _find(session: Any, object_class: ObjectClass, label: str, key_id: str) -> Any:
    attrs: dict[Attribute, Any] = {Attribute.CLASS: object_class, Attribute.LABEL: label}
    if key_id:
        attrs[Attribute.ID] = bytes.fromhex(key_id)
    found = list(session.get_objects(attrs))
    if not found:
        raise p11e.NoSuchKey(f"no {object_class.name} labelled {label!r}")
    if len(found) > 1:
        raise p11e.MultipleObjectsReturned(
            f"several {object_class.name} objects labelled {label!r}"
        )
    return found[0]


# --- keys -------------------------------------------------------------------------------------


def _digest(data: bytes, algorithm: hashes.HashAlgorithm | utils.Prehashed) -> bytes:
    if isinstance(algorithm, utils.Prehashed):
        return data
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


class Pkcs11EcKey(ec.EllipticCurvePrivateKey):
    """An EC private key in the token. ``sign()`` hashes here and signs with CKM_ECDSA in the HSM.

    NOTE: SoftHSM2 has no CKM_ECDSA_SHA256, so we hash in Python and DER-encode the raw r||s.
    """

    def __init__(self, sessions: TokenSessions, ref: KeyRef, public: ec.EllipticCurvePublicKey):
        self._sessions = sessions
        self.ref = ref
        self._public = public

    def sign(
        self,
        data: bytes | bytearray | memoryview,
        signature_algorithm: ec.EllipticCurveSignatureAlgorithm,
    ) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise TypeError("only ECDSA signatures are supported")
        digest = _digest(bytes(data), signature_algorithm.algorithm)

        def op(session: Any) -> bytes:
            key = self._sessions.private_key(session, self.ref.label, self.ref.key_id)
            return bytes(key.sign(digest, mechanism=Mechanism.ECDSA))

        started = time.perf_counter()
        raw = self._sessions.run(op, "sign")
        metrics.hsm_signed("ec", time.perf_counter() - started)
        half = len(raw) // 2
        return utils.encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise TypeError("HSM keys of the CA are for signing only")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise TypeError("the private key is in the HSM and cannot be exported")

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        raise TypeError("the private key is in the HSM and cannot be exported")

    def __copy__(self) -> Pkcs11EcKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Pkcs11EcKey:
        return self

    def __repr__(self) -> str:
        return f"Pkcs11EcKey(token={self.ref.token_label!r}, label={self.ref.label!r})"


class Pkcs11RsaKey(rsa.RSAPrivateKey):
    """An RSA private key in the token, signing with CKM_SHA{256,384,512}_RSA_PKCS in the HSM."""

    def __init__(self, sessions: TokenSessions, ref: KeyRef, public: rsa.RSAPublicKey):
        self._sessions = sessions
        self.ref = ref
        self._public = public

    def sign(
        self,
        data: bytes,
        padding: AsymmetricPadding,
        algorithm: hashes.HashAlgorithm | utils.Prehashed | utils.NoDigestInfo,
    ) -> bytes:
        if not isinstance(padding, PKCS1v15):
            raise TypeError("only PKCS#1 v1.5 signatures are supported by the CA's RSA keys")
        if not isinstance(algorithm, hashes.HashAlgorithm) or algorithm.name not in _RSA_MECHANISMS:
            raise TypeError("RSA signing supports SHA-256, SHA-384 and SHA-512 over the data")
        mechanism = _RSA_MECHANISMS[algorithm.name]
        payload = bytes(data)

        def op(session: Any) -> bytes:
            key = self._sessions.private_key(session, self.ref.label, self.ref.key_id)
            return bytes(key.sign(payload, mechanism=mechanism))

        started = time.perf_counter()
        signature = self._sessions.run(op, "sign")
        metrics.hsm_signed("rsa", time.perf_counter() - started)
        return signature

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def decrypt(self, ciphertext: bytes, padding: AsymmetricPadding) -> bytes:
        raise TypeError("HSM keys of the CA are for signing only")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        raise TypeError("the private key is in the HSM and cannot be exported")

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        raise TypeError("the private key is in the HSM and cannot be exported")

    def __copy__(self) -> Pkcs11RsaKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Pkcs11RsaKey:
        return self

    def __repr__(self) -> str:
        return f"Pkcs11RsaKey(token={self.ref.token_label!r}, label={self.ref.label!r})"


def _public_from_object(pub: Any) -> PublicKey:
    key_type = pub[Attribute.KEY_TYPE]
    if key_type == KeyType.EC:
        params = bytes(pub[Attribute.EC_PARAMS])
        curve = _EC_PARAMS_TO_CURVE.get(params)
        if curve is None:
            raise HsmUnavailable("the token holds an EC key on a curve the CA does not use")
        point = bytes(pub[Attribute.EC_POINT])
        if point[:1] == b"\x04" and len(point) > 2 and point[1] == len(point) - 2:
            point = OctetString.load(point).native  # DER OCTET STRING around the point
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    if key_type == KeyType.RSA:
        n = int.from_bytes(bytes(pub[Attribute.MODULUS]), "big")
        e = int.from_bytes(bytes(pub[Attribute.PUBLIC_EXPONENT]), "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    raise HsmUnavailable(f"unsupported key type in token: {key_type}")


def _wrap(sessions: TokenSessions, ref: KeyRef, public: PublicKey) -> IssuerKey:
    if isinstance(public, ec.EllipticCurvePublicKey):
        return Pkcs11EcKey(sessions, ref, public)
    return Pkcs11RsaKey(sessions, ref, public)


class Pkcs11KeyStore:
    """Loads and generates CA keys in PKCS#11 tokens (one module, one or more tokens).

    ``pins`` maps a token label to a callable that returns its user PIN.
    """

    def __init__(self, module: str, pins: dict[str, Callable[[], str]], pool_size: int = 4) -> None:
        self.module = module
        self._pins = pins
        self._pool_size = pool_size
        self._tokens: dict[str, TokenSessions] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Pkcs11KeyStore(module={self.module!r}, tokens={sorted(self._pins)!r})"

    def sessions(self, token_label: str) -> TokenSessions:
        """The session pool of one token (created on first use)."""
        with self._lock:
            pool = self._tokens.get(token_label)
            if pool is None:
                pin = self._pins.get(token_label)
                if pin is None:
                    raise HsmUnavailable(f"no PIN is configured for token {token_label!r}")
                pool = TokenSessions(self.module, token_label, pin, self._pool_size)
                self._tokens[token_label] = pool
            return pool

    def load(self, ref: KeyRef) -> IssuerKey:
        """A signing key for ``ref``; raises HsmKeyNotFound if the token has no such key."""
        sessions = self.sessions(ref.token_label)

        def op(session: Any) -> PublicKey:
            return _public_from_object(
                _find(session, ObjectClass.PUBLIC_KEY, ref.label, ref.key_id)
            )

        try:
            public = sessions.run(op, "load")
            sessions.run(lambda s: sessions.private_key(s, ref.label, ref.key_id), "load")
        except (p11e.NoSuchKey, p11e.MultipleObjectsReturned) as exc:
            raise HsmKeyNotFound(
                f"token {ref.token_label!r} has no unique key labelled {ref.label!r}"
            ) from exc
        return _wrap(sessions, ref, public)

    def generate(self, ref: KeyRef, spec: KeySpec) -> IssuerKey:
        """Generate a key pair inside the token: private half sensitive, non-extractable, on-token."""
        sessions = self.sessions(ref.token_label)
        key_id = bytes.fromhex(ref.key_id)
        private_template = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            Attribute.DECRYPT: False,
            Attribute.UNWRAP: False,
            Attribute.DERIVE: False,
        }
        public_template = {Attribute.TOKEN: True, Attribute.VERIFY: True, Attribute.ENCRYPT: False}

        def op(session: Any) -> PublicKey:
            existing = list(
                session.get_objects(
                    {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: ref.label}
                )
            )
            if existing:
                raise FileExistsError(ref.label)
            if spec.algorithm == "ec":
                params = session.create_domain_parameters(
                    KeyType.EC,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVE_NAMES[spec.curve])},
                    local=True,
                )
                pub, _ = params.generate_keypair(
                    store=True,
                    label=ref.label,
                    id=key_id,
                    public_template=public_template,
                    private_template=private_template,
                )
            else:
                pub, _ = session.generate_keypair(
                    KeyType.RSA,
                    spec.bits,
                    store=True,
                    label=ref.label,
                    id=key_id,
                    public_template={**public_template, Attribute.PUBLIC_EXPONENT: b"\x01\x00\x01"},
                    private_template=private_template,
                )
            return _public_from_object(pub)

        try:
            public = sessions.run(op, "generate")
        except FileExistsError:
            raise Conflict(
                f"token {ref.token_label!r} already holds a key labelled {ref.label!r}"
            ) from None
        return _wrap(sessions, ref, public)

    def key_attributes(self, ref: KeyRef) -> dict[str, bool]:
        """The protection attributes of the private key at ``ref`` (for tests and `ca show`)."""
        sessions = self.sessions(ref.token_label)
        names = {
            "token": Attribute.TOKEN,
            "private": Attribute.PRIVATE,
            "sensitive": Attribute.SENSITIVE,
            "extractable": Attribute.EXTRACTABLE,
            "always_sensitive": Attribute.ALWAYS_SENSITIVE,
            "never_extractable": Attribute.NEVER_EXTRACTABLE,
        }

        def op(session: Any) -> dict[str, bool]:
            key = _find(session, ObjectClass.PRIVATE_KEY, ref.label, ref.key_id)
            return {name: bool(key[attr]) for name, attr in names.items()}

        try:
            return sessions.run(op, "attributes")
        except p11e.NoSuchKey as exc:
            raise HsmKeyNotFound(
                f"token {ref.token_label!r} has no key labelled {ref.label!r}"
            ) from exc

    def try_export_private_value(self, ref: KeyRef) -> bytes | None:
        """Ask the token for the private value; a correctly protected key makes the token refuse.

        Used by tests to show the key cannot leave the HSM. Returns None when refused.
        """
        sessions = self.sessions(ref.token_label)

        def op(session: Any) -> bytes | None:
            key = _find(session, ObjectClass.PRIVATE_KEY, ref.label, ref.key_id)
            attr = (
                Attribute.VALUE
                if key[Attribute.KEY_TYPE] == KeyType.EC
                else Attribute.PRIVATE_EXPONENT
            )
            try:
                return bytes(key[attr])
            except (p11e.AttributeSensitive, p11e.AttributeTypeInvalid):
                return None

        return sessions.run(op)

    def close(self) -> None:
        """Close every session (the library stays loaded for the process)."""
        with self._lock:
            pools = list(self._tokens.values())
        for pool in pools:
            pool.reset()
