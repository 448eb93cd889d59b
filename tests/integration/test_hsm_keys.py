"""The HSM layer against a real SoftHSM2 token: key generation, protection, signing, failures."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from ca.errors import HsmKeyNotFound, HsmUnavailable
from ca.keys import KeyRef, KeySpec, signature_hash_for
from ca.keys.pkcs11 import Pkcs11EcKey, Pkcs11KeyStore, Pkcs11RsaKey

pytestmark = pytest.mark.hsm


@pytest.fixture
def store(softhsm_token):
    token, pin = softhsm_token
    ks = Pkcs11KeyStore(token.module, {"hsmca": lambda: pin}, pool_size=2)
    yield ks
    ks.close()


def _ref(prefix: str = "test") -> KeyRef:
    key_id = secrets.token_hex(8)
    return KeyRef("hsmca", f"{prefix}-{key_id}", key_id)


def _self_signed(key) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hsm key test")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, signature_hash_for(key))
    )


@pytest.mark.parametrize(
    "spec", ["ec:P-256", "ec:P-384", "rsa:2048", "rsa:3072", "rsa:4096"], ids=lambda s: f"ok/{s}"
)
def test_generated_key_signs_certificates_through_cryptography_builder(store, spec):
    key = store.generate(_ref(), KeySpec.parse(spec))
    assert isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey))
    cert = _self_signed(key)
    cert.verify_directly_issued_by(cert)  # signature made in the token verifies in software
    expected = Pkcs11EcKey if spec.startswith("ec") else Pkcs11RsaKey
    assert isinstance(key, expected)


def test_private_key_is_sensitive_non_extractable_token_object(store):
    ref = _ref()
    store.generate(ref, KeySpec.parse("ec:P-256"))
    attrs = store.key_attributes(ref)
    assert attrs == {
        "token": True,
        "private": True,
        "sensitive": True,
        "extractable": False,
        "always_sensitive": True,
        "never_extractable": True,
    }
    # Asking the token for the private value is refused.
    assert store.try_export_private_value(ref) is None


def test_rsa_private_key_is_sensitive_and_its_exponent_cannot_be_read(store):
    ref = _ref()
    store.generate(ref, KeySpec.parse("rsa:2048"))
    assert store.key_attributes(ref)["sensitive"] is True
    assert store.key_attributes(ref)["extractable"] is False
    assert store.try_export_private_value(ref) is None


def test_hsm_key_refuses_export_in_python(store):
    key = store.generate(_ref(), KeySpec.parse("ec:P-256"))
    with pytest.raises(TypeError):
        key.private_bytes()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        key.private_numbers()


def test_loaded_key_is_found_by_label_and_id_and_matches(store):
    ref = _ref()
    generated = store.generate(ref, KeySpec.parse("ec:P-256"))
    loaded = store.load(ref)
    assert loaded.public_key() == generated.public_key()
    sig = loaded.sign(b"data", ec.ECDSA(hashes.SHA256()))
    generated.public_key().verify(sig, b"data", ec.ECDSA(hashes.SHA256()))


def test_rsa_signature_verifies_with_pkcs1v15(store):
    key = store.generate(_ref(), KeySpec.parse("rsa:2048"))
    sig = key.sign(b"payload", padding.PKCS1v15(), hashes.SHA384())
    key.public_key().verify(sig, b"payload", padding.PKCS1v15(), hashes.SHA384())
    with pytest.raises(TypeError):
        key.sign(b"payload", padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())


def test_missing_key_raises_key_not_found(store):
    with pytest.raises(HsmKeyNotFound):
        store.load(KeyRef("hsmca", "no-such-key", "00ff"))


def test_lost_sessions_reopen_by_themselves(store):
    ref = _ref()
    key = store.generate(ref, KeySpec.parse("ec:P-256"))
    pool = store.sessions("hsmca")
    # Close every session behind the pool's back, as a token reset would.
    with pool._lock:
        idle = list(pool._idle.queue)
        anchor = pool._anchor
    for s in [*idle, anchor]:
        s.close()
    sig = key.sign(b"after reset", ec.ECDSA(hashes.SHA256()))
    key.public_key().verify(sig, b"after reset", ec.ECDSA(hashes.SHA256()))


WRONG_PIN_SCRIPT = """
import json, sys
from ca.errors import HsmUnavailable
from ca.keys import KeyRef
from ca.keys.pkcs11 import Pkcs11KeyStore
calls = []
def wrong_pin():
    calls.append(1)
    return "definitely-wrong-pin"
