"""Export one checkpoint with two edgeclip checkouts and compare the manifests they write.

    .venv/bin/python benchmarks/manifest_compare.py --before /path/to/old/checkout --after . \
        [--checkpoint RUN] [--out benchmarks/results/manifest_compare.json]

A refactor that claims "no behaviour change" must write the same manifest for the same checkpoint.
Each checkout runs in its own interpreter (`PYTHONPATH=<checkout> python -m edgeclip export`), over
every target and precision this machine can build, with INT8 calibrated on builtin:shapes. The
comparison ignores what is expected to differ between two runs or two versions: creation times,
edgeclip's and the tools' versions. Everything else is reported key by key; floats are compared
with a relative tolerance (`--rtol`), since a layer kept in float or a probe image that changed
moves validation figures by far more than reruns do (reruns on one machine give equal bits).
Without --checkpoint, a test-tiny model is trained for 40 steps with seed 0 by the `--after` checkout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EXPORTS = [  # (target, precisions): one export call each, into one bundle
    ("onnx", "fp32,fp16,int8,int8-dynamic"),
    ("openvino", "fp32,fp16,int8"),
    ("tensorrt", "fp32,fp16,int8"),
    ("coreml", "fp16,int8w"),
]
CALIBRATION = ["--calib", "builtin:shapes", "--calib-size", "64"]  # for targets with activation INT8
# keys whose values name versions or times: expected to differ between checkouts and runs
# files whose bytes differ between two exports by the same code: a .mlpackage's Manifest.json names its
# items by fresh UUIDs, and model.mlmodel refers to them (measured: same checkout twice, only these differ)
NONDETERMINISTIC_FILES = ".mlpackage/"
VOLATILE = {"created", "created_at", "edgeclip_version", "version", "onnx", "onnxruntime", "openvino", "nncf",
            "coremltools", "torch", "polygraphy", "numpy", "python"}


def _edgeclip(checkout: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "2"}
    subprocess.run([sys.executable, "-m", "edgeclip", *args], check=True, env=env, cwd=checkout,
                   stdout=subprocess.DEVNULL)


def export_all(checkout: Path, checkpoint: Path, out: Path) -> dict[str, Any]:
    labels = out.parent / "labels.txt"  # a label set: validation then also checks top-1 agreement
    labels.write_text("\n".join(f"{c} {s}" for c in ("red", "green", "blue") for s in ("circle", "square")) + "\n")
    for target, precisions in EXPORTS:
        calib = CALIBRATION if "int8," in precisions + "," else []
        _edgeclip(checkout, "export", str(checkpoint), "--target", target, "--precision", precisions, *calib,
                  "--labels", str(labels), "--out", str(out))
    manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    for artifact in manifest["artifacts"]:  # ONNX files: hash the graph without the exporter's stack traces
        for rel in artifact["files"]:
            if rel.endswith(".onnx"):
                artifact["files"][rel] = "graph:" + _graph_hash(out / rel)
    return manifest


def _graph_hash(path: Path) -> str:
    """sha256 of an ONNX file without the per-node stack traces that older edgeclip versions kept
    (they hold the exporting checkout's absolute path, so two checkouts always differed there)."""
    import hashlib

    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def normalise(obj: Any, path: str = "") -> dict[str, Any]:
    """Flatten to {"a.b[2].c": leaf}, artifacts keyed by encoder/target-precision, volatile keys dropped."""
    flat: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in VOLATILE:
                continue
            flat.update(normalise(v, f"{path}.{k}" if path else k))
    elif isinstance(obj, list) and path == "artifacts":
        for a in obj:
            flat.update(normalise(a, f"artifacts[{a['encoder']}/{a['target']}-{a['precision']}]"))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            flat.update(normalise(v, f"{path}[{i}]"))
    else:
        flat[path] = obj
    return flat


def differences(before: dict[str, Any], after: dict[str, Any], rtol: float) -> list[dict[str, Any]]:
    a, b = normalise(before), normalise(after)
    out = []
    for key in sorted(set(a) | set(b)):
        if ".files." in key and NONDETERMINISTIC_FILES in key:
            continue
        x, y = a.get(key, "<absent>"), b.get(key, "<absent>")
        if isinstance(x, float) and isinstance(y, float) and math.isclose(x, y, rel_tol=rtol, abs_tol=1e-12):
            continue
        if x != y:
            out.append({"key": key, "before": x, "after": y})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True, type=Path, help="checkout (or worktree) of the old code")
    ap.add_argument("--after", default=HERE.parent, type=Path)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "manifest_compare.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint
        if ckpt is None:
            ckpt = Path(tmp) / "run"
            _edgeclip(args.after.resolve(), "train", "--model", "test-tiny", "--data", "builtin:shapes",
                      "--steps", "40", "--batch-size", "32", "--seed", "0", "--out", str(ckpt))
        sides = {name: export_all(checkout.resolve(), ckpt.resolve(), Path(tmp) / name)
                 for name, checkout in (("before", args.before), ("after", args.after))}
    diffs = differences(sides["before"], sides["after"], args.rtol)
    report = {"before": str(args.before), "after": str(args.after), "exports": EXPORTS, "rtol": args.rtol,
              "ignored_keys": sorted(VOLATILE), "differences": diffs,
              "artifacts": [f"{a['encoder']}/{a['target']}-{a['precision']}" for a in sides["after"]["artifacts"]]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(report['artifacts'])} artifacts; {len(diffs)} differing keys")
    for d in diffs:
        print(f"  {d['key']}: {d['before']!r} -> {d['after']!r}")


if __name__ == "__main__":
    main()
