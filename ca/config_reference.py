"""The configuration reference (``docs/config-reference.md``), generated from the config schema.

Every section and key of ``hsmca.toml`` is a pydantic field of :class:`ca.config.AppConfig`; this
module walks those models, so a key added to the schema appears in the reference with its type,
default, bounds and description, and a test keeps the committed document equal to the output.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ca.config import AppConfig

_HEADER = """\
# Configuration reference

Generated from the configuration schema (`ca/config.py`) by `hsmca config reference`; a test
keeps this file equal to its output, so edit the schema's descriptions, not this file.

`hsmca.toml` lives in the data directory (or `HSMCA_CONFIG`). It is checked strictly: an
unknown key, a value of the wrong type (`workers = "2"`) or out of bounds is refused, and the
error names the key. Keys left out take their defaults. Paths are relative to the data
directory unless absolute. `HSMCA_<SECTION>_<KEY>` environment variables override single keys
of a section (e.g. `HSMCA_SERVER_WORKERS=4`; not lists, tables or profiles). See the operator guide
(`docs/operator-guide.md`) for how the settings work together.
"""


def render_reference() -> str:
    """The whole reference as Markdown: one table per section, in the schema's order."""
    out = [_HEADER]
    for name, field in AppConfig.model_fields.items():
        if name == "data_dir":
            continue
        out += _section(name, field)
    return "\n".join(out).rstrip() + "\n"


def _section(path: str, field: FieldInfo) -> list[str]:
    model, keyed = _model_of(field.annotation)
    if model is None:
        return []
    title = f"[{path}.NAME]" if keyed else f"[{path}]"
    lines = ["", f"## `{title}`", ""]
    doc = " ".join((model.__doc__ or "").split())
    if doc:
        lines += [_strip_title(doc, path), ""]
    if keyed and field.description:
        lines += [" ".join(field.description.split()), ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    nested: list[tuple[str, FieldInfo]] = []
    for key, sub in model.model_fields.items():
        if _model_of(sub.annotation)[0] is not None:
            nested.append((f"{path}.NAME.{key}" if keyed else f"{path}.{key}", sub))
            continue
        lines.append(
            f"| `{key}` | {_type_name(sub.annotation)} | {_default(sub)} | {_meaning(sub)} |"
        )
    for sub_path, sub in nested:
        lines += _section(sub_path, sub)
    return lines


def _strip_title(doc: str, path: str) -> str:
    """Drop a leading ``[section]``: marker the docstrings start with; the heading says it."""
    for prefix in (f"``[{path}]``:", f"``[{path}.NAME]``:"):
        if doc.startswith(prefix):
            doc = doc[len(prefix) :].strip()
    doc = doc.replace("``", "`")
    return doc[:1].upper() + doc[1:]


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the model, whether it is a table of named entries) for a section-typed field."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if typing.get_origin(annotation) is dict:
        value = typing.get_args(annotation)[1]
        if isinstance(value, type) and issubclass(value, BaseModel):
            return value, True
    return None, False


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in typing.get_args(annotation))
    if origin in (list, tuple, set, frozenset):
        args = typing.get_args(annotation)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "table"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if annotation is type(None):
        return "none"
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(table)"
    if isinstance(value, dict):
        return f"`{json.dumps(sorted(value))}`" if value else "`{}`"
    text = json.dumps(value, default=str, ensure_ascii=False)
    return f"`{text}`".replace("|", "\\|")


def _meaning(field: FieldInfo) -> str:
    text = " ".join((field.description or "").split()).replace("|", "\\|")
    bounds = _bounds(field)
    if bounds:
        text = f"{text} ({bounds})" if text else bounds
    return text


def _bounds(field: FieldInfo) -> str:
    parts = []
    for meta in field.metadata:
        if isinstance(meta, Ge):
            parts.append(f"≥ {meta.ge}")
        elif isinstance(meta, Gt):
            parts.append(f"> {meta.gt}")
        elif isinstance(meta, Le):
            parts.append(f"≤ {meta.le}")
        elif isinstance(meta, Lt):
            parts.append(f"< {meta.lt}")
        elif isinstance(meta, MinLen):
            parts.append(f"at least {meta.min_length} long")
        elif isinstance(meta, MaxLen):
            parts.append(f"at most {meta.max_length} long")
    return ", ".join(parts)