ks = Pkcs11KeyStore(sys.argv[1], {"hsmca-root": wrong_pin})
ref = KeyRef("hsmca-root", "whatever", "01")
messages = []
for _ in range(2):
    try:
        ks.load(ref)
        messages.append("loaded?!")
    except HsmUnavailable as exc:
        messages.append(str(exc))
print(json.dumps({"calls": len(calls), "messages": messages}))
"""


def test_wrong_pin_raises_hsm_unavailable_and_is_tried_only_once(softhsm_token):
    # PKCS#11 login state belongs to the process: a fresh one, where nobody has logged in yet.
    token, _ = softhsm_token
    env = {**os.environ, "SOFTHSM2_CONF": str(token.conf_path)}
    out = subprocess.run(
        [sys.executable, "-c", WRONG_PIN_SCRIPT, token.module],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["calls"] == 1, "a refused PIN must never be tried again"
    first, second = result["messages"]
    assert "definitely-wrong-pin" not in first + second
    assert "refused" in first and "refused" in second


def test_unknown_token_raises_hsm_unavailable(softhsm_token):
    token, pin = softhsm_token
    ks = Pkcs11KeyStore(token.module, {"no-such-token": lambda: pin})
    ks.sessions("no-such-token")._find_retries = 1
    with pytest.raises(HsmUnavailable, match="not found"):
        ks.load(KeyRef("no-such-token", "k", "01"))


def test_missing_module_raises_hsm_unavailable():
    ks = Pkcs11KeyStore("/nonexistent/libpkcs11.so", {"t": lambda: "x"})
    with pytest.raises(HsmUnavailable, match="not found"):
        ks.load(KeyRef("t", "k", "01"))


def test_transient_general_error_while_finding_the_token_is_retried(softhsm_token, monkeypatch):
    """SoftHSM answers CKR_GENERAL_ERROR while another process rewrites its token files."""
    import pkcs11.exceptions as p11e

    from ca.keys import pkcs11 as backend

    token, pin = softhsm_token
    real_lib = backend._open_library(token.module)
    failures = []

    class FlakyLib:
        def get_token(self, **kw):
            if len(failures) < 2:
                failures.append(1)
                raise p11e.GeneralError()
            return real_lib.get_token(**kw)

        def reinitialize(self):
            pass  # the real library stays initialised: other tests' sessions live on it

    monkeypatch.setattr(backend, "_open_library", lambda module: FlakyLib())
    ks = Pkcs11KeyStore(token.module, {token.label: lambda: pin})
    sessions = ks.sessions(token.label)
    with sessions.session() as session:
        assert session is not None
    assert len(failures) == 2


def test_user_pin_not_initialized_during_a_token_rewrite_is_retried_at_login(
    softhsm_token, monkeypatch
):
    """SoftHSM can report CKR_USER_PIN_NOT_INITIALIZED at login while another process rewrites
    the token's files; the login is tried again and succeeds (seen under load in CI)."""
    import pkcs11.exceptions as p11e

    from ca.keys import pkcs11 as backend

    token, pin = softhsm_token
    real_lib = backend._open_library(token.module)
    failures = []

    class FlakyToken:
        def __init__(self, real):
            self.real = real

        def open(self, **kw):
            if len(failures) < 2:
                failures.append(1)
                raise p11e.UserPinNotInitialized()
            return self.real.open(**kw)

        def __getattr__(self, name):
            return getattr(self.real, name)

    class FlakyLib:
        def get_token(self, **kw):
            return FlakyToken(real_lib.get_token(**kw))

        def reinitialize(self):
            pass

    monkeypatch.setattr(backend, "_open_library", lambda module: FlakyLib())
    ks = Pkcs11KeyStore(token.module, {token.label: lambda: pin})
    with ks.sessions(token.label).session() as session:
        assert session is not None
    assert len(failures) == 2
