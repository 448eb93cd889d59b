#!/usr/bin/env bash
# Set up and run the whole hsmca test suite on a fresh Debian machine (as root, or with sudo).
# Installs the apt packages the tests use (SoftHSM2, OpenSC, OpenSSL, PostgreSQL 15, nginx), makes a
# virtualenv in .venv, installs hsmca with its test extras, then runs lint, types and pytest.
# The tests start their own throwaway PostgreSQL cluster and SoftHSM token and remove them after.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
# lego (Debian) is one of the ACME clients tests/interop/test_acme_clients.py runs.
# chromium (Debian) is the headless browser of tests/interop/test_ui_browser.py (via Playwright).
# logrotate checks the snippet the Ansible role writes (tests/deploy/test_ansible.py).
# prometheus provides promtool, which checks docs/monitoring/alerts.yml (tests/unit/test_monitoring_docs.py).
for pkg in softhsm2 opensc openssl postgresql python3-venv lego chromium logrotate prometheus; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
# nginx staples our OCSP responses in tests/interop/test_nginx_stapling.py (any nginx build will do).
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
if [ "${#need[@]}" -gt 0 ]; then
  echo "== apt: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "== venv: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
echo "== pip: installing hsmca[test]"
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'

echo "== ruff"
.venv/bin/ruff check ca ocsp crl web hsmca softhsm tests bench
echo "== mypy (ca, ocsp, crl)"
.venv/bin/mypy
echo "== pytest"
# Screenshots of the browser tests (and other kept artifacts) land here, outside the temp dirs.
export TEST_ARTIFACTS_DIR="${TEST_ARTIFACTS_DIR:-$PWD/test-artifacts}"
exec .venv/bin/pytest -p no:cacheprovider "$@"
