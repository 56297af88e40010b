"""How close issue 18's end-to-end goals can get on this host: the JPEG decode floor against the model.

    .venv/bin/python benchmarks/e2e_floor.py [--bundle B] [--checkpoint C] [--quick]

No pipeline that starts from a JPEG file can cost less than decoding it. libjpeg-turbo (inside
Pillow) Huffman-decodes every coefficient of a baseline JPEG whatever the output scale, so a decode
at 1/8 scale (the smallest DCT scale: one coefficient per block inverse-transformed, nothing
resampled, no crop) is a lower bound on the decode of any preprocessing built on it. From that floor:

- batch 1:   e2e / model-only  >= (model + floor) / model  (one image: nothing to overlap its decode with)
- torch:     best e2e x torch  <= torch e2e / (model + floor)
- streams:   stream / model-only throughput <= m / (m + floor CPU per image), where m is the CPU time
             per image of the model alone in its best batch-8 mode (all cores busy: m = cores / its
             throughput). Modes measured: one request on all threads (the runtime's LATENCY hint) and,
             for OpenVINO, one single-thread stream per core (THROUGHPUT hint, requests in flight on
             every stream). A stream must decode too, so it cannot beat that ratio whatever it overlaps.

Rows run in interleaved rounds (every row once per round, same order), next to what edgeclip does
now (`decode_resize` in one pass as streams run it, and with the resample split over two threads as
`classify` runs one image; `classify`), so the distance between edgeclip and the floor shows too.
Frames: bench's camera-size JPEGs (edgeclip/bench/inputs.py: shapes scenes with sensor grain,
quality 90) and stream_throughput.py's scikit-learn photo crops (1280x720, quality 90).
Writes benchmarks/results/e2e_floor.json (not with --quick). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from stream_throughput import write_frames  # noqa: E402

from edgeclip._io import write_json  # noqa: E402
from edgeclip.bench.inputs import camera_jpeg  # noqa: E402
from edgeclip.runtime import ZeroShotClassifier  # noqa: E402
from edgeclip.runtime.preprocess import decode_resize, model_input  # noqa: E402

BATCH = 8
STREAM_BATCHES = 4  # batches of 8 per timed call of the THROUGHPUT-hint row


def floor_decode(data: bytes) -> None:
    """The least a libjpeg-turbo decode of `data` can cost: 1/8 scale, nothing after it."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
        im.load()


def timed(fn: Callable[[], object], reps: int) -> tuple[float, float]:
    """(median wall ms, median process-CPU ms) of `reps` calls, after one warm-up call."""
    fn()
    wall, cpu = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3


def openvino_streams(clf: ZeroShotClassifier, x8: np.ndarray) -> Callable[[], object]:
    """The image artifact compiled with OpenVINO's THROUGHPUT hint (one stream per core, one thread
    each): STREAM_BATCHES batches of 8 kept in flight on every stream at once."""
    import openvino as ov

    artifact = clf.image.artifact
    path = clf.bundle.artifact_path(artifact)
    cores = os.cpu_count() or 1
    compiled = ov.Core().compile_model(str(path), "CPU", {
        "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": cores, "INFERENCE_NUM_THREADS": cores})
    queue = ov.AsyncInferQueue(compiled, cores)

    def run() -> None:
        for _ in range(STREAM_BATCHES):
            queue.start_async({0: x8})
        queue.wait_all()

    return run


def torch_e2e(checkpoint: Path, clf: ZeroShotClassifier) -> Callable[[bytes], object]:
    """torch eager fp32 from the same file: the training transform, the model, the same scoring."""
    import torch

    from edgeclip.export.encoders import encoder_module
    from edgeclip.model.checkpoint import load_checkpoint
    from edgeclip.runtime.preprocess import preprocess

    model, _ = load_checkpoint(checkpoint)
    module = encoder_module("image", model)
    torch.set_num_threads(os.cpu_count() or 1)
    labels = clf.label_embeddings

    def run(data: bytes) -> object:
        x = torch.from_numpy(preprocess(data, clf.preprocess_cfg)[None])
        with torch.inference_mode():
            e = module(x).numpy()
        return np.argsort(-(e @ labels.T), axis=1)[:, :5]

    return run


