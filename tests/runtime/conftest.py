"""Fixtures and helpers shared by the runtime's timing-record tests (runtime/timings.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeclip.bundle import Bundle
from edgeclip.runtime.backends import backend_target
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.timings import record


@pytest.fixture
def timings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh timings file for one test (EDGECLIP_TIMINGS)."""
    path = tmp_path / "timings.json"
    monkeypatch.setenv("EDGECLIP_TIMINGS", str(path))
    yield path


def plant_record(bundle: Bundle, encoder: str, ms: dict[str, float], options: BackendOptions,
                 backend: str = "onnxruntime") -> None:
    """A comparison as bench records it, with the given latencies (the input under test)."""
    arts = bundle.manifest.find(encoder, backend_target(backend))
    record(backend, options, {a.key: (a, ms[a.precision]) for a in arts}, by="edgeclip bench")
