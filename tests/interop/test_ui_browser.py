"""The compliance view in a real headless Chromium (Debian's ``chromium``, driven by Playwright
with ``executable_path``; no browser download) against ``hsmca serve`` over HTTPS.

A failed sign-in, a sign-in, the dashboard, filtering audit events, a certificate's audit
trail, chain verification and an export download, as a compliance officer would click through
them. The page must work under its own Content-Security-Policy: any CSP violation the browser
reports fails the test. Screenshots go to ``$TEST_ARTIFACTS_DIR`` (else the test's tmp_path)
and their paths are printed.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import make_csr
from serve import HSMCA, Server, clean_env, run, start_server

pytestmark = [pytest.mark.hsm, pytest.mark.interop]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "officer-long-passphrase-1"


@dataclass
class Site:
    server: Server
    data: Path
    serial: str  # a certificate issued and then revoked
    artifacts: Path


def _cli(data: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [HSMCA, "--data-dir", str(data), *args],
        input=stdin,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright (pip) is not installed")
    base = tmp_path_factory.mktemp("ui-browser")
    data = base / "data"
    proc = run(data, "init")
    assert proc.returncode == 0, proc.stderr
    _cli(data, "user", "add", "officer", "--role", "auditor", stdin=PASSWORD + "\n")
    csr = base / "req.csr"
    csr.write_bytes(make_csr(["payroll.browser.test"]))
    out = base / "cert.pem"
    _cli(data, "issue", "--csr", str(csr), "--profile", "server", "--out", str(out))
    from cryptography import x509

    serial = format(x509.load_pem_x509_certificate(out.read_bytes()).serial_number, "x")
    _cli(data, "revoke", serial, "--reason", "superseded")
    artifacts = Path(os.environ.get("TEST_ARTIFACTS_DIR") or base / "screenshots")
    artifacts.mkdir(parents=True, exist_ok=True)
    server = start_server(data, base)
    try:
        yield Site(server, data, serial, artifacts)
    finally:
        server.stop()


def test_a_compliance_officer_signs_in_filters_opens_a_trail_verifies_and_exports(site, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url = site.server.https
    shots: list[Path] = []
    csp_violations: list[str] = []

    def shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
        path = site.artifacts / f"ui-{len(shots) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        shots.append(path)
        print(f"screenshot: {path}")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            # The HTTPS certificate is issued by this test's own root, unknown to Chromium.
            context = browser.new_context(ignore_https_errors=True, accept_downloads=True)
            page = context.new_page()
            page.on(
                "console",
                lambda msg: (
                    csp_violations.append(msg.text)
                    if "Content Security Policy" in msg.text
                    else None
                ),
            )

            # 1. Not signed in: the sign-in page. A wrong password is refused.
            page.goto(f"{url}/ui")
            expect(page).to_have_url(re.compile(r"/ui/login\?next=/ui$"))
            shot(page, "sign-in")
            page.fill("#name", "officer")
            page.fill("#password", "not-the-password-at-all")
            page.click("#sign-in")
            expect(page.locator("#login-error")).to_have_text("Wrong name or password.")
            shot(page, "failed-sign-in")

            # 2. The right password: the dashboard.
            page.fill("#password", PASSWORD)
            page.click("#sign-in")
            expect(page).to_have_url(re.compile(r"/ui$"))
            expect(page.locator("#count-revoked")).to_have_text("1")
            expect(page.locator("#chain-status")).to_contain_text("OK")
            cookies = {c["name"]: c for c in context.cookies()}
            session = cookies["__Host-hsmca-ui"]
            assert session["secure"] and session["httpOnly"] and session["sameSite"] == "Strict"
            shot(page, "dashboard")

            # 3. The audit log, filtered to this certificate's revocation.
            page.click("text=Audit log")
            page.fill("#f-action", "certificate.revoked")
            page.fill("#f-subject", site.serial)
            page.click("#apply-filters")
            rows = page.locator("table.events tbody tr")
            expect(rows).to_have_count(1)
            expect(rows.first.locator("td.action")).to_have_text("certificate.revoked")
            expect(rows.first.locator("td.subject")).to_have_text(site.serial)
            rows.first.locator("summary").click()
            expect(rows.first.locator("pre.json")).to_contain_text('"reason": "superseded"')
            shot(page, "audit-filtered")

            # 4. The certificate inventory, then the certificate's page and trail.
            page.click("text=Certificates")
            page.fill("#f-q", "payroll.browser")
            page.click("#search")
            page.click(f"a:has-text('{site.serial}')")
            expect(page.locator("h1")).to_contain_text(site.serial)
            expect(page.locator("#cert-status")).to_have_text("revoked")
            trail = page.locator("#trail td.action")
            expect(trail).to_have_text(
                ["certificate.requested", "certificate.issued", "certificate.revoked"]
            )
            shot(page, "certificate-trail")
            with page.expect_download() as pem_download:
                page.click("#pem-download")
            pem = Path(pem_download.value.path()).read_text()
            assert pem.startswith("-----BEGIN CERTIFICATE-----")

            # 5. Verify the whole chain.
            page.click("text=Audit log")
            page.click("#verify-chain")
            expect(page.locator("#verify-result")).to_contain_text("Intact")
            shot(page, "verify")

            # 6. Download an export bundle.
            page.click("text=Audit log")
            with page.expect_download() as export_download:
                page.click("#export-link")
            download = export_download.value
            saved = tmp_path / download.suggested_filename
            download.save_as(saved)
            assert saved.name.startswith("hsmca-audit-") and saved.suffix == ".zip"
            bundle = zipfile.ZipFile(io.BytesIO(saved.read_bytes()))
            manifest = json.loads(bundle.read("manifest.json"))
            events = [json.loads(line) for line in bundle.read("events.jsonl").splitlines()]
            assert len(events) == manifest["counts"]["events"]
            assert any(
                e["action"] == "certificate.revoked" and e["subject"] == site.serial for e in events
            )
            assert any(e["action"] == "ui.login.failed" for e in events)

            # 7. Sign out: back to the sign-in page, and the pages are closed again.
            page.click("#sign-out")
            expect(page).to_have_url(re.compile(r"/ui/login$"))
            page.goto(f"{url}/ui/audit")
            expect(page).to_have_url(re.compile(r"/ui/login"))
            shot(page, "signed-out")
        finally:
            browser.close()

    assert not csp_violations, csp_violations
    assert all(p.stat().st_size > 1000 for p in shots)
    audit = _cli(site.data, "audit", "verify")
    assert "OK" in audit.stdout
