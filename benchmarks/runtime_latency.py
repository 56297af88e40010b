"""Device-runtime overheads, measured side by side on this CPU (ratios and medians):

- end-to-end `classify` (JPEG decode + preprocess + infer + softmax/top-k) against model-only
  inference at batch 1, interleaved, for each bundle's best backend (auto), int8 and fp32, on three
  JPEGs: 224x224 (the model's own size), a 1280x720 camera frame and a 4032x3024 phone photo
  (photo-like synthetic content: smooth regions, edges and sensor noise, quality 90);
- `import edgeclip.runtime` in a fresh interpreter;
- bundle load + first prediction in a fresh interpreter (int8 ViT-B-32), with its peak RSS.

    .venv/bin/python benchmarks/runtime_latency.py [--work benchmarks/work]

Uses the bundles that benchmarks/bench_docs.py builds; writes benchmarks/results/runtime_latency.json.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2


INPUTS = {"224x224": (224, 224), "camera-1280x720": (1280, 720), "phone-4032x3024": (4032, 3024)}


def jpeg(width: int = 224, height: int = 224) -> bytes:
    """A photo-like JPEG: smooth colour regions (a bicubic upscale of a coarse grid), a few hard
    edges, and mild per-pixel noise, so the file size and decode cost resemble a real photo's
    (pure noise would be several times larger; a flat image several times smaller)."""
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    arr = np.asarray(base).astype(np.int16)
    for _ in range(6):  # rectangles: hard edges for the DCT to work on
        x0, y0 = int(rng.integers(0, width - 1)), int(rng.integers(0, height - 1))
        arr[y0 : y0 + height // 5, x0 : x0 + width // 5] = rng.integers(0, 256, 3)
    arr += rng.normal(0, 4, arr.shape).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def e2e_vs_model(bundle: Path, precision: str, data: bytes, reps: int) -> dict[str, object]:
    from edgeclip.runtime import ZeroShotClassifier
    from edgeclip.runtime.preprocess import preprocess

    clf = ZeroShotClassifier.load(bundle, precision=precision, threads=THREADS)
    pixels = preprocess(data, clf.preprocess_cfg)[None]
    e2e, model = [], []
    for _ in range(5):
        clf.classify([data])
    for _ in range(reps):  # interleaved: drift hits both alike
        t0 = time.perf_counter()
        clf.classify([data], top_k=5)
        e2e.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        clf.image(pixels)
        model.append(time.perf_counter() - t0)
    m_e2e, m_model = statistics.median(e2e) * 1000, statistics.median(model) * 1000
    return {"bundle": bundle.name, "artifact": clf.image.artifact.key, "backend": clf.backend_name,
            "end_to_end_ms": round(m_e2e, 3), "model_only_ms": round(m_model, 3),
            "ratio": round(m_e2e / m_model, 3), "reps": reps, "jpeg_bytes": len(data)}


def fresh(code: str, runs: int) -> list[dict[str, float]]:
    out = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


IMPORT_CODE = """
import time, json
t = time.perf_counter()
import edgeclip.runtime
print(json.dumps({"seconds": time.perf_counter() - t}))
"""

LOAD_CODE = """
import time, json, resource
t = time.perf_counter()
from edgeclip.runtime import ZeroShotClassifier
clf = ZeroShotClassifier.load({bundle!r}, precision={precision!r}, threads=2)
r = clf.classify([open({img!r}, "rb").read()])
assert r[0].ok
print(json.dumps({{"seconds": time.perf_counter() - t, "backend": clf.backend_name,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "work"))
    ap.add_argument("--reps", type=int, default=60)
    args = ap.parse_args()
    work = Path(args.work)
    bundles = {"edge-tiny": work / "quickstart" / "shapes.edgeclip",
               "ViT-B-32": work / "vit-b-32" / "vit-b-32.edgeclip"}
    missing = [str(p) for p in bundles.values() if not (p / "manifest.json").exists()]
    if missing:
        sys.exit(f"missing bundles {missing}: run benchmarks/bench_docs.py first")
    img = work / "probe.jpg"
    img.write_bytes(jpeg())
    report: dict[str, object] = {
        "threads": THREADS, "end_to_end": [],
        "conditions": "bundles from benchmarks/bench_docs.py: edge-tiny trained by the quickstart on builtin:shapes, "
                      "ViT-B-32 random-init (seed 0); batch 1; OpenVINO rows at the CPU plugin's default hint "
                      "(bf16 on CPUs with AVX-512 BF16/AMX); synthetic photo-like JPEGs (quality 90)",
        "notes": "medians of interleaved end-to-end / model-only calls; load figures from fresh interpreters"}
    images = {name: jpeg(*size) for name, size in INPUTS.items()}
    for name, bundle in bundles.items():
        for precision in ("int8", "fp32"):
            for input_name, data in images.items():
                row = e2e_vs_model(bundle, precision, data, args.reps)
                row.update(model=name, input=input_name)
                report["end_to_end"].append(row)  # type: ignore[attr-defined]
                print(json.dumps(row), flush=True)
    imports = fresh(IMPORT_CODE, 7)
    report["import_edgeclip_runtime_s"] = round(statistics.median(r["seconds"] for r in imports), 4)
    loads = fresh(LOAD_CODE.format(bundle=str(bundles["ViT-B-32"]), precision="int8", img=str(img)), 5)
    report["load_and_first_prediction_int8_vit_b32"] = {
        "seconds_median": round(statistics.median(r["seconds"] for r in loads), 3),
        "backend": loads[0]["backend"],
        "peak_rss_mb_median": round(statistics.median(r["peak_rss_mb"] for r in loads), 1),
    }
    out = ROOT / "benchmarks" / "results" / "runtime_latency.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
