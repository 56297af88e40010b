"""Backend registry: import paths only, so listing backends imports no SDK."""

from __future__ import annotations

import importlib
import platform
from typing import Any

from edgeclip.errors import UnknownNameError
from edgeclip.runtime.backends.base import has_nvidia_gpu

BACKENDS: dict[str, str] = {
    "onnxruntime": "edgeclip.runtime.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "edgeclip.runtime.backends.openvino:OpenVinoBackend",
    "tensorrt": "edgeclip.runtime.backends.tensorrt:TensorRTBackend",
    "coreml": "edgeclip.runtime.backends.coreml:CoreMLBackend",
}

# Without a preference of its own, a backend picks the artifact precision in this order:
# quantized artifacts passed the accuracy guard at export, so they are what a device wants.
DEFAULT_PRECISION_ORDER: tuple[str, ...] = ("int8", "fp16", "fp32")


def backend_class(name: str) -> Any:
    if name not in BACKENDS:
        raise UnknownNameError("backend", name, BACKENDS)
    module, _, attr = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def list_backends() -> dict[str, bool]:
    """{backend name: installed and usable here?} without importing any SDK."""
    return {name: bool(backend_class(name).available()) for name in BACKENDS}


def auto_order() -> tuple[list[str], str]:
    """Backends in the order `backend="auto"` tries them on this machine, and why.

    TensorRT on NVIDIA GPUs and Jetson, CoreML on Apple, OpenVINO on x86 CPUs, onnxruntime
    everywhere; the rest follow as fallbacks.
    """
    order: list[str] = []
    why: list[str] = []
    if has_nvidia_gpu():
        order.append("tensorrt")
        why.append("NVIDIA GPU present")
    if platform.system() == "Darwin":
        order.append("coreml")
        why.append("Apple device")
    if platform.machine().lower() in ("x86_64", "amd64", "i686", "i386"):
        order.append("openvino")
        why.append("x86 CPU")
    order += [b for b in ("onnxruntime", "openvino", "tensorrt", "coreml") if b not in order]
    return order, ", ".join(why) or "generic CPU"
