"""What reparameterization buys: MCi image towers in training form vs inference form, on this CPU.

Random-init MobileCLIP2-S0 (MCi0) and MobileCLIP2-S2 (MCi2) image towers at 256 px, and a ViT-B/32
image tower at 224 px for reference; batch 1, 2 threads, fp32, model-only (no preprocessing).
Each row runs in torch eager and in onnxruntime (an ONNX file exported from that form); all rows
are timed interleaved (one call of each per round, in a shuffled order), and the report gives
medians and ratios within this one run.

    .venv/bin/python benchmarks/reparameterize_speed.py [--rounds 30]

Writes benchmarks/results/reparameterize_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeclip.bundle import PreprocessConfig, TokenizerConfig  # noqa: E402
from edgeclip.export.encoders import EncoderSpec, encoder_spec  # noqa: E402
from edgeclip.export.reference import export_onnx  # noqa: E402
from edgeclip.model.checkpoint import CheckpointInfo  # noqa: E402
from edgeclip.model.clip import CLIP, ImageEncoder, create_model  # noqa: E402
from edgeclip.model.reparameterize import reparameterize  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "reparameterize_speed.json"
THREADS = 2
MODELS = ["MobileCLIP2-S0", "MobileCLIP2-S2"]


def _randomise_bn(model: CLIP) -> None:
    """Trained-like BatchNorm statistics, so the merged kernels are not trivially the identity."""
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                b.normal_(0, 0.1)


def _spec(model: CLIP) -> EncoderSpec:
    info = CheckpointInfo(model.cfg, PreprocessConfig(image_size=model.cfg.vision_cfg.image_size),
                          TokenizerConfig(), Path("."))
    return encoder_spec("image", info)


def _ort(module: torch.nn.Module, size: int, spec: EncoderSpec, path: Path) -> Callable[[np.ndarray], Any]:
    export_onnx(module, torch.randn(2, 3, size, size), spec, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = THREADS, 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {spec.input_name: x})


def build_rows(work: Path) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    rows: dict[str, Callable[[], Any]] = {}
    sizes: dict[str, Any] = {}
    for name in [*MODELS, "ViT-B-32"]:
        torch.manual_seed(0)
        model = create_model(name).eval()
        _randomise_bn(model)
        size = model.cfg.vision_cfg.image_size
        x = torch.randn(1, 3, size, size)
        forms = {"training": model}
        if name != "ViT-B-32":
            forms["reparameterized"] = reparameterize(model)
        for form, m in forms.items():
            enc = ImageEncoder(m).eval()
            onnx_path = work / f"{name}-{form}.onnx"
            run_ort = _ort(enc, size, _spec(m), onnx_path)
            key = f"{name} {form}"
            rows[f"{key} | torch"] = lambda enc=enc, x=x: enc(x)
            rows[f"{key} | onnxruntime"] = lambda f=run_ort, a=x.numpy(): f(a)
            sizes[key] = {"params": sum(p.numel() for p in m.visual.parameters()),
                          "onnx_mb": round(onnx_path.stat().st_size / 1e6, 2)}
    return rows, sizes


def time_interleaved(rows: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in rows}
    order = list(rows)
    with torch.inference_mode():
        for f in rows.values():  # warm-up
            f()
            f()
        for _ in range(rounds):
            random.shuffle(order)
            for k in order:
                t0 = time.perf_counter()
                rows[k]()
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: round(statistics.median(v), 2) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    random.seed(0)
    with tempfile.TemporaryDirectory(prefix="reparam-speed-") as tmp:
        rows, sizes = build_rows(Path(tmp))
        ms = time_interleaved(rows, args.rounds)
    vit = {b: ms[f"ViT-B-32 training | {b}"] for b in ("torch", "onnxruntime")}
    ratios = {}
    for name in MODELS:
        for b in ("torch", "onnxruntime"):
            train, rep = ms[f"{name} training | {b}"], ms[f"{name} reparameterized | {b}"]
            ratios[f"{name} | {b}"] = {"speedup_reparameterized_vs_training": round(train / rep, 2),
                                       "reparameterized_vs_vit_b_32": round(rep / vit[b], 2)}
    report = {
        "what": "image tower model-only latency, batch 1, fp32, random init, medians of interleaved rounds",
        "conditions": {"threads": THREADS, "rounds": args.rounds, "batch": 1, "torch": torch.__version__,
                       "machine": platform.processor() or platform.machine()},
        "median_ms": ms, "ratios": ratios, "sizes": sizes,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"median_ms": ms, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
