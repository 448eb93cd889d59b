"""The Ansible role and playbook (``ansible/``): lint-clean, and a real deployment on this machine.

``ansible-playbook -c local`` runs ``ansible/site.yml`` against localhost into a prefix of its own
(a temporary directory holding the venv, the data directory, the environment file, the logs and
the logrotate snippet), as the current user, with service manager ``none``: nothing outside the
prefix changes (no apt, no system user, no systemd unit, no link in /usr/local/bin). Then
``/healthz`` answers, a certificate is issued through the deployed instance (its REST API and its
CLI), a second run reports ``changed=0``, and the processes the role started are stopped.
"""

from __future__ import annotations

import fnmatch
import grp
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa
import yaml
from cryptography import x509
from helpers import make_csr, openssl
from pgcluster import PgCluster

from softhsm import create_token, random_pin, write_pin_file

pytestmark = [pytest.mark.hsm, pytest.mark.db]

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
ROLE = ANSIBLE / "roles" / "hsmca"
BIN = Path(sys.executable).parent
RECAP = re.compile(
    r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not installed (pip install -e '.[test]')")
    pytest.skip(f"{name} is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ansible_env(home: Path) -> dict[str, str]:
    """The caller's environment (pip's index settings included) with Ansible kept in ``home``."""
    env = dict(os.environ)
    for name in list(env):
        if name.startswith(("HSMCA_", "ANSIBLE_", "SOFTHSM2_CONF")):
            del env[name]
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        ANSIBLE_HOME=str(home),
        ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
        ANSIBLE_REMOTE_TEMP=str(home / "tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_CONFIG=str(home / "ansible.cfg"),  # none: ignore any ansible.cfg in the cwd
        PY_COLORS="0",
    )
    return env


@dataclass
class Deployment:
    root: Path
    inventory: Path
    env: dict[str, str]
    extra_args: list[str]
    prefix: Path
    data_dir: Path
    http_port: int
    https_port: int
    first_seconds: float = 0.0
    first_output: str = ""

    @property
    def cli(self) -> str:
        """The operator's command the role installs (settings from the environment file)."""
        return str(self.prefix / "bin" / "hsmca")

    def playbook(self) -> tuple[subprocess.CompletedProcess[str], float]:
        start = time.monotonic()
        result = subprocess.run(
            [
                _tool("ansible-playbook"),
                "-i",
                str(self.inventory),
                "-c",
                "local",
                *self.extra_args,
                str(ANSIBLE / "site.yml"),
            ],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        return result, time.monotonic() - start

    def hsmca(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.cli, *args], capture_output=True, text=True, timeout=120, check=False
        )

    def stop(self) -> None:
        ctl = self.prefix / "bin" / "hsmca-ctl"
        if ctl.exists():
            subprocess.run([str(ctl), "stop"], capture_output=True, timeout=120, check=False)


def _recap(output: str) -> dict[str, int]:
    found = RECAP.findall(output)
    assert len(found) == 1, f"no single PLAY RECAP line in:\n{output[-3000:]}"
    _host, ok, changed, unreachable, failed = found[0]
    return {
        "ok": int(ok),
        "changed": int(changed),
        "unreachable": int(unreachable),
        "failed": int(failed),
    }


def _snapshot_source(dest: Path) -> None:
    """A copy of what the role packs (its hsmca_source_include), so that edits made to the
    checkout while the test runs cannot make the second run install again."""
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    dest.mkdir()
    for name in defaults["hsmca_source_include"]:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


def _require_softhsm() -> None:
    if shutil.which("softhsm2-util") is None:
        if os.environ.get("CI"):
            pytest.fail("softhsm2-util is not installed (apt-get install softhsm2)")
        pytest.skip("SoftHSM2 is not installed")


def _prepare(root: Path, host_vars: dict[str, object], extra_args: list[str]) -> Deployment:
    """An inventory for localhost that deploys into ``root`` as the current user, with
    service manager none: no sudo, no system user, no system paths, no apt."""
    home = root / "ansible-home"
    (home / "tmp").mkdir(parents=True)
    (home / "ansible.cfg").write_text("[defaults]\n")
    src = root / "src"
    _snapshot_source(src)
    prefix = root / "opt"
    data_dir = root / "data"
    http_port, https_port = _free_port(), _free_port()
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    base: dict[str, object] = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "ansible_become": False,
        "hsmca_user": user,
        "hsmca_group": group,
        "hsmca_manage_user": False,
        "hsmca_install_owner": user,
        "hsmca_install_group": group,
        "hsmca_install_packages": False,
        "hsmca_python": "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable,
        "hsmca_prefix": str(prefix),
        "hsmca_data_dir": str(data_dir),
        "hsmca_env_file": str(root / "etc" / "default" / "hsmca"),
        "hsmca_cli_link": "",
        "hsmca_log_dir": str(root / "log"),
        "hsmca_run_dir": str(root / "run"),
        "hsmca_logrotate_file": str(root / "etc" / "logrotate.d" / "hsmca"),
        "hsmca_source": str(src),
        "hsmca_source_archive": str(root / "cache" / "hsmca-src.tar.gz"),
        "hsmca_service_manager": "none",
        "hsmca_bind": f"127.0.0.1:{http_port}",
        "hsmca_https_bind": f"127.0.0.1:{https_port}",
        "hsmca_public_base_url": f"http://127.0.0.1:{http_port}",
        "hsmca_healthcheck_url": f"http://127.0.0.1:{http_port}/healthz",
    }
    exchange = root / "exchange"  # CSRs and certificates of the deployed hsmca (any user)
    exchange.mkdir()
    exchange.chmod(0o1777)
    inventory = root / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"hsmca": {"hosts": {"localhost": {**base, **host_vars}}}}))
    return Deployment(
        root=root,
        inventory=inventory,
        env=_ansible_env(home),
        extra_args=extra_args,
        prefix=prefix,
        data_dir=data_dir,
        http_port=http_port,
        https_port=https_port,
    )


