"""Reading the deployment files as Docker and Compose would, without either (neither runs on the
project's machines): the Dockerfile's instructions, Compose's variable interpolation, and what
``stream serve`` makes of a container's command and environment."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from framestream.cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]
_VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile as ``(INSTRUCTION, arguments)``, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text()
    logical = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            out.append((instruction.upper(), arguments.strip()))
    return out


def instructions(name: str) -> list[str]:
    return [arguments for instruction, arguments in dockerfile() if instruction == name]


def exec_form(arguments: str) -> list[str]:
    """``CMD ["a", "b"]`` or shell form, as an argv."""
    return json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)


def image_environment() -> dict[str, str]:
    """The Dockerfile's ENV, as the container starts with it."""
    env = {}
    for arguments in instructions("ENV"):
        for pair in shlex.split(arguments):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def compose(variables: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml as Compose reads it: parsed, then ``${VAR:-default}`` and
    ``${VAR:?message}`` in its strings filled from ``variables`` (an unset one takes its
    default; a required one must be given)."""
    given = dict(variables or {})

    def fill(match: re.Match) -> str:
        name, kind, rest = match.groups()
        if given.get(name):
            return given[name]
        if kind == "?":
            raise KeyError(f"{name} is required: {rest}")
        return rest or ""

    def interpolate(node: Any) -> Any:
        if isinstance(node, str):
            return _VARIABLE.sub(fill, node)
        if isinstance(node, list):
            return [interpolate(item) for item in node]
        if isinstance(node, dict):
            return {key: interpolate(value) for key, value in node.items()}
        return node

    return interpolate(yaml.safe_load((REPO / "docker-compose.yml").read_text()))


@contextlib.contextmanager
def environment(values: Mapping[str, str]):
    """``os.environ`` with ``values`` for the duration (the CLI reads its defaults from it)."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def stream_serve(argv: list[str], env: Mapping[str, str]) -> argparse.Namespace:
    """``stream serve ...`` as the CLI parses it in a container with ``env``."""
    assert argv[:2] == ["stream", "serve"], argv
    with environment(env):
        return build_parser().parse_args(argv[1:])


def known_variables() -> set[str]:
    """Every STREAM_* variable ``stream serve`` reads: named in its help, or read by the CLI."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = out.getvalue()
    source = "".join(path.read_text() for path in (REPO / "cli").glob("*.py"))
    names = set(re.findall(r"STREAM_[A-Z_]+", help_text))
    return names | set(re.findall(r'\benv\("(STREAM_[A-Z_]+)"', source))
