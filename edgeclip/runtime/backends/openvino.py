"""OpenVINO backend: IR (.xml + .bin) on CPU, GPU or NPU."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgeclip import _deps
from edgeclip.bundle import Artifact
from edgeclip.errors import EdgeclipError
from edgeclip.runtime.backends.base import BackendOptions, DescribeInfo, as_feed, input_dtypes, missing_sdk

# the runtime model's layer types that do a layer's matmul / conv arithmetic
COMPUTE_LAYERS = frozenset({"FullyConnected", "MatMul", "Convolution", "GroupConvolution", "Deconvolution",
                            "ScaledDotProductAttention", "ScaledAttn"})


class OpenVinoBackend:
    name: ClassVar[str] = "openvino"
    extra: ClassVar[str] = "openvino"

    @classmethod
    def available(cls) -> bool:
        return cls.unavailable() is None

    @classmethod
    def unavailable(cls) -> EdgeclipError | None:
        return missing_sdk("openvino", cls.name, cls.extra)

    def __init__(self, path: Path, artifact: Artifact, options: BackendOptions = BackendOptions()) -> None:
        ov: Any = _deps.require("openvino", extra=self.extra, purpose="the openvino backend")
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if options.threads:
            config["INFERENCE_NUM_THREADS"] = options.threads
        if options.precision_hint:
            config["INFERENCE_PRECISION_HINT"] = options.precision_hint
        self.requested = options.device
        self.compiled = ov.Core().compile_model(str(path), options.device, config)
        self.input_dtypes = input_dtypes(artifact)
        self.output_names = [s.name for s in artifact.outputs]
        self._local = threading.local()  # an infer request is not thread-safe: one per thread

    @property
    def precision_hint(self) -> str:
        """The inference precision the device actually uses: "f32", "bf16" or "f16"."""
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        return str(hint.get_type_name() if hasattr(hint, "get_type_name") else hint)

    def describe(self) -> DescribeInfo:
        """What ran (base.DescribeInfo): EXECUTION_DEVICES, the precision hint, and the runtime
        model's layers (what the plugin compiled: fused, with the precision each one runs in)."""
        layers = [op.get_rt_info() for op in self.compiled.get_runtime_model().get_ordered_ops()]
        kinds = [(str(r["layerType"].astype(str)), str(r["runtimePrecision"].astype(str))) for r in layers]
        devices = [str(d) for d in self.compiled.get_property("EXECUTION_DEVICES")]
        return {
            "requested": self.requested, "device": ",".join(devices) or None, "precision_hint": self.precision_hint,
            "compute_layers": dict(Counter(prec for kind, prec in kinds if kind in COMPUTE_LAYERS)),
            "runtime_precisions": dict(Counter(prec for _, prec in kinds)),
            "kernels": dict(Counter(f"{kind}@{prec}" for kind, prec in kinds)),
        }

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        feed = as_feed(self.input_dtypes, inputs)
        result = request.infer(feed)
        # results alias the request's buffers, which the next call overwrites
        return {name: np.array(result[self.compiled.output(name)], copy=True) for name in self.output_names}
