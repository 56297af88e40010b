"""What the INT8 guard's sensitivity search costs on a real export: quantizations and wall time.

    .venv/bin/python benchmarks/guard_cost.py [--checkpoint C] [--target openvino] [--encoder image] [--quick]

Exports one tower of a checkpoint (default: family_bench.py's random-init MobileCLIP2-S0, whose
OpenVINO image INT8 misses the 0.995 cosine budget by a hair, so the guard has to search) with
`edgeclip export --precision int8 --calib builtin:shapes`, as family_bench.py does, in a fresh
process, and reads back from the written manifest how many quantizations the guard made, which
layers it left in float and the held-out numbers it reached. Writes
benchmarks/results/guard_cost.json (not with --quick). Run it on a quiet machine.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeclip._io import write_json  # noqa: E402
from edgeclip.export.capabilities import CAPABILITIES  # noqa: E402


def main() -> None:
    work = ROOT / "benchmarks" / "work"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=work / "families" / "full" / "mobileclip2-s0" / "checkpoint")
    ap.add_argument("--target", default="openvino")
    ap.add_argument("--encoder", default="image")
    ap.add_argument("--quick", action="store_true", help="the quickstart-sized test model (checks the script runs)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "guard_cost.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="guard-cost-"))
    try:
        ckpt = args.checkpoint
        if args.quick:
            ckpt = tmp / "ckpt"
            subprocess.run([sys.executable, "-m", "edgeclip", "train", "--model", "test-tiny", "--steps", "5",
                            "--out", str(ckpt)], check=True, cwd=ROOT, capture_output=True)
        bundle = tmp / "b.edgeclip"
        cmd = [sys.executable, "-m", "edgeclip", "export", str(ckpt), "--target", args.target, "--precision", "int8",
               "--encoders", args.encoder, "--calib", "builtin:shapes", "--out", str(bundle)]
        if "no_speed_pass" in CAPABILITIES[args.target].options:
            cmd.append("--no-speed-pass")  # the guard's cost alone: the speed pass's trials add to guard.attempts
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"export failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        manifest = json.loads((bundle / "manifest.json").read_text())
        art = next(a for a in manifest["artifacts"] if a["encoder"] == args.encoder and a["precision"] == "int8")
        cal = art["calibration"]
        guard = cal["guard"]
        result: dict[str, Any] = {
            "checkpoint": str(ckpt), "model": manifest["model"]["name"],
            "artifact": f"{args.encoder}/{args.target}-int8",
            "export_wall_s": round(wall, 1), "quantizations": guard["attempts"],
            "groups": len(guard.get("groups", [])), "ranked_alone": len(guard.get("sensitivity", {})),
            "excluded_by_guard": cal["excluded_by_guard"], "excluded_layers": cal["excluded_layers"],
            "heldout": {k: v for k, v in cal["measured"].items() if k in ("cosine_min", "cosine_mean", "top1_drop")},
            "conditions": {"calib": "builtin:shapes", "weights": "random init (family_bench.py, seed 0)",
                           "cores": os.cpu_count(), "load_average_1min_after": round(os.getloadavg()[0], 2),
                           "command": " ".join(cmd[1:])},
        }
        print(json.dumps({k: v for k, v in result.items() if k != "conditions"}, indent=1))
        if not args.quick:
            write_json(args.out, result)
            print(f"wrote {args.out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
