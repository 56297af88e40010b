"""The README and pyproject.toml cite only files that exist in this repository (a reader who
follows a citation must find it)."""

from __future__ import annotations

import re

from tests.conftest import REPO

CITED_PATH = re.compile(r"((?:docs|benchmarks|edgeclip|tests|\.ci)/[\w./{}*-]+\.(?:md|json|py|sh|png|toml))")


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
        assert list(REPO.glob(f"**/{name}")), f"pyproject.toml cites {name}, which is not in the repository"
