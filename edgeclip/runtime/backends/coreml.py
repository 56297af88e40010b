"""CoreML backend: an ML Program .mlpackage through coremltools' predict (macOS only).

The manifest lists the package's files with `<dir>/model.mlpackage/Manifest.json` first, so the
path this backend receives is that file and the package is its parent directory.
"""

from __future__ import annotations

import platform
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgeclip import _deps
from edgeclip.bundle import Artifact
from edgeclip.errors import ConfigError, EdgeclipError, PlatformError
from edgeclip.runtime.backends.base import NP_DTYPES, BackendOptions, DescribeInfo, missing_sdk

_NP_DTYPES = {**NP_DTYPES, "int64": np.int32}  # Core ML programs take int32 token ids
# BackendOptions.device -> coremltools ComputeUnit name. "CPU" (the default) gives fp32-like
# numerics; "ALL"/"ANE" lets Core ML place work on the GPU and Neural Engine (fp16).
_COMPUTE_UNITS = {"CPU": "CPU_ONLY", "GPU": "CPU_AND_GPU", "ALL": "ALL", "ANE": "ALL", "AUTO": "ALL",
                  "NE": "CPU_AND_NE"}


def image_from_row(x: np.ndarray, image_input: dict[str, Any]) -> Any:
    """A PIL RGB image from a normalised [1, 3, S, S] row: mean/std undone, then the rescale, as the
    package's ImageType (`image_input`: scale, mean, std) expects its 0..255 input. Rounding to uint8 is
    the only loss (< half a level), the same a camera frame has anyway."""
    from PIL import Image

    mean = np.asarray(image_input["mean"], dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(image_input["std"], dtype=np.float32).reshape(3, 1, 1)
    levels = (x[0] * std + mean) / np.float32(image_input["scale"])
    rgb = np.clip(np.rint(levels), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 2, 0)))  # uint8 HxWx3: RGB


def package_dir(path: Path) -> Path:
    """The .mlpackage directory for the artifact's main file (its Manifest.json) or the package itself."""
    return path.parent if path.name == "Manifest.json" else path


class CoreMLBackend:
    name: ClassVar[str] = "coreml"
    extra: ClassVar[str] = "coreml"
    sdk: ClassVar[str] = "coremltools"

    model: Any  # coremltools.models.MLModel
    input_dtypes: dict[str, type[np.generic]]
    output_names: list[str]
    max_batch: int
    image_input: dict[str, Any] | None
    _lock: threading.Lock

    @classmethod
    def available(cls) -> bool:
        return cls.unavailable() is None

    @classmethod
    def unavailable(cls) -> EdgeclipError | None:
        # coremltools installs on Linux too, but its predict needs Apple's Core ML framework
        if sys.platform != "darwin":
            installed = " (coremltools is installed, but it cannot predict here)" if _deps.has("coremltools") else ""
            return PlatformError(
                f"Core ML runs only on macOS and iOS; this machine runs {platform.system()}{installed}",
                fix="export a target for this machine (edgeclip export CKPT --target onnx,openvino --out BUNDLE) "
                    "and use another backend, or run this bundle on a Mac or iPhone",
            )
        return missing_sdk(cls.sdk, cls.name, cls.extra)

    def __init__(self, path: Path, artifact: Artifact, options: BackendOptions = BackendOptions()) -> None:
        if (reason := self.unavailable()) is not None:
            raise reason
        ct: Any = _deps.require("coremltools", extra=self.extra, purpose="the coreml backend")
        unit = _COMPUTE_UNITS.get(options.device.upper())
        if unit is None:
            raise ConfigError(f"unknown CoreML device '{options.device}'",
                              fix=f"use one of: {', '.join(_COMPUTE_UNITS)}")
        self.requested, self.compute_units = options.device, unit
        self.model = ct.models.MLModel(str(package_dir(Path(path))), compute_units=getattr(ct.ComputeUnit, unit))
        self.input_dtypes = {s.name: _NP_DTYPES.get(s.dtype, np.float32) for s in artifact.inputs}
        self.output_names = [s.name for s in artifact.outputs]
        # a model exported at fixed batch 1 (the default, for the Neural Engine) takes one row a call;
        # a flexible one at most its range's upper bound
        fixed = artifact.inputs[0].shape[0] == 1
        self.max_batch = 1 if fixed else artifact.environment.max_batch or 1 << 30
        self.image_input = artifact.environment.image_input
        self._lock = threading.Lock()  # MLModel.predict is not documented as thread-safe

    def describe(self) -> DescribeInfo:
        """What ran (base.DescribeInfo): Core ML places layers itself and does not say where; only
        CPU_ONLY pins them to the CPU."""
        return {"requested": self.requested, "device": "CPU" if self.compute_units == "CPU_ONLY" else None,
                "precision_hint": None, "compute_layers": None, "kernels": {}, "compute_units": self.compute_units}

    def _feed(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        feed: dict[str, Any] = {}
        for k, v in inputs.items():
            if self.image_input is not None and k in self.input_dtypes and v.ndim == 4:
                feed[k] = image_from_row(v, self.image_input)
            else:
                feed[k] = np.ascontiguousarray(v, dtype=self.input_dtypes.get(k, np.float32))
        return feed

    def _predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            out = self.model.predict(self._feed(inputs))
        return {n: np.asarray(out[n], dtype=np.float32).reshape(-1, np.asarray(out[n]).shape[-1])
                for n in self.output_names}

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """inputs: {name: [N, ...]} -> {name: [N, D] float32}."""
        n, step = len(next(iter(inputs.values()))), self.max_batch
        if n <= step:
            return self._predict(inputs)
        parts = [self._predict({k: v[i : i + step] for k, v in inputs.items()}) for i in range(0, n, step)]
        return {name: np.concatenate([p[name] for p in parts]) for name in self.output_names}
