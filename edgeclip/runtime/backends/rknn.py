"""RKNN backend: a .rknn graph on a Rockchip NPU (rk3588, rk3576, rk3568, rk3566, rk3562).

On a board it runs through `rknn-toolkit-lite2`'s RKNNLite with an NPU core mask
(`BackendOptions.device`: AUTO, NPU_CORE_0, NPU_CORE_1, NPU_CORE_2, NPU_CORE_0_1, NPU_CORE_0_1_2).
Elsewhere (device "SIM", or no rknnlite installed) it uses rknn-toolkit2's PC simulator in its isolated
environment. The simulator cannot run a built .rknn (only a model built in the same session), so an
artifact also carries what rebuilds the same graph: the ONNX graph (fp16) or RKNN's calibrated model
and quantization config (int8). Simulator numbers are accuracy only: its speed is not the NPU's.
The graph's batch is static (1): a batch runs as one call per row.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgeclip import _deps
from edgeclip.bundle import Artifact
from edgeclip.errors import ConfigError, EdgeclipError, MissingDependencyError
from edgeclip.runtime.backends.base import BackendOptions, input_dtypes
from edgeclip.runtime.backends.rknn_toolkit import ToolkitWorker, has_toolkit_env, missing_env_error

PLATFORMS = ("rk3588", "rk3576", "rk3568", "rk3566", "rk3562")
CORE_MASKS = ("AUTO", "NPU_CORE_0", "NPU_CORE_1", "NPU_CORE_2", "NPU_CORE_0_1", "NPU_CORE_0_1_2")
SIMULATOR = "SIM"
# what an artifact carries for the simulator, per precision: files next to model.rknn
SIM_SOURCES = {"fp16": ("model.onnx",), "int8": ("model.model", "model.data", "model.quantization.cfg")}


class RknnBackend:
    name: ClassVar[str] = "rknn"
    extra: ClassVar[str] = "rknn"
    sdk: ClassVar[str] = "rknnlite"

    @classmethod
    def available(cls) -> bool:
        return cls.unavailable() is None

    @classmethod
    def unavailable(cls) -> EdgeclipError | None:
        if _deps.has(cls.sdk) or has_toolkit_env():
            return None
        return MissingDependencyError(
            "the rknn backend needs 'rknn-toolkit-lite2' (on a Rockchip board) or the RKNN toolkit environment "
            "(its PC simulator), and neither is installed",
            fix='on the board: pip install "edgeclip[rknn]"; on a PC: edgeclip toolkit rknn',
        )

    def __init__(self, path: Path, artifact: Artifact, options: BackendOptions = BackendOptions()) -> None:
        device = options.device.upper()
        self.input_dtypes = input_dtypes(artifact)
        self.output_names = [s.name for s in artifact.outputs]
        self._lock = threading.Lock()
        self.simulated = device == SIMULATOR or not _deps.has("rknnlite")
        if self.simulated:
            self.worker = _simulator(Path(path), artifact)
        else:
            self.lite = _board(Path(path), device)

    def _row(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.lite.inference(inputs=[x], data_format="nchw")[0]).reshape(1, -1)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (name, x), = inputs.items()
        x = np.ascontiguousarray(x, dtype=self.input_dtypes[name])
        with self._lock:
            if self.simulated:  # the worker loops over rows itself: one round trip per batch
                out = self.worker.infer(x)
            else:
                out = np.concatenate([self._row(x[i : i + 1]) for i in range(len(x))])
        return {self.output_names[0]: out.astype(np.float32)}

    def close(self) -> None:
        if self.simulated:
            self.worker.close()
        else:
            self.lite.release()


def _board(path: Path, device: str) -> Any:
    from rknnlite.api import RKNNLite

    core = "AUTO" if device in ("CPU", "NPU") else device
    if core not in CORE_MASKS:
        raise ConfigError(f"unknown RKNN NPU core mask '{device}'", fix=f"use one of: {', '.join(CORE_MASKS)}")
    mask = getattr(RKNNLite, "NPU_CORE_AUTO" if core == "AUTO" else core)
    lite = RKNNLite(verbose=False)
    if lite.load_rknn(str(path)) != 0 or lite.init_runtime(core_mask=mask) != 0:
        raise EdgeclipError(f"RKNNLite could not load {path} on this board",
                            fix="check that the bundle was exported for this board's platform (--rknn-platform) "
                                "and that the NPU driver (librknnrt.so) matches rknn-toolkit-lite2")
    return lite


def _simulator(path: Path, artifact: Artifact) -> ToolkitWorker:
    """Rebuild the artifact's graph in the toolkit's simulator from the sources it carries."""
    env = artifact.environment.details
    sources = SIM_SOURCES.get(artifact.precision)
    folder = path.parent
    if sources is None or not all((folder / s).is_file() for s in sources):
        raise missing_env_error(f"{artifact.key} carries no simulator sources; it runs on a Rockchip board only")
    worker = ToolkitWorker()
    try:
        if artifact.precision == "fp16":
            worker.call("build", platform=env["rknn_platform"], onnx=str(folder / sources[0]),
                        input=artifact.inputs[0].name, shape=list(env["input_shape"]), out="")
        else:
            # step 2 repeats step 1's quantization algorithm (the toolkit refuses another config)
            worker.call("build_int8", platform=env["rknn_platform"], model=str(folder / sources[0]),
                        data=str(folder / sources[1]), cfg=str(folder / sources[2]), out="",
                        algorithm=env.get("rknn_quantized_algorithm", "normal"))
    except BaseException:
        worker.close()
        raise
    return worker
