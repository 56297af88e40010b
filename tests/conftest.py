"""Shared fixtures: one tiny trained checkpoint and one exported bundle per test session."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
# timing records (runtime/timings.py) change which precision loads: tests never read a developer's,
# and never write theirs into the home folder; set here so subprocesses (the CLI) see it too
os.environ["EDGECLIP_TIMINGS"] = os.path.join(tempfile.mkdtemp(prefix="edgeclip-timings-"), "timings.json")
REPO = Path(__file__).resolve().parents[1]
# Parity budgets as the README states them ("Export targets": cosine >= 0.99999 for fp32, >= 0.999
# for fp16, >= 0.99 for weight-only compression), written here so that a loosened constant in
# edgeclip/export/validate.py cannot loosen the tests with it.
README_PARITY = {"fp32": 0.99999, "fp16": 0.999}
README_WEIGHT_ONLY_PARITY = 0.99


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeclip.train.loop import TrainConfig, train

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    train(
        TrainConfig(
            model="test-tiny", out=str(out), steps=30, batch_size=32, lr=2e-3, warmup_steps=5,
            eval_size=48, tokenizer_samples=400, progress=False,
        )
    )
    return out


TINY_CLASSES = ["circle", "square", "triangle", "star", "cross", "heart"]


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeclip.export.driver import export_bundle

    out = tmp_path_factory.mktemp("bundle") / "tiny.edgeclip"
    export_bundle(tiny_checkpoint, out, targets=["onnx"], labels={"default": (TINY_CLASSES, None)})
    return out


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Run `python -m edgeclip ARGS` in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "edgeclip", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})},
    )


def ort_optimized_graph(path: Path, work: Path) -> Any:
    """The graph onnxruntime actually runs (after its CPU graph optimisations), as an onnx GraphProto."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(work / f"{path.parent.name}-{path.stem}-ort-optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return onnx.load(so.optimized_model_filepath).graph


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A WebDataset-style shard: (member name, bytes) in order."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
