"""LiteRT (formerly TensorFlow Lite) backend: a .tflite file through `ai-edge-litert`'s Interpreter.

The builtin op resolver applies the XNNPACK delegate by default, so this is XNNPACK on any CPU (x86,
ARM boards, phones) with `BackendOptions.threads` threads. A graph exported with a static batch (what
NNAPI and GPU delegates need) runs a larger batch as consecutive calls; a dynamic-batch graph is resized
to the batch. Token ids go in as int32: LiteRT graphs carry no 64-bit integer inputs.

`BackendOptions.device`: "CPU" (XNNPACK), or "delegate:/path/to/libdelegate.so" for a vendor delegate
(GPU, NNAPI, NPU SDKs) loaded through `load_delegate`.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgeclip import _deps
from edgeclip.bundle import Artifact
from edgeclip.errors import ConfigError, EdgeclipError
from edgeclip.runtime.backends.base import BackendOptions, DescribeInfo, missing_sdk

DELEGATE_PREFIX = "delegate:"


class LiteRTBackend:
    name: ClassVar[str] = "litert"
    extra: ClassVar[str] = "litert"
    sdk: ClassVar[str] = "ai_edge_litert"
    # fp16 weights are dequantized to fp32 at load by XNNPACK: same speed as fp32, half the file
    precision_order: ClassVar[tuple[str, ...]] = ("int8", "int8-dynamic", "fp32", "fp16")

    @classmethod
    def available(cls) -> bool:
        return cls.unavailable() is None

    @classmethod
    def unavailable(cls) -> EdgeclipError | None:
        return missing_sdk(cls.sdk, cls.name, cls.extra)

    def __init__(self, path: Path, artifact: Artifact, options: BackendOptions = BackendOptions()) -> None:
        _deps.require("ai_edge_litert", extra=self.extra, purpose="the litert backend")
        from ai_edge_litert import interpreter as litert

        delegates = _delegates(litert, options.device)
        self.requested, self.delegated = options.device, bool(delegates)
        self.interpreter: Any = litert.Interpreter(
            model_path=str(path), num_threads=options.threads or None, experimental_delegates=delegates
        )
        self.interpreter.allocate_tensors()
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != len(artifact.inputs) or len(outputs) != len(artifact.outputs):
            raise ConfigError(f"{path} has {len(inputs)} input(s) and {len(outputs)} output(s); its manifest entry "
                              f"lists {len(artifact.inputs)} and {len(artifact.outputs)}",
                              fix="re-export the bundle (edgeclip export --target litert)")
        # the manifest's tensors in order <-> the graph's (converted from the same positional signature)
        self.inputs = {s.name: d for s, d in zip(artifact.inputs, inputs, strict=True)}
        self.outputs = {s.name: d for s, d in zip(artifact.outputs, outputs, strict=True)}
        first = inputs[0]
        self.dynamic = int(first["shape_signature"][0]) == -1
        self.static_batch = int(first["shape"][0])
        self._lock = threading.Lock()  # one interpreter holds one set of tensors: calls take turns
        self._batch = self.static_batch

    def describe(self) -> DescribeInfo:
        """What ran (base.DescribeInfo): the interpreter's ops after delegation. A vendor delegate
        that took no op (every op still a builtin kernel) means the CPU ran the graph."""
        with self._lock:
            ops = [str(d.get("op_name")) for d in self.interpreter._get_ops_details()]
        took = self.delegated and "DELEGATE" in ops
        return {"requested": self.requested, "device": self.requested if took else "CPU",
                "precision_hint": None, "compute_layers": None, "kernels": dict(Counter(ops))}

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """inputs: {name: [N, ...]} -> {name: [N, D]}, whatever batch the graph was exported with."""
        feed = {k: np.ascontiguousarray(v, dtype=self.inputs[k]["dtype"]) for k, v in inputs.items()}
        n = len(next(iter(feed.values())))
        with self._lock:
            if self.dynamic:
                return self._run(feed, n)
            step = self.static_batch
            parts = [self._run(_padded(feed, i, step), step) for i in range(0, n, step)]
        return {k: np.concatenate([p[k] for p in parts])[:n] for k in self.outputs}

    def _run(self, feed: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        if batch != self._batch:
            for k, d in self.inputs.items():
                self.interpreter.resize_tensor_input(d["index"], [batch, *feed[k].shape[1:]], strict=True)
            self.interpreter.allocate_tensors()
            self._batch = batch
        for k, x in feed.items():
            self.interpreter.set_tensor(self.inputs[k]["index"], x)
        self.interpreter.invoke()
        # get_tensor copies, so the next invoke cannot overwrite what was returned
        return {k: self.interpreter.get_tensor(d["index"]).astype(np.float32) for k, d in self.outputs.items()}


def _padded(feed: dict[str, np.ndarray], start: int, step: int) -> dict[str, np.ndarray]:
    """Rows start..start+step of each input; a short last chunk repeats its last row (dropped after)."""
    out = {}
    for k, x in feed.items():
        chunk = x[start : start + step]
        if len(chunk) < step:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - len(chunk), axis=0)])
        out[k] = chunk
    return out


def _delegates(litert: Any, device: str) -> list[Any] | None:
    if device.upper() == "CPU":
        return None  # XNNPACK, applied by the builtin op resolver
    if device.startswith(DELEGATE_PREFIX):
        library = device[len(DELEGATE_PREFIX) :]
        try:
            return [litert.load_delegate(library)]
        except (ValueError, OSError) as e:
            raise ConfigError(f"could not load the LiteRT delegate {library}: {e}",
                              fix="check the delegate library's path and that it is built for this device") from e
    raise ConfigError(f"unknown LiteRT device '{device}'",
                      fix=f"use CPU (XNNPACK) or {DELEGATE_PREFIX}/path/to/libdelegate.so")
