"""INT8 vs fp32 image-tower latency, ONNX Runtime and OpenVINO, on this CPU.

For each model (random-init ViT-B-32 at 224 px and a trained edge checkpoint) the script exports
fp32 and guarded INT8 image encoders (calibrated on builtin:shapes with the model's own
preprocessing), then times fp32 and INT8 of the same backend interleaved in one loop (so machine
noise hits both alike), at batch 1 and 8 with 2 threads, in a fresh process per backend and batch.
OpenVINO runs with INFERENCE_PRECISION_HINT=f32 for both, so fp32 means fp32 (the CPU default
would be bf16).

    .venv/bin/python benchmarks/int8_speed.py [--models vit-b-32,edge] [--edge-checkpoint CKPT] [--reps 30]

Prints JSON (medians in ms, fp32/int8 ratios, the guard's accuracy numbers) and writes
benchmarks/results/int8_speed.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.bundle import Bundle, PreprocessConfig
from edgeclip.runtime.backends import backend_class
from edgeclip.runtime.backends.base import BackendOptions

RESULTS = Path(__file__).parent / "results" / "int8_speed.json"
BACKENDS = {"onnxruntime": ("onnx", None), "openvino": ("openvino", "f32")}
THREADS = 2


def vit_b32_checkpoint(out: Path) -> Path:
    """Random-init ViT-B-32 (vision tower as in OpenAI's) with a small trained vocabulary, so the
    checkpoint needs no 49k-token tokenizer; only the image tower is benchmarked."""
    from edgeclip.data.shapes import ShapesDataset
    from edgeclip.model.checkpoint import save_checkpoint
    from edgeclip.model.clip import create_model
    from edgeclip.model.config import get_config
    from edgeclip.model.tokenizer import train_tokenizer

    cfg = get_config("ViT-B-32")
    cfg = dataclasses.replace(cfg, text_cfg=dataclasses.replace(cfg.text_cfg, vocab_size=1024))
    captions = [ShapesDataset("train", 400, 32)[i].caption for i in range(400)]
    tok, tok_cfg = train_tokenizer(captions, 1024, cfg.text_cfg.context_length)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer-src.json"))
    import torch

    torch.manual_seed(0)
    save_checkpoint(out / "ckpt", create_model(cfg), out / "tokenizer-src.json",
                    PreprocessConfig(image_size=cfg.vision_cfg.image_size), tok_cfg)
    return out / "ckpt"


def export(ckpt: Path, out: Path, labels: dict[str, Any] | None, calib_size: int) -> tuple[Bundle, float]:
    from edgeclip.export.driver import export_bundle  # here: the timing subprocesses never import torch

    t = time.perf_counter()
    export_bundle(ckpt, out, targets=["onnx", "openvino"], precision=["fp32", "int8"], encoders=["image"],
                  labels=labels, options={"calib": "builtin:shapes", "calib_size": calib_size})
    return Bundle.open(out), time.perf_counter() - t


def time_interleaved(bundle: Bundle, backend: str, batch: int, reps: int) -> dict[str, Any]:
    target, hint = BACKENDS[backend]
    cls = backend_class(backend)
    runs = {}
    for precision in ("fp32", "int8"):
        a = bundle.manifest.find("image", target, precision)[0]
        runs[precision] = cls(bundle.artifact_path(a), a, BackendOptions(threads=THREADS, precision_hint=hint))
    # real images, preprocessed as the runtime does: with N(0, 1) noise as input the INT8 graph ran
    # ~40 % slower in onnxruntime (input-dependent float ops), which no camera produces
    from edgeclip.data.shapes import ShapesDataset
    from edgeclip.runtime.preprocess import preprocess

    held = ShapesDataset("heldout", batch, image_size=bundle.manifest.preprocess.image_size + 17, seed=5)
    x = {"pixel_values": np.stack([preprocess(held[i].image, bundle.manifest.preprocess) for i in range(batch)])}
    for _ in range(3):  # warm-up: first calls allocate and pick kernels
        for r in runs.values():
            r.infer(x)
    times: dict[str, list[float]] = {p: [] for p in runs}
    for _ in range(reps):
        for p, r in runs.items():
            t = time.perf_counter()
            r.infer(x)
            times[p].append((time.perf_counter() - t) * 1e3)
    med = {p: float(np.median(v)) for p, v in times.items()}
    return {"batch": batch, "fp32_ms": round(med["fp32"], 2), "int8_ms": round(med["int8"], 2),
            "speedup": round(med["fp32"] / med["int8"], 2), "reps": reps,
            "fp32_p90_ms": round(float(np.percentile(times["fp32"], 90)), 2),
            "int8_p90_ms": round(float(np.percentile(times["int8"], 90)), 2)}


def time_in_fresh_process(bundle: Path, backend: str, batch: int, reps: int) -> dict[str, Any]:
    """time_interleaved in a new interpreter, as a deployed runtime runs: without torch, the
    exporter's OpenVINO plugin and the guard's sessions in the process."""
    out = subprocess.run([sys.executable, __file__, "--time", str(bundle), backend, str(batch), str(reps)],
                         capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def accuracy(bundle: Bundle) -> dict[str, Any]:
    out = {}
    for a in bundle.manifest.artifacts:
        if a.calibration:
            m = a.calibration.measured.to_dict()
            out[a.key] = {k: m[k] for k in ("heldout_size", "cosine_min", "cosine_p1", "cosine_mean", "top1_fp32",
                                            "top1_int8", "top1_drop", "top1_agreement") if k in m}
            out[a.key]["excluded_layers"] = a.calibration.excluded_layers
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edge-checkpoint", default=str(Path(__file__).parent / "work" / "quickstart" / "checkpoint"),
                    help="a trained edge-tiny checkpoint (default: the one benchmarks/bench_docs.py trains)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--calib-size", type=int, default=300)
    ap.add_argument("--models", default="vit-b-32,edge")
    ap.add_argument("--time", nargs=4, metavar=("BUNDLE", "BACKEND", "BATCH", "REPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.time:
        bundle, backend, batch, reps = args.time
        print(json.dumps(time_interleaved(Bundle.open(bundle), backend, int(batch), int(reps))))
        return
    from edgeclip.data.shapes import SHAPES, ZERO_SHOT_TEMPLATES

    report: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()}, {THREADS} threads",
                              "openvino_hint": "f32 for fp32 and int8", "models": {}}
    with tempfile.TemporaryDirectory(prefix="int8-speed-") as tmp:
        for name in args.models.split(","):
            if name == "vit-b-32":
                ckpt, labels = vit_b32_checkpoint(Path(tmp) / "vitb32"), None
            else:
                ckpt, labels = Path(args.edge_checkpoint), {"shape": (list(SHAPES), list(ZERO_SHOT_TEMPLATES["shape"]))}
            bundle, seconds = export(ckpt, Path(tmp) / f"{name}.edgeclip", labels, args.calib_size)
            latency = {f"{b}/batch{batch}": time_in_fresh_process(bundle.root, b, batch, args.reps if batch == 1
                                                                  else max(5, args.reps // 2))
                       for b in BACKENDS for batch in (1, 8)}
            report["models"][name] = {
                "machine": report["machine"],
                "export_seconds": round(seconds, 1),
                "latency": latency,
                "accuracy": accuracy(bundle),
            }
    if RESULTS.exists():  # models not run this time keep their last figures
        report["models"] = {**json.loads(RESULTS.read_text()).get("models", {}), **report["models"]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