def _first_run(dep: Deployment, label: str) -> None:
    result, seconds = dep.playbook()
    dep.first_seconds, dep.first_output = seconds, result.stdout + result.stderr
    print(f"{label}: first ansible-playbook run {seconds:.1f} s", file=sys.stderr)
    assert result.returncode == 0, dep.first_output[-8000:]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The lab setup: SoftHSM token and SQLite that 'hsmca init' makes in the data directory."""
    _require_softhsm()
    host_vars: dict[str, object] = {
        "hsmca_tls_hostnames": ["localhost", "ca.deploy.test"],
        "hsmca_settings": {"ca": {"organization": "hsmca deploy test"}},
    }
    if os.geteuid() == 0 and _user_exists("nobody"):
        # As root, the services run as an unprivileged user that exists already (no user is
        # created), as they would as hsmca: the role's privilege drops (setpriv in bin/hsmca,
        # start-stop-daemon --chuid in hsmca-ctl) and file ownerships are exercised. That user
        # must reach the prefix, so it is not under pytest's root-only directory.
        root = Path(tempfile.mkdtemp(prefix="hsmca-ansible-lab-", dir="/tmp"))
        root.chmod(0o711)
        host_vars |= {
            "hsmca_user": "nobody",
            "hsmca_group": grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name,
            "hsmca_install_owner": "root",
            "hsmca_install_group": "root",
        }
    else:
        root = tmp_path_factory.mktemp("ansible-lab")
    dep = _prepare(root, host_vars, [])
    try:
        _first_run(dep, "lab")
        yield dep
    finally:
        dep.stop()
        if root.parent == Path("/tmp"):
            shutil.rmtree(root, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@dataclass
class Secrets:
    hsm_pin: str
    root_pin: str
    database_password: str
    database_url: str
    token_dir: Path


@pytest.fixture(scope="module")
def production(
    tmp_path_factory: pytest.TempPathFactory, pg_cluster: PgCluster | None
) -> Iterator[tuple[Deployment, Secrets]]:
    """The production shape: keys in tokens of an existing PKCS#11 module (SoftHSM standing in
    for a network HSM, with the environment it needs), the issuing token's PIN and the database
    password from an ansible-vault file, the root token's PIN from a file already on the host,
    PostgreSQL with password authentication, and the scheduler as a process of its own."""
    _require_softhsm()
    if pg_cluster is None:
        pytest.skip("PostgreSQL not available outside CI")
    root = tmp_path_factory.mktemp("ansible-prod")
    hsm_pin, root_pin = random_pin(), random_pin()
    token = create_token(root / "hsm", "ext-issuing", hsm_pin, random_pin())
    create_token(root / "hsm", "ext-root", root_pin, random_pin())
    root_pin_file = root / "host-secrets" / "root.pin"
    write_pin_file(root_pin_file, root_pin)

    # A role that must log in with its password (scram), on a database of its own.
    name = f"hsmca_deploy_{uuid.uuid4().hex[:8]}"
    password = secrets.token_urlsafe(18) + ":\\x"  # ':' and '\\' need escaping in pgpass
    quoted = password.replace("'", "''")
    engine = sa.create_engine(pg_cluster.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {name} LOGIN PASSWORD '{quoted}'"))
        conn.execute(sa.text(f"CREATE DATABASE {name} OWNER {name}"))
        hba = pg_cluster.datadir / "pg_hba.conf"
        hba.write_text(f"host {name} {name} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        conn.execute(sa.text("SELECT pg_reload_conf()"))
    engine.dispose()
    url = f"postgresql+psycopg://{name}@127.0.0.1:{pg_cluster.port}/{name}"
    with pytest.raises(sa.exc.OperationalError, match="password"):
        sa.create_engine(url).connect().close()  # no password: refused

    dep = _prepare(
        root,
        {
            "hsmca_hsm": "pkcs11",
            "hsmca_hsm_module": token.module,
            "hsmca_hsm_token_label": "ext-issuing",
            "hsmca_hsm_pin": "{{ vault_hsmca_hsm_pin }}",
            "hsmca_hsm_root_token_label": "ext-root",
            "hsmca_hsm_root_pin_file": str(root_pin_file),
            "hsmca_extra_environment": {"SOFTHSM2_CONF": str(token.conf_path)},
            "hsmca_database_url": url,
            "hsmca_database_password": "{{ vault_hsmca_database_password }}",
            "hsmca_scheduler": "separate",
            "hsmca_settings": {"ca": {"organization": "hsmca deploy test"}},
        },
        ["--vault-password-file", str(root / "vault-password")],
    )
    # group_vars next to the inventory, encrypted, as inventory.example.yml describes.
    vault_password = root / "vault-password"
    vault_password.write_text(secrets.token_urlsafe(16) + "\n")
    vault_password.chmod(0o600)
    vault = root / "group_vars" / "hsmca" / "vault.yml"
    vault.parent.mkdir(parents=True)
    vault.write_text(
        yaml.safe_dump({"vault_hsmca_hsm_pin": hsm_pin, "vault_hsmca_database_password": password})
    )
    encrypted = subprocess.run(
        [
            _tool("ansible-vault"),
            "encrypt",
            "--vault-password-file",
            str(vault_password),
            str(vault),
        ],
        env=dep.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert encrypted.returncode == 0, encrypted.stderr
    assert vault.read_text().startswith("$ANSIBLE_VAULT;")
    try:
        _first_run(dep, "production")
        yield dep, Secrets(hsm_pin, root_pin, password, url, token.token_dir)
    finally:
        dep.stop()


@pytest.fixture(scope="module", params=["lab", "production"])
def deployed(request: pytest.FixtureRequest) -> Deployment:
    if request.param == "lab":
        return request.getfixturevalue("deployment")
    dep, _ = request.getfixturevalue("production")
    return dep


def _tls_context(dep: Deployment) -> ssl.SSLContext:
    root_pem = dep.hsmca("ca", "show", "root", "--pem")
    assert root_pem.returncode == 0, root_pem.stderr
    return ssl.create_default_context(cadata=root_pem.stdout)


def test_ansible_lint_is_clean(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")
    result = subprocess.run(
        [_tool("ansible-lint"), "--offline", "--nocolor", "--profile", "production"],
        cwd=ANSIBLE,
        env=_ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_packed_source_holds_every_package() -> None:
    """hsmca_source_include (what the role packs from a checkout) covers pyproject's packages."""
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()}
    wanted = {t for t in tops if any(fnmatch.fnmatch(t, pat) for pat in patterns)}
    assert wanted <= set(defaults["hsmca_source_include"])
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= set(
        defaults["hsmca_source_include"]
    )