def measure(args: argparse.Namespace) -> dict[str, Any]:
    load = dict(backend=args.backend, precision=args.precision, max_batch=BATCH)
    clf = ZeroShotClassifier.load(args.bundle, threads=args.threads, **load)
    clf1 = ZeroShotClassifier.load(args.bundle, threads=1, **load)
    cfg, spec = clf.preprocess_cfg, clf.image.artifact.inputs[0]
    frames = {f"camera_{w}x{h}": camera_jpeg(w, h) for w, h in ((1280, 720), (4032, 3024))}
    photos = Path(args.work) / "e2e-floor-frames"
    photos.mkdir(parents=True, exist_ok=True)
    frames["photo_1280x720"] = Path(write_frames(photos, 1)[0]).read_bytes()
    x1 = model_input(decode_resize(frames["camera_1280x720"], cfg, clf.decode)[None], cfg, spec)
    x8 = np.repeat(x1, BATCH, axis=0)
    rows: dict[str, Callable[[], object]] = {
        "model_b1": lambda: clf.image(x1),
        "model_b8": lambda: clf.image(x8),
        "model_b8_1thread": lambda: clf1.image(x8),
    }
    if args.backend == "openvino":
        rows["model_b8_streams"] = openvino_streams(clf, x8)
    baseline = torch_e2e(args.checkpoint, clf) if args.checkpoint else None
    for name, data in frames.items():
        rows[f"{name}/floor_decode"] = lambda d=data: floor_decode(d)
        rows[f"{name}/edgeclip_decode_resize"] = lambda d=data: decode_resize(d, cfg, clf.decode)
        # what `classify` does for one image: the resample's halves on two threads
        rows[f"{name}/edgeclip_decode_resize_split"] = lambda d=data: decode_resize(d, cfg, clf.decode, split=True)
        rows[f"{name}/edgeclip_e2e"] = lambda d=data: clf.classify([d], top_k=5)
        if baseline is not None and name != "camera_4032x3024":
            rows[f"{name}/torch_e2e"] = lambda d=data: baseline(d)
    wall: dict[str, list[float]] = {k: [] for k in rows}
    cpu: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(args.rounds):
        for k, fn in rows.items():
            w, c = timed(fn, args.reps if not k.endswith("torch_e2e") else max(3, args.reps // 4))
            wall[k].append(w)
            cpu[k].append(c)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    cores = os.cpu_count() or 1
    # the best model-only batch-8 throughput, and the CPU time per image it takes with every core busy
    modes = {"latency": BATCH / med["model_b8"] * 1e3}
    if "model_b8_streams" in med:
        modes["streams"] = STREAM_BATCHES * BATCH / med["model_b8_streams"] * 1e3
    best = max(modes, key=lambda k: modes[k])
    model_ips = modes[best]
    model_cpu = cores / model_ips * 1e3
    bounds: dict[str, Any] = {}
    for name in frames:
        floor, e2e = med[f"{name}/floor_decode"], med[f"{name}/edgeclip_e2e"]
        b = {"e2e_over_model_floor": (med["model_b1"] + floor) / med["model_b1"],
             "e2e_over_model_edgeclip": e2e / med["model_b1"],
             "stream_over_model_ceiling": model_cpu / (model_cpu + med_cpu[f"{name}/floor_decode"]),
             "stream_over_model_edgeclip_decode_ceiling":
                 model_cpu / (model_cpu + med_cpu[f"{name}/edgeclip_decode_resize"]),
             "edgeclip_preprocess_above_floor_ms": med[f"{name}/edgeclip_decode_resize"] - floor,
             "edgeclip_split_resample_above_floor_ms": med[f"{name}/edgeclip_decode_resize_split"] - floor}
        if f"{name}/torch_e2e" in med:
            torch_ms = med[f"{name}/torch_e2e"]
            b["x_torch_ceiling"] = torch_ms / (med["model_b1"] + floor)
            b["x_torch_edgeclip"] = torch_ms / e2e
        bounds[name] = {k: round(v, 3) for k, v in b.items()}
    return {"median_ms": {k: round(v, 3) for k, v in med.items()},
            "median_cpu_ms": {k: round(v, 3) for k, v in med_cpu.items()},
            "model_b8_images_per_s": {k: round(v, 2) for k, v in modes.items()}, "model_b8_best_mode": best,
            "model_cpu_ms_per_image_b8_best": round(model_cpu, 3),
            "bounds": bounds, "frame_bytes": {k: len(v) for k, v in frames.items()},
            "artifact": clf.image.artifact.key, "decode": clf.decode}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    work = ROOT / "benchmarks" / "work"
    ap.add_argument("--bundle", type=Path, default=work / "vit-b-32" / "vit-b-32.edgeclip")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="the bundle's checkpoint, for torch eager rows (e.g. benchmarks/work/vit-b-32/checkpoint)")
    ap.add_argument("--backend", default="openvino")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--work", type=Path, default=work)
    ap.add_argument("--quick", action="store_true", help="1 round of 3 calls (checks the script runs)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "e2e_floor.json")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.reps = 1, 3
    result = {**measure(args), "bundle": str(args.bundle), "backend": args.backend, "precision": args.precision,
              "batch_stream": BATCH, "rounds": args.rounds, "reps": args.reps,
              "conditions": {"cores": os.cpu_count(), "threads": args.threads,
                             "weights": "as in the bundle (bench_docs.py's ViT-B/32: random init)",
                             "input": "224 px", "load_average_1min": round(os.getloadavg()[0], 2)},
              "quick": args.quick}
    print(json.dumps(result, indent=2))
    if not args.quick:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
