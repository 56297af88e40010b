"""Streamed `classify` throughput over camera-size JPEG files against the model alone, batch 8.

    .venv/bin/python benchmarks/stream_throughput.py --bundle benchmarks/work/vit-b-32/vit-b-32.edgeclip [--quick]

Rows, measured in interleaved rounds (each round runs every row once, in the same order):
- model: the image encoder alone on pre-decoded batches of 8 (the ceiling);
- stream: `ZeroShotClassifier.classify` over the files with max_batch 8 (decoding the next batch on a
  small thread pool while the model runs), with the bundle's default decode path;
- serial: the same work without overlap (decode a batch, then run it), for reference.
The issue's bar: stream >= 0.9 x model. The default bundle is bench_docs.py's ViT-B/32 (random init;
throughput does not depend on the weights), built by running bench_docs.py --only vit-b-32.
Writes benchmarks/results/stream_throughput.json (not with --quick). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeclip._io import write_json  # noqa: E402
from edgeclip.runtime import ZeroShotClassifier  # noqa: E402
from edgeclip.runtime.preprocess import decode_resize, model_input  # noqa: E402

FRAME = (1280, 720)
BATCH = 8


def write_frames(folder: Path, n: int) -> list[str]:
    """n distinct 1280x720 JPEGs (quality 90): shifted crops of scikit-learn's sample photos."""
    import sklearn.datasets

    sources = [Image.fromarray(sklearn.datasets.load_sample_image(f)).resize((1600, 1000), Image.Resampling.BICUBIC)
               for f in ("china.jpg", "flower.jpg")]
    paths = []
    for i in range(n):
        dx, dy = (i * 37) % 320, (i * 23) % 280
        buf = io.BytesIO()
        sources[i % 2].crop((dx, dy, dx + FRAME[0], dy + FRAME[1])).save(buf, "JPEG", quality=90)
        path = folder / f"frame{i:04d}.jpg"
        path.write_bytes(buf.getvalue())
        paths.append(str(path))
    return paths


def model_only(clf: ZeroShotClassifier, batches: list[np.ndarray]) -> float:
    t = time.perf_counter()
    for x in batches:
        clf.image(x)
    return time.perf_counter() - t


def stream(clf: ZeroShotClassifier, paths: list[str]) -> float:
    t = time.perf_counter()
    results = clf.classify(paths, top_k=1)
    assert all(r.ok for r in results)
    return time.perf_counter() - t


def serial(clf: ZeroShotClassifier, paths: list[str]) -> float:
    cfg, spec = clf.preprocess_cfg, clf.image.artifact.inputs[0]
    t = time.perf_counter()
    for i in range(0, len(paths), BATCH):
        u8 = np.stack([decode_resize(p, cfg, clf.decode) for p in paths[i : i + BATCH]])
        clf.image(model_input(u8, cfg, spec))
    return time.perf_counter() - t


def measure(clf: ZeroShotClassifier, paths: list[str], rounds: int) -> dict[str, Any]:
    cfg, spec = clf.preprocess_cfg, clf.image.artifact.inputs[0]
    u8 = [np.stack([decode_resize(p, cfg, clf.decode) for p in paths[i : i + BATCH]])
          for i in range(0, len(paths), BATCH)]
    batches = [model_input(b, cfg, spec) for b in u8]
    rows: dict[str, list[float]] = {"model": [], "stream": [], "serial": []}
    model_only(clf, batches[:2])  # warm-up
    for _ in range(rounds):
        rows["model"].append(model_only(clf, batches))
        rows["stream"].append(stream(clf, paths))
        rows["serial"].append(serial(clf, paths))
    ips = {k: len(paths) / statistics.median(v) for k, v in rows.items()}
    return {"images_per_s": {k: round(v, 2) for k, v in ips.items()},
            "seconds": {k: [round(s, 4) for s in v] for k, v in rows.items()},
            "stream_over_model": round(ips["stream"] / ips["model"], 3),
            "serial_over_model": round(ips["serial"] / ips["model"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "benchmarks" / "work" / "vit-b-32" / "vit-b-32.edgeclip")
    ap.add_argument("--backend", default="openvino")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="32 images, 1 round (checks the script runs)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "stream_throughput.json")
    args = ap.parse_args()
    n, rounds = (32, 1) if args.quick else (args.images, args.rounds)
    clf = ZeroShotClassifier.load(args.bundle, backend=args.backend, precision=args.precision,
                                  threads=args.threads, max_batch=BATCH)
    with tempfile.TemporaryDirectory(prefix="stream-") as tmp:
        paths = write_frames(Path(tmp), n)
        figures = measure(clf, paths, rounds)
    result = {"bundle": str(args.bundle), "artifact": clf.image.artifact.key, "backend": clf.backend_name,
              "decode": clf.decode, "frame": list(FRAME), "images": n, "batch": BATCH, "rounds": rounds,
              "conditions": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                             "threads": args.threads, "load_average_1min": os.getloadavg()[0]},
              **figures, "quick": args.quick}
    print(json.dumps(result, indent=2))
    if not args.quick:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
