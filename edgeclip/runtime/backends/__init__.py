"""Backend registry: import paths only, so listing backends imports no SDK.

It is also the one place that says which backend runs which export target's artifacts: the device
needs that fact to pick an artifact, and the export side's capability table reads it from here.
"""

from __future__ import annotations

import importlib
import platform
from typing import Any, NamedTuple

from edgeclip.errors import ConfigError, UnknownNameError
from edgeclip.runtime.backends.base import has_nvidia_gpu, is_rockchip


class Registration(NamedTuple):
    target: str  # the export target whose artifacts the backend runs
    path: str  # "module:Class", imported only when the backend is used


BACKENDS: dict[str, Registration] = {
    "onnxruntime": Registration("onnx", "edgeclip.runtime.backends.onnxruntime:OnnxRuntimeBackend"),
    "openvino": Registration("openvino", "edgeclip.runtime.backends.openvino:OpenVinoBackend"),
    "tensorrt": Registration("tensorrt", "edgeclip.runtime.backends.tensorrt:TensorRTBackend"),
    "coreml": Registration("coreml", "edgeclip.runtime.backends.coreml:CoreMLBackend"),
    "litert": Registration("litert", "edgeclip.runtime.backends.litert:LiteRTBackend"),
    "rknn": Registration("rknn", "edgeclip.runtime.backends.rknn:RknnBackend"),
}
ARM = ("aarch64", "arm64", "armv7l", "armv8l")

# Without a preference of its own, a backend picks the artifact precision in this order:
# quantized artifacts passed the accuracy guard at export, so they are what a device wants.
DEFAULT_PRECISION_ORDER: tuple[str, ...] = ("int8", "fp16", "fp32")


def register_backend(name: str, target: str, path: str) -> None:
    """Add a backend: it runs `target`'s artifacts and is imported from `path` ("module:Class")."""
    if name in BACKENDS:
        raise ConfigError(f"backend '{name}' is already registered", fix="choose another name")
    BACKENDS[name] = Registration(target, path)


def _registration(name: str) -> Registration:
    if name not in BACKENDS:
        raise UnknownNameError("backend", name, BACKENDS)
    return BACKENDS[name]


def backend_class(name: str) -> Any:
    module, _, attr = _registration(name).path.partition(":")
    return getattr(importlib.import_module(module), attr)


def backend_target(name: str) -> str:
    """The export target whose artifacts backend `name` runs, e.g. "onnxruntime" -> "onnx"."""
    return _registration(name).target


def target_backend(target: str) -> str:
    """The backend that runs `target`'s artifacts, e.g. "onnx" -> "onnxruntime"."""
    runs = {r.target: name for name, r in BACKENDS.items()}
    if target not in runs:
        raise UnknownNameError("target", target, runs)
    return runs[target]


def list_backends() -> dict[str, bool]:
    """{backend name: installed and usable here?} without importing any SDK."""
    return {name: bool(backend_class(name).available()) for name in BACKENDS}


def auto_order() -> tuple[list[str], str]:
    """Backends in the order `backend="auto"` tries them on this machine, and why.

    TensorRT on NVIDIA GPUs and Jetson, CoreML on Apple, RKNN on Rockchip boards, LiteRT (XNNPACK)
    on ARM Linux, OpenVINO on x86 CPUs, onnxruntime everywhere; the rest follow as fallbacks.
    """
    order: list[str] = []
    why: list[str] = []
    if has_nvidia_gpu():
        order.append("tensorrt")
        why.append("NVIDIA GPU present")
    if platform.system() == "Darwin":
        order.append("coreml")
        why.append("Apple device")
    if is_rockchip():
        order.append("rknn")
        why.append("Rockchip board")
    if platform.system() == "Linux" and platform.machine().lower() in ARM:
        order.append("litert")
        why.append("ARM Linux")
    if platform.machine().lower() in ("x86_64", "amd64", "i686", "i386"):
        order.append("openvino")
        why.append("x86 CPU")
    order += [b for b in ("onnxruntime", "openvino", "tensorrt", "coreml", "litert", "rknn") if b not in order]
    return order, ", ".join(why) or "generic CPU"
