"""The Flask app against a real CA: AIA endpoints, readiness, HSM outage as 503."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cryptography import x509

from web import create_app

pytestmark = [pytest.mark.hsm]


def test_ca_certificate_endpoints_serve_der_and_pem(sqlite_ca_env):
    app = create_app(sqlite_ca_env.config, lambda cfg: sqlite_ca_env.auth)
    client = app.test_client()
    der = client.get("/ca/issuing.crt")
    assert der.status_code == 200 and der.mimetype == "application/pkix-cert"
    pem = client.get("/ca/issuing.pem")
    assert x509.load_der_x509_certificate(der.data) == x509.load_pem_x509_certificate(pem.data)
    missing = client.get("/ca/none.crt")
    assert missing.status_code == 404 and missing.mimetype == "application/problem+json"
    assert client.post("/healthz").status_code == 405


READYZ_SCRIPT = """
import json, sys
from pathlib import Path
from ca.config import load_config
from web import create_app
app = create_app(load_config(Path(sys.argv[1])))
client = app.test_client()
ready = client.get("/readyz")
print(json.dumps({"status": ready.status_code, "retry": ready.headers.get("Retry-After"),
                  "body": ready.get_data(as_text=True), "health": client.get("/healthz").status_code}))
"""


def test_readyz_reports_hsm_outage_as_503_without_leaking_the_pin(sqlite_ca_env, tmp_path):
    # A fresh process: PKCS#11 login state is per process, and this one is already logged in.
    script = tmp_path / "readyz.py"
    script.write_text(READYZ_SCRIPT)
    env = {**os.environ, "HSMCA_HSM_PIN": "not-the-pin-42"}
    proc = subprocess.run(
        [sys.executable, str(script), str(sqlite_ca_env.data_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == 503 and result["retry"] == "5"
    body = json.loads(result["body"])
    assert body["checks"]["database"] == "ok"
    assert "refused" in body["checks"]["hsm"]
    assert "not-the-pin-42" not in proc.stdout + proc.stderr
    assert result["health"] == 200  # liveness does not depend on the HSM
