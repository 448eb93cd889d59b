"""hsmca's configuration as the Ansible role sees it: the environment file it writes, checked and
turned into a first ``hsmca.toml``. Runs with the deployed venv's Python, so it loads the
configuration exactly as hsmca will.

Usage:
  python hsmca_config.py check ENV_FILE DATA_DIR
      Load the configuration with the file's HSMCA_<SECTION>_<KEY> overrides (the template
      task's ``validate``): an unknown key or a bad value fails with hsmca's own message
      instead of a service that does not start.
  python hsmca_config.py render ENV_FILE DATA_DIR [TLS_HOSTNAME ...]
      Print a complete hsmca.toml (every key, commented, as 'hsmca init' writes it) holding the
      file's settings and the HTTPS certificate's names. The role writes it before the first
      'hsmca init', which then uses it as it is: the module, tokens, database and names in
      hsmca.toml are the deployed ones, not the embedded defaults.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ca.config import AppConfig, ServerConfig, load_config, render_toml
from ca.errors import ConfigError


def read_env(path: Path) -> dict[str, str]:
    """NAME='value' lines (shell quoting, as systemd's EnvironmentFile and sh read them)."""
    env: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        words = shlex.split(line)
        name, sep, value = words[0].partition("=") if len(words) == 1 else ("", "", "")
        if not sep or not name:
            raise ConfigError(f"line {number}: not NAME=VALUE")
        env[name] = value
    return env


def configuration(env_file: Path, data_dir: Path, tls_hostnames: list[str]) -> AppConfig:
    config = load_config(data_dir, environ=read_env(env_file))
    if tls_hostnames:
        server = ServerConfig.model_validate(
            {**config.server.model_dump(), "tls_hostnames": tls_hostnames}
        )
        config = config.model_copy(update={"server": server})
    return config


def main(argv: list[str]) -> int:
    if (
        len(argv) < 3
        or argv[0] not in ("check", "render")
        or (argv[0] == "check" and len(argv) > 3)
    ):
        print(__doc__, file=sys.stderr)
        return 2
    command, env_file, data_dir, names = argv[0], Path(argv[1]), Path(argv[2]), argv[3:]
    try:
        config = configuration(env_file, data_dir, names)
    except (ConfigError, ValueError) as exc:
        print(f"hsmca: environment file {env_file}: {exc}", file=sys.stderr)
        return 1
    if command == "render":
        sys.stdout.write(render_toml(config))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
