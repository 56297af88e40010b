"""Where an OpenVINO artifact's time goes, per layer, from OpenVINO's own performance counters.

    .venv/bin/python benchmarks/ov_layer_profile.py [--bundle B] [--encoder image] [--out FILE] [--quick]

Compiles each OpenVINO artifact of one tower of a bundle (default: family_bench.py's MobileCLIP2-S0,
exported before the INT8 speed pass existed) on the CPU with PERF_COUNT and the runtime's default
precision hint, runs it at batch 1 on a fixed random input, and sums each executed node's real
time per (node type, kernel) and per node. This is how the speed pass's cause was found: int8
strided grouped convolutions on a generic GEMM kernel (`jit_gemm_I8`). Writes
benchmarks/results/ov_layer_profile.json (not with --quick). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeclip._io import write_json  # noqa: E402
from edgeclip.bundle import Bundle  # noqa: E402


def profile(xml: Path, shape: list[int], warmup: int, runs: int) -> dict[str, Any]:
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"PERF_COUNT": True, "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(warmup):
        request.infer({0: x})
    by_kind: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    by_node: collections.Counter[str] = collections.Counter()
    for _ in range(runs):
        request.infer({0: x})
        for p in request.profiling_info:
            us = p.real_time.total_seconds() * 1e6
            kind = f"{p.node_type} [{p.exec_type}]"
            by_kind[kind] += us / runs
            count[kind] += 1
            by_node[f"{p.node_name} [{p.node_type} {p.exec_type}]"] += us / runs
    total = sum(by_kind.values())
    return {
        "total_us": round(total, 1),
        "by_kind": [{"kind": k, "us": round(v, 1), "nodes": count[k] // runs, "share": round(v / total, 3)}
                    for k, v in by_kind.most_common() if v > 0],
        "slowest_nodes": [{"node": k, "us": round(v, 1)} for k, v in by_node.most_common(15)],
    }


def main() -> None:
    work = ROOT / "benchmarks" / "work"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path,
                    default=work / "families" / "full" / "mobileclip2-s0" / "mobileclip2-s0.edgeclip")
    ap.add_argument("--encoder", default="image")
    ap.add_argument("--quick", action="store_true", help="a few runs, nothing written (checks the script runs)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ov_layer_profile.json")
    args = ap.parse_args()
    bundle = Bundle.open(args.bundle)
    result: dict[str, Any] = {
        "bundle": str(args.bundle), "model": bundle.manifest.model_name, "encoder": args.encoder,
        "conditions": {"batch": 1, "device": "CPU", "precision hint": "default (bf16 on this CPU)",
                       "performance hint": "LATENCY", "cores": os.cpu_count(), "input": "fixed random (seed 0)",
                       "weights": "as in the bundle"},
        "artifacts": {},
    }
    for a in bundle.manifest.find(args.encoder, "openvino"):
        xml = bundle.artifact_path(a)
        shape = [d if isinstance(d, int) else 1 for d in a.inputs[0].shape]
        result["artifacts"][a.key] = p = profile(xml, shape, 3 if args.quick else 20, 3 if args.quick else 30)
        print(f"{a.key}: {p['total_us'] / 1e3:.2f} ms")
        for row in p["by_kind"][:6]:
            print(f"  {row['kind']:48s} {row['us'] / 1e3:6.2f} ms  {row['nodes']:3d} nodes  {row['share']:.0%}")
    if not args.quick:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    else:
        print(json.dumps({k: v["total_us"] for k, v in result["artifacts"].items()}))


if __name__ == "__main__":
    main()
