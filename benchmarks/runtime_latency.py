"""Device-runtime overheads, measured side by side on this CPU (ratios and medians):

- end-to-end `classify` (JPEG decode + preprocess + infer + softmax/top-k) against model-only
  inference at batch 1 on a 224-px JPEG, interleaved, for each bundle's best backend (auto);
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


def jpeg(size: int = 224) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (14, 14, 3), dtype=np.uint8)).resize((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def e2e_vs_model(bundle: Path, precision: str | None, reps: int) -> dict[str, object]:
    from edgeclip.runtime import ZeroShotClassifier
    from edgeclip.runtime.preprocess import preprocess

    clf = ZeroShotClassifier.load(bundle, precision=precision, threads=THREADS)
    data = jpeg()
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
            "ratio": round(m_e2e / m_model, 3), "reps": reps}


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
    report: dict[str, object] = {"threads": THREADS, "end_to_end": [], "notes": "medians; fresh interpreters"}
    for name, bundle in bundles.items():
        for precision in ("int8", None):
            row = e2e_vs_model(bundle, precision, args.reps)
            row["model"] = name
            report["end_to_end"].append(row)  # type: ignore[attr-defined]
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
