"""Fixtures for tests against a real gunicorn server (see ``tests/live.py``).

``live_api`` is one initialised CA (SoftHSM token, database, root and issuing CA) served by
gunicorn for a whole test module. A module tunes it by overriding two module-scoped fixtures:

``live_database_backend``  ``sqlite`` or ``postgresql`` (here: both, as module parameters)
``live_config_extra``      TOML appended to the test configuration (profiles, ``[api]`` limits)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import CaEnv, make_ca_env, write_config
from live import LiveServer, start_server

from ca.audit import AuditEntry, verify_chain
from ca.clients import create_client
from ca.store import tables as t
from softhsm import SoftHsmToken


@dataclass
class LiveApi:
    """A CA served by gunicorn, and the test process's own view of its database and token."""

    env: CaEnv
    server: LiveServer
    database_url: str

    def url(self, path: str) -> str:
        return self.server.url(path)

    def add_client(
        self,
        name: str,
        roles: Sequence[str],
        profiles: Sequence[str] = (),
        names: Sequence[str] = (),
    ) -> str:
        """Create an API client (as the CLI would) and return its bearer token."""
        _, token = create_client(self.env.auth, name, roles, profiles, names, actor="test")
        return token

    def counts(self) -> dict[str, int]:
        db = self.env.auth.db
        return {
            "certificates": db.count(t.Certificate),
            "intents": db.count(t.IssuanceIntent),
        }

    def audit_seq(self) -> int:
        """The sequence number of the newest audit event."""
        return max((e.seq for e in self.env.auth.db.audit_entries()), default=0)

    def audit_since(self, seq: int) -> list[AuditEntry]:
        return list(self.env.auth.db.audit_entries(after_seq=seq))

    def verify_audit_chain(self) -> int:
        return verify_chain(self.env.auth.db.audit_entries())


_NO_IP_LIMIT = {"HSMCA_ACME_NEW_ACCOUNTS_PER_IP_PER_HOUR": "0"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live_database_backend(request: pytest.FixtureRequest) -> str:
    """The store behind ``live_api``; a module may override this with one backend."""
    return str(request.param)


@pytest.fixture(scope="module")
def live_config_extra() -> str:
    """TOML appended to the live server's configuration; modules override it."""
    return ""


@pytest.fixture(scope="module")
def live_database_url(
    request: pytest.FixtureRequest,
    live_database_backend: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    if live_database_backend == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('live-db') / 'hsmca.db'}"
    cluster = request.getfixturevalue("pg_cluster")
    if cluster is None:
        pytest.skip("PostgreSQL not available outside CI")
    return str(cluster.create_database("live"))


@pytest.fixture(scope="module")
def live_api(
    softhsm_token: tuple[SoftHsmToken, str],
    live_database_url: str,
    live_config_extra: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveApi]:
    """An initialised CA served by a real gunicorn (2 workers x 8 threads) on 127.0.0.1."""
    token, pin = softhsm_token
    env = make_ca_env(tmp_path_factory.mktemp("live"), token, pin, live_database_url)
    if live_config_extra:
        write_config(env.data_dir, token, live_database_url, extra=live_config_extra)
    # Every test connects from 127.0.0.1: no per-IP account limit unless the module sets one.
    limits = {} if "new_accounts_per_ip_per_hour" in live_config_extra else _NO_IP_LIMIT
    server = start_server(Path(env.data_dir), workers=2, threads=8, env=limits)
    try:
        yield LiveApi(env, server, live_database_url)
    finally:
        server.stop()
        env.auth.db.dispose()
