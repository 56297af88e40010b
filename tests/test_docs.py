"""The README and pyproject.toml cite only files that exist in this repository (a reader who
follows a citation must find it)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import REPO

CITED_PATH = re.compile(r"((?:docs|benchmarks|edgeclip|tests|\.ci)/[\w./{}*-]+\.(?:md|json|py|sh|png|toml))")


def _tracked() -> list[str]:
    """The repository's files (git's list, so nothing in .venv or elsewhere ignored can answer)."""
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def _missing(text: str) -> list[str]:
    missing = []
    for path in sorted(set(CITED_PATH.findall(text))):
        if any(c in path for c in "{}*"):  # a pattern (results/*.json), not one file
            continue
        if not (REPO / path).exists():
            missing.append(path)
    return missing


def test_readme_cites_only_files_that_exist() -> None:
    assert _missing((REPO / "README.md").read_text(encoding="utf-8")) == []


def test_pyproject_cites_only_files_that_exist() -> None:
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert _missing(text) == []
    for name in sorted(set(re.findall(r"\b([\w-]+\.md)\b", text))):  # bare names, e.g. "(NOTES.md)"
        assert any(Path(f).name == name for f in _tracked()), f"pyproject.toml cites {name}, not in the repository"
