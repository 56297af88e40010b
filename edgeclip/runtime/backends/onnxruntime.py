"""ONNX Runtime backend (CPU; CUDA/TensorRT execution providers are used when present)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgeclip import _deps
from edgeclip.bundle import Artifact
from edgeclip.errors import EdgeclipError
from edgeclip.runtime.backends.base import BackendOptions, as_feed, input_dtypes, missing_sdk


class OnnxRuntimeBackend:
    name: ClassVar[str] = "onnxruntime"
    extra: ClassVar[str] = "onnx"
    # fp16 graphs run slower than fp32 on CPU execution providers (casts around most kernels)
    precision_order: ClassVar[tuple[str, ...]] = ("int8", "fp32", "fp16")

    @classmethod
    def available(cls) -> bool:
        return cls.unavailable() is None

    @classmethod
    def unavailable(cls) -> EdgeclipError | None:
        return missing_sdk("onnxruntime", cls.name, cls.extra)

    def __init__(self, path: Path, artifact: Artifact, options: BackendOptions = BackendOptions()) -> None:
        ort: Any = _deps.require("onnxruntime", extra=self.extra, purpose="the onnxruntime backend")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        # Worker threads spin between the ops of a run (latency), but not after it: by default they
        # keep spinning for a while after run() returns, taking the cores from whatever runs next
        # (a camera decode, another session: an idle session doubled a neighbour's latency here)
        so.add_session_config_entry("session.force_spinning_stop", "1")
        if options.threads:
            so.intra_op_num_threads = options.threads
            so.inter_op_num_threads = 1
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if options.device.upper() == "CUDA" else [
            "CPUExecutionProvider"
        ]
        providers = [p for p in wanted if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        self.input_dtypes = input_dtypes(artifact)
        self.output_names = [s.name for s in artifact.outputs]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = as_feed(self.input_dtypes, inputs)
        outs = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, outs, strict=True))
