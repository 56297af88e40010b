"""ONNX Runtime backend (CPU; CUDA/TensorRT execution providers are used when present)."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgeclip import _deps
from edgeclip.bundle import Artifact
from edgeclip.errors import EdgeclipError
from edgeclip.runtime.backends.base import BackendOptions, DescribeInfo, as_feed, input_dtypes, missing_sdk

# matmul / conv kernels after onnxruntime's fusions, by the arithmetic they run in
INT8_KERNELS = frozenset({"QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                          "QLinearConv", "ConvInteger", "QGemm", "QAttention", "DynamicQuantizeLSTM"})
FLOAT_KERNELS = frozenset({"MatMul", "FusedMatMul", "Gemm", "Conv", "FusedConv", "FusedGemm", "Attention",
                           "MultiHeadAttention", "GroupQueryAttention"})
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(uint8)": np.uint8}


def _session_options(ort: Any, options: BackendOptions) -> Any:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # Worker threads spin between the ops of a run (latency), but not after it: by default they
    # keep spinning for a while after run() returns, taking the cores from whatever runs next
    # (a camera decode, another session: an idle session doubled a neighbour's latency here)
    so.add_session_config_entry("session.force_spinning_stop", "1")
    if options.threads:
        so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
    return so


def _zeros(node: Any) -> np.ndarray:
    """An all-zero input for `node` (an onnxruntime NodeArg), symbolic dimensions set to 1."""
    return np.zeros([d if isinstance(d, int) else 1 for d in node.shape], dtype=_ORT_TYPES.get(node.type, np.float32))


def _device(provider: str) -> str:
    """"CUDAExecutionProvider" -> "CUDA"."""
    return provider.removesuffix("ExecutionProvider")


class OnnxRuntimeBackend:
    name: ClassVar[str] = "onnxruntime"
    extra: ClassVar[str] = "onnx"
    sdk: ClassVar[str] = "onnxruntime"
    # fp16 graphs run slower than fp32 on CPU execution providers (casts around most kernels)
    precision_order: ClassVar[tuple[str, ...]] = ("int8", "fp32", "fp16")

    @classmethod
    def available(cls) -> bool:
        return cls.unavailable() is None

    @classmethod
    def unavailable(cls) -> EdgeclipError | None:
        return missing_sdk(cls.sdk, cls.name, cls.extra)

    def __init__(self, path: Path, artifact: Artifact, options: BackendOptions = BackendOptions()) -> None:
        ort: Any = _deps.require("onnxruntime", extra=self.extra, purpose="the onnxruntime backend")
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if options.device.upper() == "CUDA" else [
            "CPUExecutionProvider"
        ]
        providers = [p for p in wanted if p in ort.get_available_providers()]
        self.path, self.options = Path(path), options
        self.session = ort.InferenceSession(str(path), sess_options=_session_options(ort, options),
                                            providers=providers)
        self.input_dtypes = input_dtypes(artifact)
        self.output_names = [s.name for s in artifact.outputs]

    def describe(self) -> DescribeInfo:
        """What ran (base.DescribeInfo): the session's providers, and every kernel of one profiled run
        of a same-configured session (after onnxruntime's graph fusions) with the provider that ran it."""
        ort: Any = _deps.require("onnxruntime", extra=self.extra, purpose="the onnxruntime backend")
        so = _session_options(ort, self.options)
        so.enable_profiling = True
        with tempfile.TemporaryDirectory() as tmp:
            so.profile_file_prefix = str(Path(tmp) / "profile")
            session = ort.InferenceSession(str(self.path), sess_options=so, providers=self.session.get_providers())
            session.run(None, {i.name: _zeros(i) for i in session.get_inputs()})
            events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
        ran = [e["args"] for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
        by_provider = Counter(str(a.get("provider")) for a in ran)
        compute = Counter(("int8" if a["op_name"] in INT8_KERNELS else "float") for a in ran
                          if a["op_name"] in INT8_KERNELS or a["op_name"] in FLOAT_KERNELS)
        return {
            "requested": self.options.device, "providers": list(self.session.get_providers()),
            "device": _device(by_provider.most_common(1)[0][0] if by_provider else self.session.get_providers()[0]),
            "precision_hint": None, "compute_layers": dict(compute),
            "kernels": dict(Counter(f"{a['op_name']}@{_device(str(a.get('provider')))}" for a in ran)),
        }

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = as_feed(self.input_dtypes, inputs)
        outs = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, outs, strict=True))
