"""The device side must stay light: importing the runtime pulls no torch and no SDK."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "onnx", "openvino", "tensorrt", "coremltools", "nncf")


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_runtime_import_pulls_no_torch_or_sdk() -> None:
    loaded = _modules_after("import edgeclip.runtime")
    assert "edgeclip.runtime" in loaded
    assert not [m for m in HEAVY if m in loaded]
    assert "onnxruntime" not in loaded  # the SDK is imported only when a backend is created


def test_bundle_errors_deps_and_cli_group_are_light() -> None:
    loaded = _modules_after("import edgeclip.bundle, edgeclip.errors, edgeclip._deps, edgeclip.cli")
    assert not [m for m in HEAVY if m in loaded]


def test_runtime_classifies_where_importing_torch_fails(tiny_bundle: Path, tmp_path: Path) -> None:
    """A device install has no torch: make `import torch` raise and run a real prediction."""
    from edgeclip.train.shapes import ShapesDataset

    img = tmp_path / "x.png"
    ShapesDataset("heldout", 1, 32)[0].image.save(img)
    code = (
        "import sys\n"
        "for m in ('torch', 'onnx', 'openvino', 'coremltools', 'tensorrt'): sys.modules[m] = None\n"
        "from edgeclip.runtime import ZeroShotClassifier\n"
        f"r = ZeroShotClassifier.load({str(tiny_bundle)!r}).classify([{str(img)!r}], top_k=2)[0]\n"
        "assert r.ok and len(r.predictions) == 2, r\n"
        "print('ok', r.label)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok ")
