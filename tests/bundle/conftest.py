"""Fixtures of the bundle tests: a private copy of the session's tiny bundle, and manifest edits."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture()
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "b.edgeclip"))


def edit_manifest(root: Path, fn: Callable[[dict[str, Any]], Any]) -> None:
    """Apply `fn` to the parsed manifest.json and write it back, as an attacker or a stray edit would."""
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m))
