"""docs/config-reference.md is generated from the config schema and kept equal to it."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from pydantic import BaseModel

from ca.config import AppConfig
from ca.config_reference import _model_of, render_reference
from hsmca.cli import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "config-reference.md"


def _sections() -> list[tuple[str, type[BaseModel]]]:
    out: list[tuple[str, type[BaseModel]]] = []

    def walk(path: str, annotation: object) -> None:
        model, keyed = _model_of(annotation)
        if model is None:
            return
        out.append((path, model))
        for key, sub in model.model_fields.items():
            walk(f"{path}.NAME.{key}" if keyed else f"{path}.{key}", sub.annotation)

    for name, field in AppConfig.model_fields.items():
        walk(name, field.annotation)
    return out


def test_the_committed_reference_is_what_the_schema_generates() -> None:
    assert DOC.read_text(encoding="utf-8") == render_reference(), (
        "docs/config-reference.md is stale: run hsmca config reference --out docs/config-reference.md"
    )


def test_every_setting_has_a_description_and_a_row_in_the_reference() -> None:
    text = render_reference()
    undescribed = []
    for path, model in _sections():
        for key, field in model.model_fields.items():
            if _model_of(field.annotation)[0] is not None:
                continue
            assert f"| `{key}` |" in text, f"{path}.{key} missing from the reference"
            if not (field.description or "").strip():
                undescribed.append(f"{path}.{key}")
    assert not undescribed, f"settings without a description: {undescribed}"


def test_reference_shows_bounds_and_literal_choices() -> None:
    text = render_reference()
    assert (
        "| `workers` | integer | `1` | gunicorn worker processes per listener (≥ 1, ≤ 64) |" in text
    )
    assert '`"require_san"` \\| `"drop"`' in text
    assert "## `[profiles.NAME]`" in text


def test_config_check_names_the_bad_key_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "hsmca.toml").write_text('[server]\nworkers = "2"\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "config", "check"])
    assert result.exit_code == 1
    assert "server.workers" in result.output


def test_config_check_accepts_a_good_file(tmp_path: Path) -> None:
    (tmp_path / "hsmca.toml").write_text("[server]\nworkers = 2\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "config", "check"])
    assert result.exit_code == 0, result.output
    assert "ok (profiles: client, server)" in result.output
