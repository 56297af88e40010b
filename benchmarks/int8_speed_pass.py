"""What the INT8 export's speed pass (edgeclip/export/int8/speed.py) buys: the image tower's int8
latency with and without it, beside fp32, per backend, in one interleaved run.

    .venv/bin/python benchmarks/int8_speed_pass.py [--checkpoint C] [--quick]

Exports the image tower of a checkpoint (default: family_bench.py's random-init MobileCLIP2-S0) twice
with `edgeclip export --target onnx,openvino --precision fp32,int8 --calib builtin:shapes` and the
shapes labels, as family_bench.py does: once with `--no-speed-pass`, once without. Then times, at
batch 1, model-only, in interleaved rounds, every artifact of both bundles through the runtime's
Encoder (each backend's default precision hint: OpenVINO bf16 on this CPU), and reads from the
manifests what each int8 export left in float, its held-out numbers and its export time.
Writes benchmarks/results/int8_speed_pass.json (not with --quick). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeclip._io import write_json  # noqa: E402
from edgeclip.bundle import Bundle  # noqa: E402
from edgeclip.data.shapes import SHAPES, ZERO_SHOT_TEMPLATES  # noqa: E402
from edgeclip.runtime.backends.base import BackendOptions  # noqa: E402
from edgeclip.runtime.classifier import load_encoder  # noqa: E402
from edgeclip.runtime.timings import interleaved_ms  # noqa: E402

BACKENDS = {"onnx": "onnxruntime", "openvino": "openvino"}


def export(ckpt: Path, out: Path, work: Path, speed_pass: bool) -> float:
    classes, templates = work / "shapes.txt", work / "templates.txt"
    classes.write_text("\n".join(SHAPES) + "\n")
    templates.write_text("\n".join(ZERO_SHOT_TEMPLATES["shape"]) + "\n")
    cmd = [sys.executable, "-m", "edgeclip", "export", str(ckpt), "--target", "onnx,openvino",
           "--precision", "fp32,int8", "--encoders", "image", "--calib", "builtin:shapes",
           "--labels", str(classes), "--templates", str(templates), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run([*cmd, *([] if speed_pass else ["--no-speed-pass"])], cwd=ROOT, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.exit(f"export failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def int8_record(bundle: Bundle, target: str) -> dict[str, Any]:
    a = next(a for a in bundle.manifest.find("image") if a.target == target and a.precision == "int8")
    c = a.calibration
    assert c is not None
    return {"excluded_layers": len(c.excluded_layers), "excluded_for_speed": len(c.details["excluded_for_speed"]),
            "speed_trials": c.guard["speed"], "quantizations": c.guard["attempts"],
            "heldout": {k: getattr(c.measured, k) for k in ("cosine_min", "cosine_mean", "top1_drop")}}


def main() -> None:
    work = ROOT / "benchmarks" / "work"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=work / "families" / "full" / "mobileclip2-s0" / "checkpoint")
    ap.add_argument("--quick", action="store_true", help="the test-tiny-mci model, short timing (checks the script)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "int8_speed_pass.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="int8-speed-pass-"))
    try:
        ckpt = args.checkpoint
        if args.quick:
            ckpt = tmp / "ckpt"
            subprocess.run([sys.executable, "-m", "edgeclip", "train", "--model", "test-tiny-mci", "--steps", "2",
                            "--out", str(ckpt)], check=True, cwd=ROOT, capture_output=True)
        wall = {name: export(ckpt, tmp / f"{name}.edgeclip", tmp, name == "pass") for name in ("no_pass", "pass")}
        bundles = {name: Bundle.open(tmp / f"{name}.edgeclip") for name in wall}
        encoders, records = {}, {}
        for target, backend in BACKENDS.items():
            encoders[f"{backend}/fp32"] = load_encoder(bundles["pass"], "image", backend, "fp32", BackendOptions())
            for name, bundle in bundles.items():
                encoders[f"{backend}/int8 {name}"] = load_encoder(bundle, "image", backend, "int8", BackendOptions())
                records[f"{backend}/int8 {name}"] = int8_record(bundle, target)
        size = bundles["pass"].manifest.preprocess.image_size
        x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        times = interleaved_ms([(enc, x) for enc in encoders.values()], rounds=3 if args.quick else 15,
                               runs=3 if args.quick else 10)
        ms = {k: round(t, 3) for k, t in zip(encoders, times, strict=True)}
        ratios = {b: {"no_pass_over_pass": round(ms[f"{b}/int8 no_pass"] / ms[f"{b}/int8 pass"], 3),
                      "fp32_over_pass": round(ms[f"{b}/fp32"] / ms[f"{b}/int8 pass"], 3)} for b in BACKENDS.values()}
        result = {
            "model": bundles["pass"].manifest.model_name, "median_ms": ms, "ratios": ratios, "int8": records,
            "export_wall_s": {k: round(v, 1) for k, v in wall.items()},
            "conditions": {"batch": 1, "mode": "model-only (the runtime's Encoder on a preprocessed tensor)",
                           "input": f"{size} px", "threads": "backend default (all cores)", "cores": os.cpu_count(),
                           "precision hint": "each backend's default (OpenVINO: bf16 on this CPU)",
                           "weights": "random init (family_bench.py, seed 0)" if not args.quick else "test-tiny-mci",
                           "calib": "builtin:shapes", "load_average_1min_after": round(os.getloadavg()[0], 2)},
        }
        print(json.dumps({k: result[k] for k in ("median_ms", "ratios", "export_wall_s")}, indent=1))
        if not args.quick:
            write_json(args.out, result)
            print(f"wrote {args.out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