def test_the_example_inventory_and_playbook_parse(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")
    env = _ansible_env(tmp_path)
    listed = subprocess.run(
        [_tool("ansible-inventory"), "-i", "inventory.example.yml", "--list"],
        cwd=ANSIBLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    inventory = json.loads(listed.stdout)
    assert set(inventory["hsmca"]["hosts"]) == {"ca-lab.example.org", "ca1.example.org"}
    checked = subprocess.run(
        [_tool("ansible-playbook"), "-i", "inventory.example.yml", "--syntax-check", "site.yml"],
        cwd=ANSIBLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {"hsmca_hsm": "pkcs11", "hsmca_hsm_module": "/usr/lib/vendor/p11.so"},
            "hsmca_hsm is pkcs11",
        ),
        (
            {"hsmca_database_url": "postgresql+psycopg://hsmca:secret@db/hsmca"},
            "without a password",
        ),
        ({"hsmca_database_url": "postgresql+psycopg://hsmca@db/hsmca"}, "hsmca_database_password"),
        ({"hsmca_service_manager": "openrc"}, "hsmca_service_manager must be"),
    ],
    ids=["pkcs11-without-pin", "password-in-url", "postgresql-without-password", "bad-manager"],
)
def test_a_bad_inventory_is_refused_before_anything_changes(
    tmp_path: Path, bad: dict[str, object], message: str
) -> None:
    dep = _prepare(tmp_path, bad, [])
    result, _ = dep.playbook()
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert message in output, output[-3000:]
    assert _recap(output)["changed"] == 0
    assert not dep.prefix.exists() and not dep.data_dir.exists()


