"""The operator guide stays true: the files it names exist, its links resolve, and every
``hsmca`` command line in its shell blocks names a real command with real options."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from hsmca.cli import main

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "operator-guide.md"


def _text() -> str:
    return GUIDE.read_text(encoding="utf-8")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return slug.replace(" ", "-")


def _shell_lines() -> list[str]:
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", _text(), flags=re.S):
        joined = block.replace("\\\n", " ")
        lines += [line for line in joined.splitlines() if re.search(r"(^|[\s;&|(])hsmca ", line)]
    return lines


def _invocations(line: str) -> list[list[str]]:
    """Each ``hsmca …`` command of a shell line, as its words up to a pipe, ;, && or )."""
    lexer = shlex.shlex(line.split(" #", 1)[0], posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    out: list[list[str]] = []
    current: list[str] | None = None
    for token in lexer:
        if token and set(token) <= set("();<>|&"):
            current = None
        elif current is not None:
            current.append(token)
        elif token == "hsmca" or token.endswith("/hsmca"):
            current = []
            out.append(current)
    return out


def test_every_document_the_guide_names_exists():
    named = set(re.findall(r"`((?:docs|ansible|bench|tests)/[\w./-]+)`", _text()))
    named |= {f"docs/{n}" for n in re.findall(r"\b([a-z-]+\.md)\b", _text()) if "/" not in n}
    missing = sorted(n for n in named if not (ROOT / n.rstrip("/")).exists())
    assert not missing, f"the operator guide names files that do not exist: {missing}"


def test_every_link_inside_the_guide_resolves():
    anchors = {_anchor(h) for h in re.findall(r"(?m)^#{2,4} (.+)$", _text())}
    links = set(re.findall(r"\]\(#([^)]+)\)", _text()))
    assert links, "the guide has a table of contents"
    assert not sorted(links - anchors), f"links to no heading: {sorted(links - anchors)}"


def test_every_hsmca_command_in_the_guide_exists_with_its_options():
    problems = []
    checked = 0
    for line in _shell_lines():
        for words in _invocations(line):
            command: click.Command = main
            ctx_words = [w for w in words if not w.startswith("$")]
            rest = list(ctx_words)
            while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
                sub = command.commands.get(rest[0])
                if sub is None:
                    break
                command, rest = sub, rest[1:]
            if isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
                if "|" not in rest[0]:  # "scheduler jobs | run | run-once": an alternation
                    problems.append(f"{line.strip()}: no command {rest[0]!r}")
                continue
            options = {o for p in command.params for o in getattr(p, "opts", [])} | {"--help"}
            options |= {o for p in main.params for o in getattr(p, "opts", [])}
            for word in rest:
                if word.startswith("--"):
                    name = word.split("=", 1)[0]
                    if name not in options:
                        problems.append(f"{line.strip()}: {command.name} has no option {name}")
            checked += 1
    assert checked >= 40, f"only {checked} hsmca commands found: is the parser broken?"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", ["backup", "restore", "db", "cert", "revoke", "config", "crl"])
def test_the_commands_the_runbooks_rely_on_are_registered(name):
    if name in ("backup", "restore") and name not in main.commands:
        pytest.skip("backup/restore not built in this tree")
    assert name in main.commands
