"""The one interface every inference backend implements."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from edgeclip import _deps
from edgeclip.bundle import Artifact
from edgeclip.errors import ConfigError, EdgeclipError, MissingDependencyError

# manifest dtype name -> numpy dtype of the array a backend feeds
NP_DTYPES: dict[str, type[np.generic]] = {
    "float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "uint8": np.uint8,
}


def input_dtypes(artifact: Artifact) -> dict[str, type[np.generic]]:
    return {s.name: NP_DTYPES[s.dtype] for s in artifact.inputs}


def as_feed(dtypes: dict[str, type[np.generic]], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays a backend feeds, contiguous and in each input's dtype. A uint8 input (pixels that
    the graph normalises) takes uint8 only: casting normalised floats to it would run garbage."""
    for k, v in inputs.items():
        if dtypes.get(k) is np.uint8 and np.asarray(v).dtype != np.uint8:
            raise ConfigError(
                f"input '{k}' takes uint8 pixels [N, S, S, 3] (normalised inside the graph), got {np.asarray(v).dtype}",
                fix="feed the resized uint8 RGB images (runtime.preprocess.resize_crop), not normalised floats",
            )
    return {k: np.ascontiguousarray(v, dtype=dtypes[k]) for k, v in inputs.items()}


@dataclass(frozen=True)
class BackendOptions:
    threads: int | None = None  # intra-op threads; None lets the SDK decide
    device: str = "CPU"  # onnxruntime: CPU | CUDA; openvino: CPU | GPU | NPU | AUTO
    # OpenVINO's INFERENCE_PRECISION_HINT. None keeps the device default, which on CPUs with
    # AVX-512 BF16 or AMX is bf16 (fast, ~1e-2 from fp32); "f32" gives fp32 parity.
    precision_hint: str | None = None


class Backend(Protocol):
    """Runs one exported encoder. `infer` must be safe to call from several threads."""

    name: ClassVar[str]  # e.g. "onnxruntime"; the target it runs is in the registry (backend_target)
    extra: ClassVar[str]  # pip extra that installs its SDK
    sdk: ClassVar[str]  # the SDK's module (its version keys timing records: runtime/timings.py)

    @classmethod
    def available(cls) -> bool:
        """True when the SDK is installed and runs here; must not import it."""
        ...

    @classmethod
    def unavailable(cls) -> EdgeclipError | None:
        """Why the backend cannot run here (a missing SDK, the wrong OS or hardware), or None."""
        ...

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


# Backend.describe(), where a backend has one (bench calls it once, after timing; it may build a
# second session to find out): what ran the artifact, read back from the SDK, not from the options.
#   requested:       the device asked for (BackendOptions.device)
#   device:          what ran it: "CPU", "GPU.0", "CUDA", a GPU's name; None when the SDK does not say
#   providers:       onnxruntime's execution providers, in priority order
#   precision_hint:  the inference precision in effect ("f32", "bf16", "f16"), None where there is no hint
#   compute_layers:  matmul / fully-connected / conv layers as they ran, counted by precision
#                    ({"i8": 48, "u8": 1} or {"int8": 48, "float": 24}); None when the SDK does not say
#   kernels:         every kernel that ran, counted by type (and provider, where there are several)
DescribeInfo = dict[str, Any]
CPU_DEVICES = ("CPU", "CPUEXECUTIONPROVIDER")
# devices that name no accelerator: asking for them and getting the CPU is no fallback
NOT_ACCELERATORS = ("CPU", "AUTO", "SIM")


def fell_back_to_cpu(info: DescribeInfo) -> bool:
    """An accelerator was asked for (a GPU, NPU, CUDA, a delegate) but the CPU ran the artifact."""
    requested = str(info.get("requested") or "CPU").upper()
    device = str(info.get("device") or "").upper()
    return requested not in NOT_ACCELERATORS and device in CPU_DEVICES


def missing_sdk(module: str, backend: str, extra: str) -> MissingDependencyError | None:
    """The error for a backend whose SDK is not installed, or None; never imports the SDK."""
    if _deps.has(module):
        return None
    return MissingDependencyError(f"the {backend} backend needs '{module}', which is not installed",
                                  fix=f'pip install "edgeclip[{extra}]"')


def has_nvidia_gpu() -> bool:
    """An NVIDIA GPU device node (desktop/server: /dev/nvidiaN; Jetson: nvhost), without touching CUDA."""
    dev = Path("/dev")
    if dev.is_dir():
        return any(dev.glob("nvidia[0-9]*")) or (dev / "nvhost-ctrl-gpu").exists()
    return shutil.which("nvidia-smi") is not None  # no /dev (Windows): the driver's tool is the best hint


def is_rockchip() -> bool:
    """A Rockchip SoC, from the device tree (where the board's kernel exposes it)."""
    try:
        return b"rockchip" in Path("/proc/device-tree/compatible").read_bytes()
    except OSError:
        return False
