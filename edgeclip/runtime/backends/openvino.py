"""OpenVINO backend: IR (.xml + .bin) on CPU, GPU or NPU."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgeclip import _deps
from edgeclip.bundle import Artifact
from edgeclip.errors import ConfigError, EdgeclipError
from edgeclip.runtime.backends.base import BackendOptions, DescribeInfo, as_feed, input_dtypes, missing_sdk

# the runtime model's layer types that do a layer's matmul / conv arithmetic
COMPUTE_LAYERS = frozenset({"FullyConnected", "MatMul", "Convolution", "GroupConvolution", "Deconvolution",
                            "ScaledDotProductAttention", "ScaledAttn"})


class OpenVinoBackend:
    name: ClassVar[str] = "openvino"
    extra: ClassVar[str] = "openvino"
    sdk: ClassVar[str] = "openvino"

    @classmethod
    def available(cls) -> bool:
        return cls.unavailable() is None

    @classmethod
    def unavailable(cls) -> EdgeclipError | None:
        return missing_sdk(cls.sdk, cls.name, cls.extra)

    def __init__(self, path: Path, artifact: Artifact, options: BackendOptions = BackendOptions()) -> None:
        ov: Any = _deps.require("openvino", extra=self.extra, purpose="the openvino backend")
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if options.threads:
            config["INFERENCE_NUM_THREADS"] = options.threads
        if options.precision_hint:
            config["INFERENCE_PRECISION_HINT"] = options.precision_hint
        self.requested = options.device
        self.input_dtypes = input_dtypes(artifact)
        self.output_names = [s.name for s in artifact.outputs]
        self._core, self._config = ov.Core(), config
        self._model = self._core.read_model(str(path))
        self._batched: Any = None
        self._single: Any = None
        if artifact.encoder == "image" and self._model.inputs[0].get_partial_shape()[0].is_dynamic:
            # one image (a camera frame) runs on a compiled copy with every shape static: ViT-B/32 int8
            # ran 1.07x faster at batch 1 than on the dynamic batch (export_forms_speed.json). The first
            # larger batch compiles the dynamic model and both are kept, so a process that runs both
            # holds two compiled copies (the weights twice over). Text towers, which
            # encode prompts in batches, compile the dynamic model alone, as before.
            self._single = self._compile(_with_batch(self._model, 1))
        else:
            self._batched = self._compile(self._model)
        # each input's dims, None where dynamic: checked before a run, since with INFERENCE_NUM_THREADS=1
        # the CPU plugin runs a dynamic-batch model on a wrongly shaped input with no error (an empty
        # or garbage result)
        self._dims = {name: [None if d.is_dynamic else d.get_length() for d in port.get_partial_shape()]
                      for port in self._model.inputs for name in port.get_names()}
        self._local = threading.local()  # an infer request is not thread-safe: one per thread and model
        self._lock = threading.Lock()

    def _compile(self, model: Any) -> Any:
        return self._core.compile_model(model, self.requested, self._config)

    @property
    def compiled(self) -> Any:
        """The compiled model that runs a batch of 1 (what describe() reports)."""
        return self._single if self._single is not None else self._batched

    def _request(self, batch: int) -> Any:
        single = batch == 1 and self._single is not None
        if not single and self._batched is None:
            with self._lock:
                if self._batched is None:
                    self._batched = self._compile(self._model)
        key = "single" if single else "batched"
        request = getattr(self._local, key, None)
        if request is None:
            request = (self._single if single else self._batched).create_infer_request()
            setattr(self._local, key, request)
        return request

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
        feed = as_feed(self.input_dtypes, inputs)
        self._check_shapes(feed)
        request = self._request(len(next(iter(feed.values()))))
        result = request.infer(feed)
        # results alias the request's buffers, which the next call overwrites
        return {name: np.array(result[name], copy=True) for name in self.output_names}

    def _check_shapes(self, feed: dict[str, np.ndarray]) -> None:
        for name, x in feed.items():
            dims = self._dims.get(name)
            if dims is None:
                continue
            if x.ndim != len(dims) or any(d not in (None, n) for d, n in zip(dims, x.shape, strict=True)):
                want = ["N" if d is None else d for d in dims]
                raise ConfigError(f"input '{name}' takes shape {want}, got {list(x.shape)}",
                                  fix="feed arrays of the shape the bundle's manifest gives for this input")


def _with_batch(model: Any, batch: int) -> Any:
    """A copy of `model` with the batch dimension of every input fixed to `batch`."""
    fixed = model.clone()
    fixed.reshape({port: [batch, *port.get_partial_shape()[1:]] for port in fixed.inputs})
    return fixed
