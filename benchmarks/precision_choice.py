"""Which precision the runtime loads, before and after `edgeclip bench` measured them on this host.

    .venv/bin/python benchmarks/precision_choice.py [--bundle B] [--backends openvino,onnxruntime] [--quick]

A bundle with fp32 and int8 towers (default: family_bench.py's MobileCLIP2-S0, whose MCi image tower
ran slower in int8 than in fp32 on this x86 CPU, docs/bench-mobileclip2-s0.md). For each backend and
tower: the precision a plain `ZeroShotClassifier.load` picks with no timing record (the backend's
preference, int8 first), then `run_bench` (batch 1, model-only, precisions interleaved), then the
precision the same load picks. Timing records go to a file of their own (benchmarks/work/), not to
the user's. Writes benchmarks/results/precision_choice.json (not with --quick). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeclip._io import write_json  # noqa: E402
from edgeclip.bench.run import BenchConfig, run_bench  # noqa: E402
from edgeclip.runtime import ZeroShotClassifier  # noqa: E402


def loaded(bundle: Path, backend: str, threads: int | None) -> dict[str, dict[str, str]]:
    """The precision (and the reason given) a plain load picks for each tower on `backend`."""
    clf = ZeroShotClassifier.load(bundle, backend=backend, labels=None, threads=threads)
    clf.embed_texts(["a photo"])
    assert clf._text is not None
    return {e.artifact.encoder: {"precision": e.artifact.precision, "reason": e.reason}
            for e in (clf.image, clf._text)}


def main() -> None:
    work = ROOT / "benchmarks" / "work"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path,
                    default=work / "families" / "full" / "mobileclip2-s0" / "mobileclip2-s0.edgeclip")
    ap.add_argument("--backends", default="openvino,onnxruntime")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds of interleaved timing (bench's --min-time)")
    ap.add_argument("--quick", action="store_true", help="a few runs, nothing written (checks the script runs)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "precision_choice.json")
    args = ap.parse_args()
    timings = work / ("precision-choice-timings-quick.json" if args.quick else "precision-choice-timings.json")
    timings.unlink(missing_ok=True)
    os.environ["EDGECLIP_TIMINGS"] = str(timings)
    backends = args.backends.split(",")
    before = {b: loaded(args.bundle, b, args.threads) for b in backends}
    report = run_bench(BenchConfig(
        bundle=args.bundle, backends=backends, batch_sizes=[1], threads=args.threads, baseline="none",
        end_to_end=False, memory=False, label_classes=0, runs=5 if args.quick else None,
        min_time_s=None if args.quick else args.min_time, warmup=1 if args.quick else 3))
    after = {b: loaded(args.bundle, b, args.threads) for b in backends}
    rows = [{k: r[k] for k in ("encoder", "backend", "precision", "label", "median_ms", "runs")}
            for r in report["rows"]]
    result: dict[str, Any] = {
        "bundle": str(args.bundle), "model": report["bundle"]["model"], "machine": report["machine"],
        "conditions": {"batch": 1, "mode": "model-only", "threads": args.threads,
                       "weights": "as in the bundle (family_bench.py: random init, seed 0)",
                       "precision hint": "each backend's default (OpenVINO: bf16 on this CPU), plus f32 rows"},
        "rows": rows, "recorded": report["timings_recorded"], "loaded_before": before, "loaded_after": after,
    }
    for b in backends:
        for enc in ("image", "text"):
            print(f"{b:12s} {enc:5s}: {before[b][enc]['precision']:5s} -> {after[b][enc]['precision']:5s}"
                  f"  ({after[b][enc]['reason']})")
    if not args.quick:
        write_json(args.out, result)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
