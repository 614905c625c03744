"""The CI scripts name test files by path; a file moved without them fails CI in its first
minute, after the newest-versions install, with pytest's "file or directory not found"."""

from __future__ import annotations

import re

import pytest

from tests.deploy.files import REPO

SCRIPTS = sorted((REPO / ".ci").iterdir())


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_every_test_path_a_ci_script_names_exists(script) -> None:
    named = re.findall(r"\btests/[\w/.-]+", script.read_text())
    missing = [path for path in named if not (REPO / path).exists()]
    assert not missing, f"{script.name} names missing test paths: {missing}"
