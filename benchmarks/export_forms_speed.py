"""What each of the OpenVINO export forms buys, ViT-B/32 int8, in one interleaved run.

    .venv/bin/python benchmarks/export_forms_speed.py [--checkpoint C] [--quick]

Every variant is converted from edgeclip's torch module and quantized with the same NNCF call
(ModelType.TRANSFORMER, the same calibration images or prompts), then timed interleaved:
- image, batch 1, cumulative: q/k/v as three projections only; + the last block for the class
  token alone (FirstTokenBlock); + the patch stem as one matmul (PatchEmbedding). The full form
  compiled with a dynamic batch, as the runtime did before it kept a static batch-1 copy;
- text, batch 32 prompts: without and with the last block for the end-of-text token alone.
Each row also gets its held-out cosine to the torch module (fp32), so a faster form that changed
the embeddings would show. Writes benchmarks/results/export_forms_speed.json (not with --quick).
Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edgeclip.export.encoders as encoders  # noqa: E402
import edgeclip.export.openvino as ov_export  # noqa: E402
from edgeclip._io import write_json  # noqa: E402
from edgeclip.calibration.cache import load_calibration_set  # noqa: E402
from edgeclip.data.shapes import SHAPES, ZERO_SHOT_TEMPLATES  # noqa: E402
from edgeclip.model.checkpoint import load_checkpoint  # noqa: E402
from edgeclip.runtime.tokenizer import TextTokenizer  # noqa: E402

IMAGE_FORMS = ("separate-qkv", "+class-token-block", "+patch-matmul")


@contextlib.contextmanager
def forms(pooled: bool, patch: bool) -> Iterator[None]:
    """openvino_module with some export forms switched off (each replaced by the identity): the
    pooled last block (class token / end-of-text token) and the patch stem as a matmul."""
    saved = encoders.pooled_last_block, ov_export.PatchEmbedding
    if not pooled:
        encoders.pooled_last_block = lambda transformer: transformer  # type: ignore[assignment]
    if not patch:
        ov_export.PatchEmbedding = lambda conv: conv  # type: ignore[assignment,misc]
    try:
        yield
    finally:
        encoders.pooled_last_block, ov_export.PatchEmbedding = saved  # type: ignore[misc]


def quantized(model: Any, encoder: str, example: torch.Tensor, samples: list[np.ndarray]) -> Any:
    import nncf
    import openvino as ov

    module = ov_export.openvino_module(encoder, model)
    shape = [-1, *example.shape[1:]]
    with torch.no_grad():
        fp32 = ov.convert_model(module, example_input=example, input=[shape])
    nncf.set_log_level(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return nncf.quantize(fp32, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(samples))


def compiled(model: Any, batch: int | None, threads: int) -> Any:
    import openvino as ov

    m = model.clone()
    if batch is not None:
        m.reshape({m.inputs[0]: [batch, *m.inputs[0].get_partial_shape()[1:]]})
    return ov.Core().compile_model(m, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads})


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return round(float((a * b).sum(1).min()), 6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "benchmarks" / "work" / "vit-b-32" / "checkpoint")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="few samples and rounds (checks the script runs)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export_forms_speed.json")
    args = ap.parse_args()
    n_calib, rounds = (8, 2) if args.quick else (100, args.rounds)
    torch.set_num_threads(args.threads)
    model, info = load_checkpoint(args.checkpoint)
    calib = load_calibration_set("builtin:shapes", info.preprocess, 125)
    images = [x[None] for x in calib.images[:n_calib]]
    held = calib.heldout[:32]
    tokenize = TextTokenizer(args.checkpoint / "tokenizer.json", info.tokenizer)
    prompts = [t.format(c) for c in SHAPES for t in ZERO_SHOT_TEMPLATES["shape"]]
    ids = tokenize(prompts)
    text_samples = [ids[i : i + 1] for i in range(min(n_calib, len(ids)))]
    batch32 = np.resize(ids, (32, ids.shape[1]))

    with torch.no_grad():
        ref_image = encoders.encoder_module("image", model)(torch.from_numpy(held)).numpy()
        ref_text = encoders.encoder_module("text", model)(torch.from_numpy(batch32)).numpy()
    example_image = torch.from_numpy(np.repeat(held[:1], 2, 0))
    example_text = torch.from_numpy(batch32[:2])
    calls: dict[str, Callable[[], object]] = {}
    cosines: dict[str, float] = {}
    for i, name in enumerate(IMAGE_FORMS):
        with forms(pooled=i >= 1, patch=i >= 2):
            q = quantized(model, "image", example_image, images)
        static = compiled(q, 1, args.threads)
        request = static.create_infer_request()
        calls[f"image/{name}/static-b1"] = lambda r=request: r.infer({0: held[:1]})
        cosines[f"image/{name}/static-b1"] = cosine_min(
            np.concatenate([static(held[j : j + 1])[0] for j in range(len(held))]), ref_image)
        if name == IMAGE_FORMS[-1]:
            dynamic = compiled(q, None, args.threads).create_infer_request()
            calls[f"image/{name}/dynamic-batch"] = lambda r=dynamic: r.infer({0: held[:1]})
            cosines[f"image/{name}/dynamic-batch"] = cosines[f"image/{name}/static-b1"]
    for name, pooled in (("full-last-block", False), ("+eot-block", True)):
        with forms(pooled=pooled, patch=True):
            q = quantized(model, "text", example_text, text_samples)
        text = compiled(q, None, args.threads)
        request = text.create_infer_request()
        calls[f"text/{name}/b32"] = lambda r=request: r.infer({0: batch32})
        cosines[f"text/{name}/b32"] = cosine_min(text(batch32)[0], ref_text)

    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, fn in calls.items():
            fn()
            reps = []
            for _ in range(3 if k.startswith("text") else 15):
                t = time.perf_counter()
                fn()
                reps.append(time.perf_counter() - t)
            times[k].append(statistics.median(reps) * 1e3)
    med = {k: round(statistics.median(v), 3) for k, v in times.items()}
    first = med[f"image/{IMAGE_FORMS[0]}/static-b1"]
    result = {
        "median_ms": med, "heldout_cosine_min_vs_torch_fp32": cosines,
        "image_speedup_vs_separate_qkv": {k: round(first / v, 3) for k, v in med.items() if k.startswith("image")},
        "static_b1_over_dynamic": round(med[f"image/{IMAGE_FORMS[-1]}/dynamic-batch"]
                                        / med[f"image/{IMAGE_FORMS[-1]}/static-b1"], 3),
        "text_speedup_eot_block": round(med["text/full-last-block/b32"] / med["text/+eot-block/b32"], 3),
        "conditions": {"model": "ViT-B-32, random init (bench_docs.py's checkpoint)", "precision": "int8 (NNCF)",
                       "threads": args.threads, "rounds": rounds, "calibration": n_calib,
                       "inference_precision_hint": "device default", "image_input": "224 px, batch 1",
                       "text_input": "32 prompts x 77 tokens", "load_average_1min": round(os.getloadavg()[0], 2)},
        "quick": args.quick,
    }
    print(json.dumps(result, indent=2))
    if not args.quick:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
