"""LiteRT (XNNPACK) next to ONNX Runtime and OpenVINO on one random-init ViT-B-32 image tower, batch 1,
2 threads, interleaved rounds: fp32 for each, and int8 dynamic-range for LiteRT and ONNX Runtime (full
static int8 needs calibration images and is measured by `edgeclip bench` on a bundle).
python benchmarks/litert_vs_onnxruntime.py [--rounds 15] -> benchmarks/results/litert_vs_onnxruntime.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgeclip._io import write_json
from edgeclip.bundle import Artifact, TensorSpec
from edgeclip.export.encoders import BATCH, EncoderSpec, export_module
from edgeclip.export.int8.onnxruntime import quantize_dynamic_int8
from edgeclip.export.litert import convert
from edgeclip.export.litert_int8 import quantize_recipe
from edgeclip.export.reference import export_onnx
from edgeclip.model.clip import create_model
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.backends.litert import LiteRTBackend
from edgeclip.runtime.backends.onnxruntime import OnnxRuntimeBackend
from edgeclip.runtime.backends.openvino import OpenVinoBackend
from edgeclip.runtime.similarity import cosine_rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = create_model("ViT-B-32").eval()
    size, dim = 224, model.visual.proj.shape[1]
    spec = EncoderSpec("image", (TensorSpec("pixel_values", "float32", (BATCH, 3, size, size)),),
                       (TensorSpec("image_embeds", "float32", (BATCH, dim)),))
    x = torch.randn(1, 3, size, size)
    module = export_module("image", model)
    work = Path(tempfile.mkdtemp())
    t = time.perf_counter()
    convert(module, x, work / "m.tflite")
    litert_s = time.perf_counter() - t
    t = time.perf_counter()
    export_onnx(module, torch.cat([x, x]), spec, work / "m.onnx")
    onnx_s = time.perf_counter() - t
    quantize_recipe(work / "m.tflite", "int8-dynamic", work / "q.tflite")
    quantize_dynamic_int8(work / "m.onnx", work / "q.onnx", [])
    probe = Artifact("image", "x", "fp32", "", {"m": ""}, list(spec.inputs), list(spec.outputs))
    two = BackendOptions(threads=2)
    runs = {"litert fp32 (XNNPACK)": LiteRTBackend(work / "m.tflite", probe, two),
            "onnxruntime fp32": OnnxRuntimeBackend(work / "m.onnx", probe, two),
            "openvino fp32 (f32 hint)": OpenVinoBackend(work / "m.onnx", probe, BackendOptions(threads=2,
                                                                                              precision_hint="f32")),
            "litert int8-dynamic (XNNPACK)": LiteRTBackend(work / "q.tflite", probe, two),
            "onnxruntime int8-dynamic": OnnxRuntimeBackend(work / "q.onnx", probe, two)}
    with torch.no_grad():
        ref = module(x).numpy()
    times: dict[str, list[float]] = {k: [] for k in runs}
    cos = {}
    for _ in range(args.rounds):
        for name, b in runs.items():
            t = time.perf_counter()
            out = b.infer({"pixel_values": x.numpy()})["image_embeds"]
            times[name].append(1000 * (time.perf_counter() - t))
            cos[name] = float(cosine_rows(ref, out).min())
    base = float(np.median(times["onnxruntime fp32"]))
    rows = {k: {"median_ms": round(float(np.median(v)), 2), "vs_onnxruntime_fp32": round(base / float(np.median(v)), 2),
                "cosine_vs_torch": round(cos[k], 6)} for k, v in times.items()}
    result = {"model": "ViT-B-32 image tower, random init", "batch": 1, "threads": 2, "rounds": args.rounds,
              "interleaved": True, "convert_s": {"litert-torch": round(litert_s, 1), "torch.onnx": round(onnx_s, 1)},
              "rows": rows, "machine": platform.processor() or platform.machine(), "load_avg_at_end": os.getloadavg(),
              "note": "absolute ms hold for this run only (a shared 2-core host); compare rows within it"}
    write_json(Path(__file__).parent / "results" / "litert_vs_onnxruntime.json", result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
