"""Train the small SigLIP and MobileCLIP configs on built-in data and report held-out zero-shot top-1
against chance, with the wall time: `edge-tiny-siglip` with the sigmoid loss, `edge-mci` (MCi blocks)
with the CLIP loss, each `--steps 300 --seed 0` on builtin:shapes from random init.

    .venv/bin/python benchmarks/family_training.py [--steps 300] [--threads 2] [--only edge-mci] [--out F]

Writes benchmarks/results/family_training.json (top-1 from each run's own end-of-training evaluation
on the held-out split, as `train_log.jsonl` records it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from edgeclip._io import write_json

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"edge-tiny-siglip": "siglip", "edge-mci": "clip"}
CHANCE = {"shape": 1 / 6, "colour": 1 / 8}


def train(model: str, loss: str, out: Path, steps: int, threads: int) -> dict[str, object]:
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgeclip", "train", "--data", "builtin:shapes", "--model", model,
                    "--loss", loss, "--steps", str(steps), "--seed", "0", "--threads", str(threads),
                    "--out", str(out), "--no-progress"], check=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    evals = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if '"zero_shot' in line]
    return {"loss": loss, "steps": steps, "seconds": round(seconds, 1), "final_eval": evals[-1] if evals else None,
            "chance": CHANCE, "load_average_1min": {"start": round(load0, 2), "end": round(os.getloadavg()[0], 2)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "family-training")
    ap.add_argument("--only", default=",".join(RUNS), help="comma-separated configs")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "family_training.json")
    args = ap.parse_args()
    results = {m: train(m, RUNS[m], args.work / f"{m}-{args.steps}", args.steps, args.threads)
               for m in args.only.split(",")}
    report = {"what": "held-out zero-shot top-1 after training from random init on builtin:shapes",
              "threads": args.threads, "runs": results}
    write_json(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
