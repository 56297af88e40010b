"""Regenerate tests/golden/bundle_v1/: a schema-v1 bundle written by edgeclip before the manifest
records were typed (commit 422ddf9), so that tests/bundle/test_records.py proves old bundles load.

    git worktree add /tmp/v1 422ddf9 && PYTHONPATH=/tmp/v1 .venv/bin/python tests/golden/make_bundle_v1.py

Trains the test-tiny model (the conftest recipe) and exports onnx fp32 + int8 (calibrated on
builtin:shapes) and openvino fp32 with a `default` label set. Never regenerate it with a newer
edgeclip: its worth is that an older writer made it. Training on CPU is not bit-reproducible across
machines, so a regeneration changes the hashes; the tests only need the files to match the manifest.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "bundle_v1"
sys.path.insert(0, str(HERE.parent))

from conftest import TINY_CLASSES  # noqa: E402


def main() -> None:
    import importlib

    from edgeclip.train.loop import TrainConfig, train

    # at 422ddf9 the export driver was edgeclip.export.api (now edgeclip.export.driver)
    export_bundle = importlib.import_module("edgeclip.export.api").export_bundle

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "tiny"
        train(TrainConfig(model="test-tiny", out=str(ckpt), steps=30, batch_size=32, lr=2e-3, warmup_steps=5,
                          eval_size=48, tokenizer_samples=400, progress=False))
        staged = Path(tmp) / "bundle_v1"
        labels = {"default": (TINY_CLASSES, None)}
        export_bundle(ckpt, staged, targets=["onnx"], precision=["fp32", "int8"], labels=labels,
                      options={"calib": "builtin:shapes", "calib_size": 64})
        export_bundle(ckpt, staged, targets=["openvino"], precision="fp32")
        shutil.rmtree(OUT, ignore_errors=True)
        shutil.copytree(staged, OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
