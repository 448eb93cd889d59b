"""Configuration: TOML + HSMCA_* overrides, strictness, PIN sources, and rendering."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ca.config import (
    AppConfig,
    ProfileConfig,
    load_config,
    pin_sources,
    read_pin_file,
    render_toml,
)
from ca.errors import ConfigError


def _write(data_dir: Path, text: str) -> Path:
    path = data_dir / "hsmca.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _pin(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return path


# --- loading ----------------------------------------------------------------------------------


def test_missing_file_gives_the_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={})
    assert config.data_dir == tmp_path.resolve()
    assert config.server.workers == 1
    assert config.hsm.token_label == "hsmca"
    assert set(config.profiles) == {"server", "client"}
    assert config.database_url == f"sqlite:///{tmp_path.resolve() / 'hsmca.db'}"
    assert config.root_token_label == "hsmca"


def test_file_values_are_loaded(tmp_path: Path) -> None:
    _write(
        tmp_path,
        """
[server]
workers = 5
public_base_url = "http://pki.example/"
[hsm]
token_label = "issuing"
root_token_label = "offline-root"
[ca]
root_key = "rsa:4096"
[profiles.web]
validity_days = 30
extended_key_usage = ["serverAuth", "clientAuth"]
""",
    )
    config = load_config(tmp_path, environ={})
    assert config.server.workers == 5
    assert config.server.public_base_url == "http://pki.example"
    assert config.root_token_label == "offline-root"
    assert config.ca.root_key == "rsa:4096"
    assert config.profiles["web"].validity_days == 30
    assert config.profiles["web"].extended_key_usage == ["serverAuth", "clientAuth"]
    # A [profiles] table replaces the defaults rather than merging with them.
    assert set(config.profiles) == {"web"}


def test_explicit_path_is_read_instead_of_the_data_dir_file(tmp_path: Path) -> None:
    _write(tmp_path, "[server]\nworkers = 3\n")
    other = tmp_path / "other.toml"
    other.write_text("[server]\nworkers = 7\n", encoding="utf-8")
    assert load_config(tmp_path, environ={}, path=other).server.workers == 7


def test_hsmca_config_env_names_the_file(tmp_path: Path) -> None:
    _write(tmp_path, "[server]\nworkers = 3\n")
    other = tmp_path / "elsewhere.toml"
    other.write_text("[server]\nworkers = 9\n", encoding="utf-8")
    assert load_config(tmp_path, environ={"HSMCA_CONFIG": str(other)}).server.workers == 9


@pytest.mark.parametrize(
    ("name", "value", "section", "key", "expected"),
    [
        ("HSMCA_SERVER_WORKERS", "8", "server", "workers", 8),
        ("HSMCA_SERVER_PUBLIC_BASE_URL", "http://pki.example/", "server", "public_base_url",
         "http://pki.example"),
        ("HSMCA_DATABASE_ECHO", "true", "database", "echo", True),
        ("HSMCA_DATABASE_URL", "postgresql+psycopg://db/hsmca", "database", "url",
         "postgresql+psycopg://db/hsmca"),
        ("HSMCA_HSM_ROOT_TOKEN_LABEL", "roots", "hsm", "root_token_label", "roots"),
        ("HSMCA_HSM_POOL_SIZE", "9", "hsm", "pool_size", 9),
        ("HSMCA_CA_INTERMEDIATE_KEY", "rsa:3072", "ca", "intermediate_key", "rsa:3072"),
    ],
    ids=["ok/int", "ok/url", "ok/bool", "ok/str", "ok/underscored-key", "ok/hsm-int", "ok/key-spec"],
)  # fmt: skip
def test_env_override_sets_section_key(
    tmp_path: Path, name: str, value: str, section: str, key: str, expected: object
) -> None:
    config = load_config(tmp_path, environ={name: value})
    assert getattr(getattr(config, section), key) == expected


def test_env_override_beats_the_file(tmp_path: Path) -> None:
    _write(tmp_path, '[server]\nworkers = 3\nbind = "0.0.0.0:80"\n')
    config = load_config(tmp_path, environ={"HSMCA_SERVER_WORKERS": "6"})
    assert config.server.workers == 6
    assert config.server.bind == "0.0.0.0:80"


def test_env_override_keeps_the_profiles_from_the_file(tmp_path: Path) -> None:
    _write(tmp_path, "[profiles.web]\nvalidity_days = 30\n")
    config = load_config(tmp_path, environ={"HSMCA_SERVER_WORKERS": "6"})
    assert set(config.profiles) == {"web"}
    assert config.profiles["web"].validity_days == 30


def test_special_and_foreign_env_names_are_not_overrides(tmp_path: Path) -> None:
    environ = {
        "HSMCA_HOME": "/somewhere",
        "HSMCA_HSM_PIN": "1234",
        "HSMCA_HSM_ROOT_PIN": "5678",
        "HSMCA_TEST_KEEP": "1",
        "PATH": "/bin",
        "XHSMCA_SERVER_WORKERS": "7",
    }
    assert load_config(tmp_path, environ=environ) == load_config(tmp_path, environ={})


@pytest.mark.parametrize(
    "name",
    [
        "HSMCA_SERVER_WORKERZ",
        "HSMCA_NOPE_KEY",
        "HSMCA_PROFILES_SERVER_VALIDITY_DAYS",
        "HSMCA_SERVER",
    ],
    ids=[
        "fail/unknown-key",
        "fail/unknown-section",
        "fail/profiles-not-overridable",
        "fail/no-key",
    ],
)
def test_unknown_env_override_is_refused_by_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config(tmp_path, environ={name: "1"})


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("HSMCA_SERVER_WORKERS", "many", "server.workers"),
        ("HSMCA_SERVER_WORKERS", "0", "server.workers"),
        ("HSMCA_SERVER_PUBLIC_BASE_URL", "https://pki.example", "server.public_base_url"),
        ("HSMCA_CA_ROOT_KEY", "ec:P-521", "ca.root_key"),
    ],
    ids=["fail/not-int", "fail/below-minimum", "fail/https-url", "fail/bad-key-spec"],
)
def test_bad_env_value_is_refused_naming_the_key(
    tmp_path: Path, name: str, value: str, key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={name: value})
    assert str(info.value).startswith("environment: ")
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[server]\nworkerz = 4\n", "unknown key 'server.workerz'"),
        ("[serverx]\nworkers = 4\n", "unknown key 'serverx'"),
        ("top = 1\n", "unknown key 'top'"),
        ("[profiles.web]\ncolour = \"blue\"\n", "unknown key 'profiles.web.colour'"),
        ("[server]\nbind = 8080\n", "server.bind"),
        ("[server]\nworkers = \"many\"\n", "server.workers"),
        ("[server]\nworkers = 0\n", "server.workers"),
        ("[hsm]\npool_size = 65\n", "hsm.pool_size"),
        ("[server]\npublic_base_url = \"https://pki.example\"\n", "server.public_base_url"),
        ("[ca]\nroot_key = \"ec:P-521\"\n", "ca.root_key"),
        ("[profiles.web]\nkey_types = \"ec:P-256\"\n", "profiles.web.key_types"),
        ("[profiles.web]\nvalidity_days = 400\n", "profiles.web.validity_days"),
        ("[profiles.web]\nextended_key_usage = [\"anyThing\"]\n",
         "profiles.web.extended_key_usage"),
        ("data_dir = \"/elsewhere\"\n", "'data_dir'"),
        ("[server\n", "not valid TOML"),
    ],
    ids=[
        "fail/unknown-key", "fail/unknown-section", "fail/unknown-top-level",
        "fail/unknown-profile-key", "fail/int-for-str", "fail/str-for-int", "fail/below-minimum",
        "fail/above-maximum", "fail/https-url", "fail/bad-key-spec", "fail/str-for-list",
        "fail/validity-over-max", "fail/unknown-eku", "fail/data-dir-in-file", "fail/bad-toml",
    ],
)  # fmt: skip
def test_bad_file_is_refused_naming_the_key(tmp_path: Path, text: str, needle: str) -> None:
    _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={})
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[server]\nworkers = "4"\n', "server.workers"),
        ("[server]\nworkers = 4.0\n", "server.workers"),
        ("[database]\necho = 1\n", "database.echo"),
        ('[database]\necho = "true"\n', "database.echo"),
        ("[profiles.web]\nrequire_san = 0\n", "profiles.web.require_san"),
    ],
    ids=["fail/quoted-int", "fail/float-for-int", "fail/int-for-bool", "fail/str-for-bool",
         "fail/profile-int-for-bool"],
)  # fmt: skip
def test_wrongly_typed_file_value_is_refused_not_coerced(
    tmp_path: Path, text: str, key: str
) -> None:
    _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={})
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("1", True), ("Yes", True), ("on", True), ("false", False),
     ("0", False), ("no", False), ("OFF", False)],
    ids=["ok/true", "ok/1", "ok/Yes", "ok/on", "ok/false", "ok/0", "ok/no", "ok/OFF"],
)  # fmt: skip
def test_env_booleans_accept_the_usual_spellings(
    tmp_path: Path, value: str, expected: bool
) -> None:
    config = load_config(tmp_path, environ={"HSMCA_DATABASE_ECHO": value})
    assert config.database.echo is expected


@pytest.mark.parametrize("value", ["maybe", "", "2"], ids=["fail/maybe", "fail/empty", "fail/2"])
def test_env_boolean_that_is_not_one_is_refused_naming_the_variable(
    tmp_path: Path, value: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={"HSMCA_DATABASE_ECHO": value})
    assert "HSMCA_DATABASE_ECHO" in str(info.value)
    assert "database.echo" in str(info.value)


def test_env_override_keeps_the_data_dir(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={"HSMCA_SERVER_WORKERS": "3"})
    assert config.data_dir == tmp_path.resolve()
    assert config.server.workers == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [("pins/user.pin", "DATA/pins/user.pin"), ("/etc/hsmca/user.pin", "/etc/hsmca/user.pin")],
    ids=["ok/relative-to-data-dir", "ok/absolute"],
)
def test_config_paths_are_relative_to_the_data_dir(
    tmp_path: Path, value: str, expected: str
) -> None:
    config = load_config(tmp_path, environ={})
    assert str(config.path(value)) == expected.replace("DATA", str(tmp_path.resolve()))


# --- PINs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o400], ids=["ok/0600", "ok/0400"])
def test_pin_file_with_owner_only_mode_is_read_and_stripped(tmp_path: Path, mode: int) -> None:
    path = _pin(tmp_path / "user.pin", "  98765\n", mode)
    assert read_pin_file(path) == "98765"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602], ids=lambda m: f"fail/{m:04o}")
def test_pin_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = _pin(tmp_path / "user.pin", "98765", mode)
    with pytest.raises(ConfigError) as info:
        read_pin_file(path)
    assert "0600" in str(info.value)
    assert f"{mode:04o}" in str(info.value)
    assert "98765" not in str(info.value)


@pytest.mark.parametrize("text", ["", "  \n\t\n"], ids=["fail/empty", "fail/whitespace"])
def test_empty_pin_file_is_refused(tmp_path: Path, text: str) -> None:
    path = _pin(tmp_path / "user.pin", text)
    with pytest.raises(ConfigError, match="empty"):
        read_pin_file(path)


def test_missing_pin_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_pin_file(tmp_path / "nope.pin")


def test_pin_sources_prefer_the_environment(tmp_path: Path) -> None:
    _pin(tmp_path / "pins" / "user.pin", "from-file")
    config = load_config(tmp_path, environ={})
    sources = pin_sources(config, environ={"HSMCA_HSM_PIN": "from-env"})
    assert list(sources) == ["hsmca"]
    assert sources["hsmca"]() == "from-env"


@pytest.mark.parametrize(
    "environ", [{}, {"HSMCA_HSM_PIN": ""}], ids=["ok/unset", "ok/empty-env-ignored"]
)
def test_pin_sources_fall_back_to_the_pin_file(tmp_path: Path, environ: dict[str, str]) -> None:
    _pin(tmp_path / "pins" / "user.pin", "from-file\n")
    config = load_config(tmp_path, environ={})
    assert pin_sources(config, environ=environ)["hsmca"]() == "from-file"


def test_pin_sources_read_the_file_only_when_called(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={})
    source = pin_sources(config, environ={})["hsmca"]  # no PIN file yet: no error
    _pin(tmp_path / "pins" / "user.pin", "late")
    assert source() == "late"


def test_pin_sources_give_a_separate_root_token_its_own_pin(tmp_path: Path) -> None:
    _write(tmp_path, '[hsm]\nroot_token_label = "root-token"\nroot_pin_file = "pins/root.pin"\n')
    _pin(tmp_path / "pins" / "user.pin", "user-pin")
    _pin(tmp_path / "pins" / "root.pin", "root-pin")
    config = load_config(tmp_path, environ={})
    from_files = pin_sources(config, environ={})
    assert set(from_files) == {"hsmca", "root-token"}
    assert from_files["hsmca"]() == "user-pin"
    assert from_files["root-token"]() == "root-pin"
    from_env = pin_sources(config, environ={"HSMCA_HSM_ROOT_PIN": "env-root"})
    assert from_env["root-token"]() == "env-root"
    assert from_env["hsmca"]() == "user-pin"


def test_root_token_without_its_own_pin_file_uses_the_user_pin_file(tmp_path: Path) -> None:
    _write(tmp_path, '[hsm]\nroot_token_label = "root-token"\n')
    _pin(tmp_path / "pins" / "user.pin", "shared")
    config = load_config(tmp_path, environ={})
    assert pin_sources(config, environ={})["root-token"]() == "shared"


# --- rendering --------------------------------------------------------------------------------


def _round_trip(config: AppConfig, data_dir: Path) -> AppConfig:
    _write(data_dir, render_toml(config))
    return load_config(data_dir, environ={})


def test_render_toml_of_the_defaults_round_trips(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={})
    assert _round_trip(config, tmp_path) == config


def test_render_toml_of_a_custom_config_round_trips(tmp_path: Path) -> None:
    _write(
        tmp_path,
        """
