"""TensorRT backend (TensorRT 10, NVIDIA GPUs and Jetson): runs a `tensorrt` artifact's engine.

The artifact ships a TensorRT-ready ONNX; engines are GPU- and version-specific, so the engine
is looked up in a cache keyed by TensorRT version + GPU + precision (+ ONNX hash and profile)
and built on first load when missing: `<artifact>/engines/` when the bundle is writable, else
the user cache (`$XDG_CACHE_HOME/edgeclip/tensorrt`). I/O uses TensorRT 10's tensor API and
CUDA through cuda-python; no PyCUDA, no torch.
"""

from __future__ import annotations

import importlib
import os
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgeclip import _deps
from edgeclip.bundle import Artifact
from edgeclip.errors import BundleError, EdgeclipError, MissingDependencyError, PlatformError
from edgeclip.runtime.backends.base import BackendOptions, DescribeInfo, has_nvidia_gpu, missing_sdk
from edgeclip.runtime.backends.tensorrt_engine import USER_PLAN, build_artifact_engine, engine_name


def _cudart() -> Any:
    for name in ("cuda.bindings.runtime", "cuda.cudart"):  # cuda-python >= 12.6, then older layouts
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise MissingDependencyError("'cuda-python' is not installed but is needed (the tensorrt backend)",
                                 fix='pip install "edgeclip[tensorrt]"')


def _check(result: Any) -> Any:
    """cuda-python returns (error, *values): raise on error, return the value(s)."""
    err, *values = result
    if getattr(err, "value", err) != 0:  # cudaError_t.cudaSuccess is 0
        raise EdgeclipError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else tuple(values) or None


def user_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeclip" / "tensorrt"


class TensorRTBackend:
    name: ClassVar[str] = "tensorrt"
    extra: ClassVar[str] = "tensorrt"
    sdk: ClassVar[str] = "tensorrt"

    @classmethod
    def available(cls) -> bool:
        return cls.unavailable() is None

    @classmethod
    def unavailable(cls) -> EdgeclipError | None:
        if not has_nvidia_gpu():
            return PlatformError("TensorRT runs only on NVIDIA GPUs (and Jetson); this machine has none",
                                 fix="export a target for this machine (e.g. --target onnx or openvino) and use "
                                     "another backend, or run this bundle on an NVIDIA device")
        return missing_sdk(cls.sdk, cls.name, cls.extra) or missing_sdk("cuda", cls.name, cls.extra)

    def __init__(self, path: Path, artifact: Artifact, options: BackendOptions = BackendOptions()) -> None:
        trt: Any = _deps.require("tensorrt", extra=self.extra, purpose="the tensorrt backend")
        self._cudart = cudart = _cudart()
        device = _check(cudart.cudaGetDevice())
        name = _check(cudart.cudaGetDeviceProperties(device)).name
        self.gpu = (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).split("\0")[0].strip()
        self.tensorrt_version: str = trt.__version__
        self.precision = artifact.precision
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.plan_path, self.engine = self._load_or_build(trt, Path(path), artifact)
        self.context = self.engine.create_execution_context()

        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BundleError(f"{self.plan_path}: expected one input and one output, got {inputs} -> {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.output_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])

        # device buffers sized once for the largest batch of the profile
        self.context.set_input_shape(self.input_name, tuple(hi))
        in_bytes = int(np.prod(tuple(hi))) * self.input_dtype.itemsize
        out_bytes = int(np.prod(tuple(self.context.get_tensor_shape(self.output_name)))) * self.output_dtype.itemsize
        self._stream = _check(cudart.cudaStreamCreate())
        self._d_in = _check(cudart.cudaMalloc(in_bytes))
        self._d_out = _check(cudart.cudaMalloc(out_bytes))
        self.context.set_tensor_address(self.input_name, int(self._d_in))
        self.context.set_tensor_address(self.output_name, int(self._d_out))
        self._lock = threading.Lock()  # one context, one stream, one set of buffers: one call at a time

    def _load_or_build(self, trt: Any, onnx_path: Path, artifact: Artifact) -> tuple[Path, Any]:
        runtime = self._runtime = trt.Runtime(self._logger)
        name = engine_name(artifact, self.tensorrt_version, self.gpu)
        local, user = onnx_path.parent / "engines" / name, user_cache_dir() / name
        # a plan from build_engine.sh (model.plan) is used when it deserializes on this device
        for plan in (local, user, onnx_path.parent / USER_PLAN):
            if plan.is_file() and (engine := runtime.deserialize_cuda_engine(plan.read_bytes())) is not None:
                return plan, engine
        plan = local if os.access(onnx_path.parent, os.W_OK) else user
        build_artifact_engine(onnx_path, plan, artifact)
        engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise BundleError(f"TensorRT {self.tensorrt_version} could not load the engine it just built: {plan}")
        return plan, engine

    def describe(self) -> DescribeInfo:
        """What ran (base.DescribeInfo): an engine runs only on the GPU it was built for."""
        return {"requested": "GPU", "device": f"GPU {self.gpu}", "precision_hint": self.precision,
                "compute_layers": None, "kernels": {"engine": 1}, "engine": str(self.plan_path),
                "tensorrt": self.tensorrt_version}

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(inputs[self.input_name], dtype=self.input_dtype)
        with self._lock:
            chunks = [self._run(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
        return {self.output_name: np.concatenate(chunks).astype(np.float32, copy=False)}

    def _run(self, x: np.ndarray) -> np.ndarray:
        cudart, n = self._cudart, len(x)
        if n < self.min_batch:  # pad up to the profile's minimum with copies of the last row
            x = np.ascontiguousarray(np.concatenate([x, np.repeat(x[-1:], self.min_batch - n, axis=0)]))
        self.context.set_input_shape(self.input_name, x.shape)
        out = np.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=self.output_dtype)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(self._d_in, x.ctypes.data, x.nbytes, h2d, self._stream))
        if not self.context.execute_async_v3(int(self._stream)):
            raise EdgeclipError(f"TensorRT execution failed for {self.plan_path}")
        _check(cudart.cudaMemcpyAsync(out.ctypes.data, self._d_out, out.nbytes, d2h, self._stream))
        _check(cudart.cudaStreamSynchronize(self._stream))  # `out` is complete only after this
        return out[:n]

    def __del__(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        try:
            for attr in ("_d_in", "_d_out"):
                if hasattr(self, attr):
                    cudart.cudaFree(getattr(self, attr))
            if hasattr(self, "_stream"):
                cudart.cudaStreamDestroy(self._stream)
        except Exception:  # interpreter shutdown may have torn CUDA down already
            pass
