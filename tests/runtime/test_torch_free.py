"""The device side must stay light: importing the runtime pulls no torch and no SDK."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import edgeclip.runtime

HEAVY = ("torch", "onnx", "openvino", "tensorrt", "coremltools", "nncf")
# the layers above the runtime (issue 14): the device side never imports them, not even lazily
ABOVE_RUNTIME = ("data", "model", "train", "calibration", "export", "bench", "cli")
# what the runtime may import at module top besides the standard library
RUNTIME_THIRD_PARTY = {"numpy", "PIL", "tokenizers", "edgeclip"}
RUNTIME_DIR = Path(edgeclip.runtime.__file__).parent


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
    from edgeclip.data.shapes import ShapesDataset

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


def _runtime_modules() -> dict[str, Path]:
    """{dotted name: file} of every module under edgeclip/runtime, found on disk."""
    found = {}
    for path in sorted(RUNTIME_DIR.rglob("*.py")):
        parts = path.relative_to(RUNTIME_DIR.parent.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _above_runtime(module: str) -> bool:
    return module.split(".")[:2] in [["edgeclip", layer] for layer in ABOVE_RUNTIME]


def _imported_names(module: str, path: Path) -> set[str]:
    """Every module an `import` statement in the file names, wherever it sits (module top, inside
    a function, under TYPE_CHECKING); relative imports resolved against the module's package."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(p for p in (base, node.module or "") if p)
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)  # `from edgeclip import export`
    return names


def test_no_runtime_module_imports_a_layer_above_it() -> None:
    modules = _runtime_modules()
    assert "edgeclip.runtime.backends.tensorrt_engine" in modules and len(modules) >= 10
    upward = {module: sorted(n for n in _imported_names(module, path) if _above_runtime(n))
              for module, path in modules.items()}
    assert {m: names for m, names in upward.items() if names} == {}


def test_every_runtime_module_imports_only_stdlib_numpy_pillow_tokenizers() -> None:
    """Import each runtime module (every backend included) in a fresh interpreter: no torch, no SDK,
    no layer above the runtime, and no third-party package beyond numpy, Pillow and tokenizers."""
    code = (
        "import importlib, json, sys\n"
        "before = set(sys.modules)\n"
        f"for name in {sorted(_runtime_modules())!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert "edgeclip.runtime.backends.tensorrt" in loaded
    assert not [m for m in HEAVY if m in loaded]
    assert not [m for m in loaded if _above_runtime(m)]
    third_party = {m.split(".")[0] for m in loaded} - set(sys.stdlib_module_names)
    assert third_party <= RUNTIME_THIRD_PARTY, third_party - RUNTIME_THIRD_PARTY


def test_no_two_classes_in_the_package_share_a_name() -> None:
    """Two classes with one name (the manifest's LabelSet and the runtime's in-memory labels were
    both `LabelSet`) make a reader guess which one an import means."""
    where: dict[str, list[str]] = {}
    for path in sorted(RUNTIME_DIR.parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.ClassDef):
                where.setdefault(node.name, []).append(path.relative_to(RUNTIME_DIR.parent).as_posix())
    assert "LabelSet" in where and "Labels" in where
    assert {name: files for name, files in where.items() if len(files) > 1} == {}