# The tests of one setup come first; the tests of both (ending in a second run and stopping the
# processes) after them.


def test_lab_keeps_token_and_database_in_the_data_directory(deployment: Deployment) -> None:
    data = deployment.data_dir
    assert (data / "hsmca.db").is_file()
    assert (data / "softhsm" / "softhsm2.conf").is_file()
    assert sorted(p.name for p in (data / "pins").iterdir()) == ["so.pin", "user.pin"]
    toml = tomllib.loads((data / "hsmca.toml").read_text())
    assert toml["server"]["tls_hostnames"] == ["localhost", "ca.deploy.test"]
    assert toml["server"]["bind"] == f"127.0.0.1:{deployment.http_port}"
    assert toml["hsm"]["softhsm_conf"] == "softhsm/softhsm2.conf"
    assert toml["ca"]["organization"] == "hsmca deploy test"
    # init issued the HTTPS certificate for these names: serve had nothing to renew
    assert "tls_hostnames changed" not in (deployment.root / "log" / "serve.log").read_text()
    served = ssl.get_server_certificate(("127.0.0.1", deployment.https_port))
    cert = x509.load_pem_x509_certificate(served.encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "ca.deploy.test"} <= set(names.get_values_for_type(x509.DNSName))


def test_logrotate_snippet(deployment: Deployment) -> None:
    snippet = deployment.root / "etc" / "logrotate.d" / "hsmca"
    assert str(deployment.root / "log") in snippet.read_text()
    assert sorted(p.name for p in (deployment.root / "log").iterdir()) == ["serve.log"]
    logrotate = shutil.which("logrotate") or (
        "/usr/sbin/logrotate" if Path("/usr/sbin/logrotate").exists() else None
    )
    if logrotate is None:
        if os.environ.get("CI"):
            pytest.fail("logrotate is not installed (tests/run.sh installs it)")
        pytest.skip("logrotate is not installed")
    checked = subprocess.run(
        [logrotate, "--debug", "--state", str(deployment.root / "logrotate.state"), str(snippet)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "error" not in checked.stderr.lower(), checked.stderr


def test_systemd_units_verify(deployment: Deployment) -> None:
    """The units the role installs under systemd (which this test machine does not run),
    rendered from the role's own defaults and vars and checked by systemd-analyze."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    out = deployment.root / "units"
    out.mkdir()
    render = deployment.root / "render-units.yml"
    render.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Render the systemd units of the hsmca role",
                    "hosts": "localhost",
                    "gather_facts": False,
                    "vars_files": [
                        str(ROLE / "defaults" / "main.yml"),
                        str(ROLE / "vars" / "main.yml"),
                    ],
                    "tasks": [
                        {
                            "name": "Render a unit",
                            "ansible.builtin.template": {
                                "src": str(ROLE / "templates" / "hsmca.service.j2"),
                                "dest": f"{out}/{{{{ hsmca_units[item.key] }}}}.service",
                                "mode": "0644",
                            },
                            "loop": "{{ hsmca_daemons | dict2items }}",
                        }
                    ],
                }
            ]
        )
    )
    extra = {
        "ansible_python_interpreter": sys.executable,
        "hsmca_scheduler": "separate",
        "hsmca_venv": str(deployment.prefix / "venv"),  # ExecStart must exist
        "hsmca_database_url": "postgresql+psycopg://hsmca@db.example/hsmca",
        "hsmca_systemd_read_write_paths": ["/srv/witness"],
    }
    rendered = subprocess.run(
        [
            _tool("ansible-playbook"),
            "-c",
            "local",
            "-i",
            "localhost,",
            "-e",
            json.dumps(extra),
            str(render),
        ],
        env=deployment.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    units = sorted(out.glob("*.service"))
    assert [u.name for u in units] == ["hsmca-scheduler.service", "hsmca.service"]
    serve = (out / "hsmca.service").read_text()
    assert "ExecStart=" + str(deployment.prefix / "venv" / "bin" / "hsmca") in serve
    assert "serve --no-scheduler" in serve
    assert "ReadWritePaths=/var/lib/hsmca -/srv/witness\n" in serve
    assert "After=network-online.target postgresql.service\n" in serve
    verify = subprocess.run(
        [analyze, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stdout + verify.stderr


def test_production_uses_the_module_postgresql_and_a_separate_scheduler(
    production: tuple[Deployment, Secrets],
) -> None:
    dep, sec = production
    data = dep.data_dir
    assert not (data / "softhsm").exists() and not (data / "hsmca.db").exists()
    # the keys (root, issuing, OCSP responders, audit) are objects of the existing tokens
    assert len(list(sec.token_dir.glob("*/*.object"))) >= 4
    listed = dep.hsmca("ca", "list")
    assert listed.returncode == 0, listed.stderr
    assert "root" in listed.stdout and "issuing" in listed.stdout
    toml = tomllib.loads((data / "hsmca.toml").read_text())
    assert toml["hsm"]["module"].endswith("libsofthsm2.so")
    assert (toml["hsm"]["token_label"], toml["hsm"]["root_token_label"]) == (
        "ext-issuing",
        "ext-root",
    )
    assert toml["hsm"]["softhsm_conf"] == ""
    assert toml["database"]["url"] == sec.database_url
    engine = sa.create_engine(
        sec.database_url.replace("@", f":{quote(sec.database_password, safe='')}@", 1)
    )
    with engine.connect() as conn:
        tables = conn.execute(
            sa.text("SELECT count(*) FROM information_schema.tables WHERE table_schema='public'")
        ).scalar_one()
    engine.dispose()
    assert tables > 5
    ctl = subprocess.run(
        [str(dep.prefix / "bin" / "hsmca-ctl"), "status"], capture_output=True, text=True
    )
    assert ctl.returncode == 0, ctl.stdout + ctl.stderr
    assert "serve: running" in ctl.stdout and "scheduler: running" in ctl.stdout
    assert sorted(p.name for p in (dep.root / "log").iterdir()) == ["scheduler.log", "serve.log"]


def test_production_keeps_secrets_out_of_files_and_output(
    production: tuple[Deployment, Secrets],
) -> None:
    dep, sec = production
    assert (dep.data_dir / "pins" / "user.pin").read_text().strip() == sec.hsm_pin
    pgpass = (dep.data_dir / "pgpass").read_text()
    assert pgpass.strip() == "*:*:*:*:" + sec.database_password.replace("\\", "\\\\").replace(
        ":", "\\:"
    )
    places = {
        "ansible output": dep.first_output,
        "inventory": dep.inventory.read_text(),
        "vault file": (dep.root / "group_vars" / "hsmca" / "vault.yml").read_text(),
        "environment file": Path(dep.root / "etc" / "default" / "hsmca").read_text(),
        "hsmca.toml": (dep.data_dir / "hsmca.toml").read_text(),
    }
    for log in (dep.root / "log").iterdir():
        places[log.name] = log.read_text()
    for where, text in places.items():
        for secret in (sec.hsm_pin, sec.root_pin, sec.database_password):
            assert secret not in text, f"a secret in the {where}"


def test_first_run_deploys(deployed: Deployment) -> None:
    recap = _recap(deployed.first_output)
    assert recap["failed"] == 0 and recap["unreachable"] == 0
    assert recap["changed"] > 0
    assert (deployed.data_dir / ".hsmca-initialised").is_file()
    assert (deployed.prefix / "venv" / "bin" / "hsmca").is_file()
    assert os.stat(deployed.data_dir).st_mode & 0o777 == 0o700
    for secret in [*(deployed.data_dir / "pins").iterdir(), deployed.data_dir / "pgpass"]:
        if secret.exists():
            assert secret.stat().st_mode & 0o077 == 0, secret
    # the data belongs to the service user, the programs to their owner, the processes run as
    # the service user
    host = yaml.safe_load(deployed.inventory.read_text())["hsmca"]["hosts"]["localhost"]
    uid = pwd.getpwnam(host["hsmca_user"]).pw_uid
    for path in [deployed.data_dir, *deployed.data_dir.rglob("*")]:
        assert path.lstat().st_uid == uid, path
    owner = pwd.getpwnam(host["hsmca_install_owner"]).pw_uid
    for path in [deployed.prefix / "bin" / "hsmca", deployed.prefix / "venv" / "bin" / "python"]:
        assert path.lstat().st_uid == owner, path
    pids = [int(p.read_text()) for p in (deployed.root / "run").glob("*.pid")]
    assert pids
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.M)
        assert uids and {int(uids[1]), int(uids[2])} == {uid}, status


def test_healthz_answers(deployed: Deployment) -> None:
    url = f"http://127.0.0.1:{deployed.http_port}/healthz"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
    https = f"https://localhost:{deployed.https_port}/healthz"
    with urllib.request.urlopen(https, timeout=10, context=_tls_context(deployed)) as response:
        assert response.status == 200


def test_issue_through_the_rest_api(deployed: Deployment, tmp_path: Path) -> None:
    added = deployed.hsmca(
        "client", "add", "deploy-test", "--role", "enroll", "--profile", "server"
    )
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip().splitlines()[-1]
    csr = make_csr(["web.deploy.test"]).decode()
    request = urllib.request.Request(
        f"https://localhost:{deployed.https_port}/api/v1/certificates",
        data=json.dumps({"profile": "server", "csr": csr}).encode(),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/pem-certificate-chain",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30, context=_tls_context(deployed)) as resp:
        assert resp.status == 201, resp.status
        chain = resp.read()
    leaf = x509.load_pem_x509_certificate(chain)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["web.deploy.test"]
    assert "hsmca deploy test" in leaf.issuer.rfc4514_string()  # hsmca_settings reached init
    (tmp_path / "chain.pem").write_bytes(chain)
    (tmp_path / "root.pem").write_text(deployed.hsmca("ca", "show", "root", "--pem").stdout)
    verify = openssl(
        "verify",
        "-CAfile",
        str(tmp_path / "root.pem"),
        "-untrusted",
        str(tmp_path / "chain.pem"),
        str(tmp_path / "chain.pem"),
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_issue_through_the_deployed_cli(deployed: Deployment) -> None:
    exchange = deployed.root / "exchange"  # bin/hsmca runs as hsmca_user: files it can reach
    (exchange / "cli.csr").write_bytes(make_csr(["cli.deploy.test"]))
    (exchange / "cli.csr").chmod(0o644)
    out = exchange / "cli.pem"
    issued = deployed.hsmca(
        "issue", "--csr", str(exchange / "cli.csr"), "--profile", "server", "--out", str(out)
    )
    assert issued.returncode == 0, issued.stderr
    serial = f"{x509.load_pem_x509_certificate(out.read_bytes()).serial_number:x}"
    shown = deployed.hsmca("cert", "show", serial)
    assert shown.returncode == 0, shown.stderr
    assert "cli.deploy.test" in shown.stdout
    audit = deployed.hsmca("audit", "verify")
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_second_run_changes_nothing(deployed: Deployment) -> None:
    result, seconds = deployed.playbook()
    print(
        f"ansible-playbook: first run {deployed.first_seconds:.1f} s, second run {seconds:.1f} s",
        file=sys.stderr,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    recap = _recap(output)
    changed = re.findall(r"^changed: \[.*$|^TASK \[.*$", output, re.M)
    assert recap["changed"] == 0, "\n".join(changed)
    with urllib.request.urlopen(
        f"http://127.0.0.1:{deployed.http_port}/healthz", timeout=10
    ) as response:
        assert response.status == 200


def test_a_changed_inventory_restarts_the_processes(deployed: Deployment) -> None:
    """A new hsmca, a setting and the scheduler's place change: the role installs hsmca again,
    applies its migrations, rewrites what the rest touches and restarts; the scheduler moves out
    of serve (lab) or back into it (production)."""
    marker = deployed.root / "src" / "hsmca" / "__init__.py"
    marker.write_text(marker.read_text() + "# a new release\n")
    inventory = yaml.safe_load(deployed.inventory.read_text())
    host = inventory["hsmca"]["hosts"]["localhost"]
    separate = host.get("hsmca_scheduler", "embedded") == "separate"
    host["hsmca_scheduler"] = "embedded" if separate else "separate"
    host["hsmca_settings"] = {**host.get("hsmca_settings", {}), "crl": {"validity_hours": 72}}
    deployed.inventory.write_text(yaml.safe_dump(inventory))
    run_dir = deployed.root / "run"
    old_pids = {p.stem: int(p.read_text()) for p in run_dir.glob("*.pid")}
    assert set(old_pids) == ({"serve", "scheduler"} if separate else {"serve"})

    result, _ = deployed.playbook()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert _recap(output)["changed"] > 0
    assert "RUNNING HANDLER [hsmca : Restart the hsmca processes]" in output
    for task in ("Install hsmca from the source archive", "Apply the database migrations"):
        assert re.search(rf"TASK \[hsmca : {task}[^\n]*\nchanged: ", output), task
    installed = deployed.prefix / "venv" / "lib"
    assert any(
        p.read_text().endswith("# a new release\n")
        for p in installed.glob("python3*/site-packages/hsmca/__init__.py")
    )
    env_file = (deployed.root / "etc" / "default" / "hsmca").read_text()
    assert "HSMCA_CRL_VALIDITY_HOURS='72'" in env_file
    new_pids = {p.stem: int(p.read_text()) for p in run_dir.glob("*.pid")}
    assert set(new_pids) == ({"serve"} if separate else {"serve", "scheduler"})
    for name, pid in old_pids.items():
        assert new_pids.get(name) != pid, f"{name} was not restarted"
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with urllib.request.urlopen(
        f"http://127.0.0.1:{deployed.http_port}/healthz", timeout=10
    ) as response:
        assert response.status == 200


def test_processes_stop(deployed: Deployment) -> None:
    ctl = str(deployed.prefix / "bin" / "hsmca-ctl")
    status = subprocess.run([ctl, "status"], capture_output=True, text=True, timeout=30)
    assert status.returncode == 0, status.stdout + status.stderr
    stopped = subprocess.run([ctl, "stop"], capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    status = subprocess.run([ctl, "status"], capture_output=True, text=True, timeout=30)
    assert status.returncode == 3, status.stdout + status.stderr
    for port in (deployed.http_port, deployed.https_port):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
