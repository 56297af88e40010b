"""Optional dependencies: check without importing, import only where needed."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from edgeclip.errors import MissingDependencyError

# module name -> the extra that installs it
EXTRAS: dict[str, str] = {
    "torch": "train",
    "onnx": "export",
    "onnxscript": "export",
    "onnxruntime": "onnx",
    "openvino": "openvino",
    "nncf": "export",
    "coremltools": "coreml",
    "tensorrt": "tensorrt",
    "sklearn": "train",
    "webdataset": "train",
    "matplotlib": "bench",
}


def has(module: str) -> bool:
    """True when `module` can be imported; never imports it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, *, extra: str | None = None, purpose: str = "") -> ModuleType:
    """Import `module` or raise an error that names the exact install command."""
    extra = extra or EXTRAS.get(module, "all")
    if not has(module):
        what = f" ({purpose})" if purpose else ""
        raise MissingDependencyError(
            f"'{module}' is not installed but is needed{what}",
            fix=f'pip install "edgeclip[{extra}]"',
        )
    return importlib.import_module(module)
