"""Shared fixtures: a real SoftHSM2 token per test session, real SQLite and PostgreSQL databases,
and a fully initialised CA (root + issuing intermediate) built by our own ceremony code."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import CaEnv, make_ca_env  # noqa: E402
from pgcluster import PgCluster, start_cluster  # noqa: E402

from softhsm import SoftHsmToken, create_token, random_pin  # noqa: E402


@pytest.fixture(scope="session")
def softhsm_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SoftHsmToken, str]]:
    """A fresh SoftHSM2 token for this test session (labels 'hsmca' and 'hsmca-root')."""
    directory = tmp_path_factory.mktemp("softhsm")
    user_pin = random_pin()
    token = create_token(directory, "hsmca", user_pin, random_pin())
    create_token(directory, "hsmca-root", user_pin, random_pin())
    # Must be set before the PKCS#11 library is first loaded in this process.
    os.environ["SOFTHSM2_CONF"] = str(token.conf_path)
    yield token, user_pin


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster | None]:
    """The throwaway PostgreSQL 15 cluster (None when unavailable and not running in CI)."""
    try:
        cluster = start_cluster()
    except RuntimeError as exc:
        if os.environ.get("CI"):
            raise
        print(f"PostgreSQL unavailable: {exc}", file=sys.stderr)
        yield None
        return
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: SQLite in tmp_path, or a new database on the test cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hsmca.db'}"
    cluster = request.getfixturevalue("pg_cluster")
    if cluster is None:
        pytest.skip("PostgreSQL not available outside CI")
    return cluster.create_database("t")


@pytest.fixture
def ca_env(
    softhsm_token: tuple[SoftHsmToken, str], database_url: str, tmp_path: Path
) -> Iterator[CaEnv]:
    """An initialised CA (root on its own token, issuing CA 'issuing') on SQLite and PostgreSQL."""
    token, pin = softhsm_token
    env = make_ca_env(tmp_path, token, pin, database_url)
    yield env
    env.auth.db.dispose()


@pytest.fixture
def sqlite_ca_env(softhsm_token: tuple[SoftHsmToken, str], tmp_path: Path) -> Iterator[CaEnv]:
    """An initialised CA on SQLite only (for tests of CLI and files)."""
    token, pin = softhsm_token
    env = make_ca_env(tmp_path, token, pin, f"sqlite:///{tmp_path / 'hsmca.db'}")
    yield env
    env.auth.db.dispose()
