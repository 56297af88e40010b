"""A missing optional package ends in the typed error: exit code 3, the exact `pip install
"edgeclip[...]"` line, no traceback. The packages are made unimportable for real, in a fresh
interpreter (a sitecustomize that puts None in sys.modules, as for a package that is not installed),
and the command is run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeclip.cli import missing_dependency
from tests.conftest import REPO

SITECUSTOMIZE = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # `import name` raises ModuleNotFoundError; find_spec(name) is None
"""


def run_without(blocked: list[str], tmp_path: Path, *args: str, extra_path: Path | None = None,
                code: str | None = None) -> subprocess.CompletedProcess[str]:
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=blocked))
    path = os.pathsep.join(str(p) for p in (shim, extra_path, REPO) if p is not None)
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "edgeclip", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": path})


def assert_missing(proc: subprocess.CompletedProcess[str], module: str, extra: str) -> None:
    assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("Error:") and f"'{module}' is not installed" in proc.stderr, proc.stderr
    assert f'pip install "edgeclip[{extra}]"' in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_the_shim_really_blocks(tmp_path: Path) -> None:
    proc = run_without(["torch"], tmp_path, code="import torch")
    assert proc.returncode == 1 and "ModuleNotFoundError" in proc.stderr


@pytest.mark.parametrize("command, extra", [
    ("train --model test-tiny --steps 1 --out {tmp}/run", "train"),
    ("import {tmp}/w.pt --out {tmp}/ck", "train"),
    ("export {tmp}/ck --target onnx --out {tmp}/b.edgeclip", "export"),
    ("quickstart --out {tmp}/qs", "train,export"),
])
def test_commands_that_need_torch_on_a_device_only_install(command: str, extra: str, tmp_path: Path) -> None:
    proc = run_without(["torch"], tmp_path, *command.format(tmp=tmp_path).split())
    assert_missing(proc, "torch", extra)
    assert not any(p.name != "shim" for p in tmp_path.iterdir())  # nothing written


def test_device_commands_still_run_without_torch(tmp_path: Path) -> None:
    proc = run_without(["torch"], tmp_path, "--help")
    assert proc.returncode == 0 and "train" in proc.stdout and "classify" in proc.stdout, proc.stderr
    proc = run_without(["torch"], tmp_path, "inspect", str(tmp_path / "missing.edgeclip"))
    assert proc.returncode == 1 and "bundle not found" in proc.stderr and "Traceback" not in proc.stderr


def test_runtime_sdk_missing(tiny_bundle: Path, tmp_path: Path) -> None:
    """The bundle holds only ONNX artifacts and onnxruntime is not installed."""
    from PIL import Image

    image = tmp_path / "img.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    for backend in ("onnxruntime", "auto"):
        proc = run_without(["onnxruntime"], tmp_path, "classify", str(tiny_bundle), str(image), "--backend", backend)
        assert proc.returncode == 3, (backend, proc.stderr)
        assert proc.stderr.startswith("Error:") and "'onnxruntime', which is not installed" in proc.stderr
        assert 'pip install "edgeclip[onnx]"' in proc.stderr and "Traceback" not in proc.stderr


HEAVY_MODULE = """
import click
import torch  # at module top: importing the command's module is what fails

@click.command()
def heavy() -> None:
    pass
"""

RUN_WITH_HEAVY = """
import sys
from edgeclip import cli
cli.COMMANDS["heavy"] = "heavycmd:heavy"
cli.COMMAND_EXTRAS["heavy"] = "train"
sys.argv = ["edgeclip", *sys.argv[1:]]
cli.main()
"""


def test_a_command_module_that_cannot_be_imported(tmp_path: Path) -> None:
    """--help still lists every command, and the command itself ends in the typed error."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "heavycmd.py").write_text(HEAVY_MODULE)
    proc = run_without(["torch"], tmp_path, "--help", extra_path=mods, code=RUN_WITH_HEAVY)
    assert proc.returncode == 0 and "heavy" in proc.stdout and "unavailable" in proc.stdout, proc.stderr
    proc = run_without(["torch"], tmp_path, "heavy", "--some", "args", extra_path=mods, code=RUN_WITH_HEAVY)
    assert_missing(proc, "torch", "train")


def test_only_optional_packages_are_turned_into_the_typed_error() -> None:
    """A missing module of edgeclip itself is a bug: it keeps its traceback."""
    assert missing_dependency("classify", ModuleNotFoundError("x", name="edgeclip.runtime.nope")) is None
    error = missing_dependency("classify", ModuleNotFoundError("x", name="openvino.runtime"))
    assert error is not None and error.exit_code == 3 and error.fix == 'pip install "edgeclip[openvino]"'
