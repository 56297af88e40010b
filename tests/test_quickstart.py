"""`edgeclip quickstart`: the README's main job, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli


def _check_layout(out: Path) -> dict:  # type: ignore[type-arg]
    summary = json.loads((out / "quickstart.json").read_text())
    for key in ("checkpoint", "bundle", "samples", "train_log", "bench", "summary"):
        assert Path(summary["paths"][key]).exists(), key
    keys = set(summary["artifacts"])
    for enc in ("image", "text"):
        assert {f"{enc}/onnx-fp32", f"{enc}/openvino-fp32", f"{enc}/tensorrt-fp32", f"{enc}/coreml-fp16"} <= keys
    assert all("predictions" in ex for ex in summary["examples"])
    assert any(b["key"] == "image/torch-fp32/b1/model" for b in summary["bench"])
    # the README's figures cite this file: the wall time and the conditions must be in it
    assert summary["total_seconds"] >= summary["train"]["seconds"] > 0
    assert summary["conditions"]["torch"] and summary["conditions"]["torch_threads"] >= 1
    return summary


def test_quickstart_smoke(tmp_path: Path) -> None:
    """A few training steps: every stage runs and reports; accuracy is not the point here."""
    out = tmp_path / "qs"
    proc = run_cli("quickstart", "--out", str(out), "--steps", "3", "--no-progress", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = _check_layout(out)
    for attr in ("shape", "colour"):
        z = s["zero_shot_heldout"][attr]
        assert 0.0 <= z["top1_runtime"] <= 1.0 and z["images"] == 480
        assert z["top1_runtime"] == pytest.approx(z["top1_torch"], abs=0.01)  # runtime agrees with torch
    assert "zero-shot shape" in proc.stdout and "bundle" in proc.stdout


@pytest.mark.slow
def test_quickstart_learns_far_above_chance(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    proc = run_cli("quickstart", "--out", str(out), "--no-progress", timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    z = _check_layout(out)["zero_shot_heldout"]
    assert z["shape"]["top1_runtime"] >= 0.5  # chance is 1/6
    assert z["colour"]["top1_runtime"] >= 0.8
