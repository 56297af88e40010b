"""The worker that runs inside the RKNN toolkit environment (see rknn_toolkit.py). Standalone: it imports
the standard library, numpy and rknn-toolkit2 only, never edgeclip, because that environment holds only
the toolkit's dependencies.

Protocol: one JSON object a line on stdin, one JSON reply a line on the stdout it was started with
({"ok": true, ...} or {"ok": false, "error": "..."}). Arrays travel as .npy files written and read with
allow_pickle=False. The toolkit's own logging goes to stderr.

Its PC simulator runs only a model built in the same session (a loaded .rknn needs a board), so every
op that builds leaves that model ready for `infer`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np

OPS = ("build", "prepare_int8", "layers", "build_int8", "infer", "version")


class Session:
    def __init__(self) -> None:
        self.rknn: Any = None

    def _fresh(self, platform: str, **config: Any) -> Any:
        from rknn.api import RKNN

        if self.rknn is not None:
            self.rknn.release()
        self.rknn = RKNN(verbose=False)
        _check(self.rknn.config(target_platform=platform, **config), "config")
        return self.rknn

    def build(self, platform: str, onnx: str, input: str, shape: list[int], out: str) -> dict[str, Any]:
        """fp16 (RKNN's float type): load the ONNX graph at a static shape, build, export, simulate."""
        rknn = self._fresh(platform)
        _check(rknn.load_onnx(onnx, inputs=[input], input_size_list=[shape]), "load_onnx")
        _check(rknn.build(do_quantization=False), "build")
        return self._finish(out)

    def prepare_int8(self, platform: str, onnx: str, input: str, shape: list[int], dataset: str,
                     algorithm: str, workdir: str, method: str = "channel", dtype: str = "w8a8") -> dict[str, Any]:
        """Calibrate (hybrid quantization step 1): writes <name>.model/.data/.quantization.cfg to workdir.
        algorithm: normal | mmse | kl_divergence; method: channel | layer; dtype: w8a8 | w8a16."""
        rknn = self._fresh(platform, quantized_algorithm=algorithm, quantized_method=method, quantized_dtype=dtype)
        _check(rknn.load_onnx(onnx, inputs=[input], input_size_list=[shape]), "load_onnx")
        os.chdir(workdir)
        _check(rknn.hybrid_quantization_step1(dataset=dataset), "hybrid_quantization_step1")
        stem = Path(onnx).stem
        return {k: str(Path(workdir) / f"{stem}.{k}") for k in ("model", "data", "quantization.cfg")}

    def layers(self, model: str) -> dict[str, Any]:
        """[(op type, output name)] of the calibrated model (an ONNX-format graph of RKNN's own ops): the
        output names are what custom_quantize_layers accepts."""
        import onnx

        graph = onnx.load(model, load_external_data=False).graph
        return {"layers": [[n.op_type, n.output[0]] for n in graph.node if n.output]}

    def build_int8(self, platform: str, model: str, data: str, cfg: str, out: str, algorithm: str = "normal",
                   method: str = "channel", dtype: str = "w8a8") -> dict[str, Any]:
        """Build from the calibrated model with the layers the cfg names kept in float16 (step 2). The
        config must repeat step 1's (the toolkit refuses a step 2 configured otherwise)."""
        rknn = self._fresh(platform, quantized_algorithm=algorithm, quantized_method=method, quantized_dtype=dtype)
        _check(rknn.hybrid_quantization_step2(model, data, cfg), "hybrid_quantization_step2")
        return self._finish(out)

    def _finish(self, out: str) -> dict[str, Any]:
        if out:
            _check(self.rknn.export_rknn(out), "export_rknn")
        _check(self.rknn.init_runtime(), "init_runtime (simulator)")
        return {}

    def infer(self, inputs: str, out: str) -> dict[str, Any]:
        """Rows of inputs (.npy) one at a time (the graph's batch is 1) -> out (.npy, float32 [N, D])."""
        if self.rknn is None:
            raise RuntimeError("no model was built in this session")
        x = np.load(inputs, allow_pickle=False)
        rows = [np.asarray(self.rknn.inference(inputs=[x[i : i + 1]], data_format="nchw")[0]) for i in range(len(x))]
        np.save(out, np.concatenate(rows).reshape(len(x), -1).astype(np.float32), allow_pickle=False)
        return {}

    def version(self) -> dict[str, Any]:
        from importlib.metadata import version

        return {"rknn-toolkit2": version("rknn-toolkit2"), "numpy": np.__version__}


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"rknn-toolkit2 {what} failed (status {status}; its log is above)")


def serve(requests: TextIO, replies: TextIO) -> None:
    session = Session()
    for line in requests:
        request = json.loads(line)
        op = request.pop("op")
        try:
            if op not in OPS:
                raise ValueError(f"unknown op {op!r}")
            reply = {"ok": True, **getattr(session, op)(**request)}
        except Exception as e:  # everything the toolkit raises goes back as text
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main() -> None:
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the toolkit prints to stdout (also from C): keep the reply channel clean
    sys.stdout = sys.stderr
    serve(sys.stdin, replies)


if __name__ == "__main__":
    main()
