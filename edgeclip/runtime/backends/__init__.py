"""Backend registry: import paths only, so listing backends imports no SDK."""

from __future__ import annotations

import importlib
from typing import Any

from edgeclip.errors import UnknownNameError

BACKENDS: dict[str, str] = {
    "onnxruntime": "edgeclip.runtime.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "edgeclip.runtime.backends.openvino:OpenVinoBackend",
}

# the preference order of backend="auto" among those installed and present in the bundle
AUTO_ORDER: tuple[str, ...] = ("onnxruntime",)


def backend_class(name: str) -> Any:
    if name not in BACKENDS:
        raise UnknownNameError("backend", name, BACKENDS)
    module, _, attr = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def list_backends() -> dict[str, bool]:
    """{backend name: installed?} without importing any SDK."""
    return {name: bool(backend_class(name).available()) for name in BACKENDS}
