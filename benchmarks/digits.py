"""The README's builtin:digits figure: a small CLIP trained on scikit-learn's handwritten digits,
zero-shot top-1 on the held-out 20 % (never seen in training), from `edgeclip train`'s own result.

    .venv/bin/python benchmarks/digits.py [--steps 300] [--seed 0]

Writes benchmarks/results/digits.json with the exact command, the result and the conditions
(random-init weights, 2 threads, the machine's load average before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="edge-tiny")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        flags = ["--data", "builtin:digits", "--model", args.model, "--steps", str(args.steps),
                 "--seed", str(args.seed), "--threads", "2", "--no-progress"]
        load_before = os.getloadavg()[0]
        proc = subprocess.run([sys.executable, "-m", "edgeclip", "train", *flags, "--out", f"{tmp}/run"],
                              capture_output=True, text=True, cwd=ROOT, check=True)
        result = json.loads(proc.stdout[proc.stdout.index("{"):])
    report = {"command": "edgeclip train " + " ".join(flags) + " --out RUN", "result": result,
              "conditions": {"weights": "random init", "data": "builtin:digits (scikit-learn, 80/20 split)",
                             "threads": 2, "load_average_1min": {"start": round(load_before, 2),
                                                                 "end": round(os.getloadavg()[0], 2)}}}
    out = ROOT / "benchmarks" / "results" / "digits.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"zero_shot": result.get("zero_shot"), "seconds": result.get("seconds")}))


if __name__ == "__main__":
    main()
