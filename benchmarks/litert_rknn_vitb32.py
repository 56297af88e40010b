"""LiteRT and RKNN exports of a random-init ViT-B-32 image tower through `export_bundle`, with the
manifest's validation figures (cosine to torch on the probes; INT8 on held-out builtin:shapes
images) and the wall time of each export: python benchmarks/litert_rknn_vitb32.py [--calib-size 64]
[--rknn-int8]. Writes benchmarks/results/litert_rknn_vitb32.json. RKNN runs on rknn-toolkit2's PC
simulator: accuracy only, not NPU speed."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from int8_speed import vit_b32_checkpoint  # run as a script: benchmarks/ is on sys.path

from edgeclip._io import write_json
from edgeclip.bundle import Bundle
from edgeclip.export.driver import export_bundle


def _rows(bundle: Bundle, target: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in bundle.manifest.artifacts:
        if a.target != target:
            continue
        v = a.validation
        out[a.key] = {"probe_cosine_min": v.cosine_min, "top1_agreement_probes": v.top1_agreement,
                      "heldout": v.heldout.to_dict() if v.heldout else None, "checked_with": v.checked_with,
                      "excluded_layers": a.calibration.excluded_layers if a.calibration else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib-size", type=int, default=64)
    ap.add_argument("--rknn-int8", action="store_true")
    args = ap.parse_args()
    result: dict[str, Any] = {"model": "ViT-B-32 image tower, random init, 224 px (no labels: INT8 judged by cosine)",
                              "calib": "builtin:shapes", "calib_size": args.calib_size, "export_s": {}, "rows": {}}
    labels = None  # random weights: zero-shot labels mean nothing; the budget is the cosine
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = vit_b32_checkpoint(Path(tmp) / "vit")
        plans = [("litert", ["fp32", "fp16", "int8-dynamic", "int8"], {}),
                 ("rknn", ["fp16", *(["int8"] if args.rknn_int8 else [])], {"rknn_platform": "rk3588"})]
        for target, precisions, extra in plans:
            out = Path(tmp) / f"{target}.edgeclip"
            t = time.perf_counter()
            export_bundle(ckpt, out, targets=[target], precision=precisions, encoders=["image"], labels=labels,
                          options={"calib": "builtin:shapes", "calib_size": args.calib_size, **extra})
            result["export_s"][target] = round(time.perf_counter() - t, 1)
            result["rows"].update(_rows(Bundle.open(out), target))
            print(json.dumps(result, indent=1), flush=True)
    write_json(Path(__file__).parent / "results" / "litert_rknn_vitb32.json", result)


if __name__ == "__main__":
    main()