[server]
workers = 7
[database]
url = "sqlite:///C:\\\\data\\\\hsmca.db"
echo = true
[hsm]
root_token_label = "root"
[ca]
organization = 'Acme "Quoted" Zürich'
country = "CH"
root_key = "rsa:4096"
[profiles.web]
description = "web servers"
validity_days = 30
extended_key_usage = ["serverAuth", "clientAuth"]
certificate_policies = []
require_san = false
""",
    )
    config = load_config(tmp_path, environ={})
    assert config.ca.organization == 'Acme "Quoted" Zürich'
    assert config.database.url == "sqlite:///C:\\data\\hsmca.db"
    rendered = render_toml(config)
    assert "[profiles.web]" in rendered
    assert _round_trip(config, tmp_path) == config


def test_render_toml_writes_every_key(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={})
    rendered = render_toml(config)
    for key in ProfileConfig.model_fields:
        assert f"\n{key} = " in rendered
    assert "data_dir" not in rendered


@pytest.mark.parametrize(
    "text",
    ["line1\nline2", "tab\there", "nul\x00byte", "del\x7fchar", 'quote " and \\ backslash',
     "Zürich ✓"],
    ids=["ok/newline", "ok/tab", "ok/nul", "ok/del", "ok/quote-backslash", "ok/non-ascii"],
)  # fmt: skip
def test_render_toml_escapes_strings_so_they_round_trip(tmp_path: Path, text: str) -> None:
    config = load_config(tmp_path, environ={})
    config = config.model_copy(update={"ca": config.ca.model_copy(update={"organization": text})})
    reloaded = _round_trip(config, tmp_path)
    assert reloaded.ca.organization == text
    assert reloaded == config


@pytest.mark.parametrize(
    "name",
    ["web", "tls-server", "client_2", "0day", "a" * 64],
    ids=["ok/plain", "ok/dash", "ok/underscore", "ok/leading-digit", "ok/64-chars"],
)
def test_url_safe_profile_names_are_accepted_and_round_trip(tmp_path: Path, name: str) -> None:
    _write(tmp_path, f'[profiles."{name}"]\nvalidity_days = 30\n')
    config = load_config(tmp_path, environ={})
    assert set(config.profiles) == {name}
    assert _round_trip(config, tmp_path) == config


@pytest.mark.parametrize(
    "name",
    ["web.internal", "Web", "web server", "-web", "_web", "a" * 65, "wéb", ""],
    ids=["fail/dot", "fail/uppercase", "fail/space", "fail/leading-dash",
         "fail/leading-underscore", "fail/65-chars", "fail/non-ascii", "fail/empty"],
)  # fmt: skip
def test_profile_names_that_are_not_url_safe_are_refused(tmp_path: Path, name: str) -> None:
    _write(tmp_path, f'[profiles."{name}"]\nvalidity_days = 30\n')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={})
    assert f"profiles.{name}" in str(info.value)
    assert "profile name" in str(info.value)
