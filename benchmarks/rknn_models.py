"""RKNN .rknn files for rk3588 from the quickstart model (trained) and a random-init ViT-B/32, fp16 and
int8, run on rknn-toolkit2's PC simulator and compared with torch fp32 on held-out builtin:shapes
images: embedding cosine and zero-shot top-1. Accuracy only: the simulator's speed is not the NPU's.

    python benchmarks/rknn_models.py --checkpoint CKPT            # CKPT: a quickstart-trained checkpoint
    python benchmarks/rknn_models.py --checkpoint CKPT --quick    # small held-out and calibration sets
    python benchmarks/rknn_models.py --part vitb32 --int8-configs w8a16,mmse [--guarded-int8]

Per model: fp16 through export_bundle (both towers; the manifest's figures), the image tower on the
simulator vs torch on held-out images, then RKNN's int8 options tried one at a time on the image tower
(each a .rknn, judged against the README's INT8 budget), and with --guarded-int8 int8 through
export_bundle's guard (on a miss its per-layer pass rebuilds once per layer: many minutes on the
simulator). Each part merges into benchmarks/results/rknn_models.json. One toolkit build at a time.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from int8_speed import vit_b32_checkpoint  # run as a script: benchmarks/ is on sys.path

from edgeclip._io import write_json
from edgeclip.bundle import Bundle
from edgeclip.data.builtin import shapes_train
from edgeclip.data.shapes import COLOURS, SHAPES, ZERO_SHOT_TEMPLATES
from edgeclip.data.tasks import shapes_tasks
from edgeclip.errors import EdgeclipError, ExportError
from edgeclip.export.driver import export_bundle
from edgeclip.export.rknn import FLOAT_DEFAULT_OPS, GUARDED_OPS, with_float_layers
from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.runtime import ZeroShotClassifier
from edgeclip.runtime.backends.rknn_toolkit import ToolkitWorker, toolkit_python
from edgeclip.runtime.preprocess import preprocess

RESULTS = Path(__file__).parent / "results" / "rknn_models.json"
PLATFORM = "rk3588"
MIN_COSINE = 0.995  # the README's INT8 budget (--min-cosine)
# name -> (quantized_algorithm, quantized_method, quantized_dtype, RKNN op types kept in float16 besides
# FLOAT_DEFAULT_OPS). "+mlp-float": GELU and the layer after it (the MLP's second projection, whose
# inputs have outliers); "+residual-float": the residual adds; "all-float": every op the guard may keep
# in float, the best int8 can do when only the ops between stay quantized
INT8_CONFIGS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "normal": ("normal", "channel", "w8a8", ()),
    "normal+mlp-float": ("normal", "channel", "w8a8", ("+mlp",)),
    "normal+residual-float": ("normal", "channel", "w8a8", ("Add",)),
    "all-float": ("normal", "channel", "w8a8", GUARDED_OPS),
    "kl_divergence": ("kl_divergence", "channel", "w8a8", ()),
    "mmse": ("mmse", "channel", "w8a8", ()),
    "kl_divergence+residual-float": ("kl_divergence", "channel", "w8a8", ("Add",)),
    "mmse+residual-float": ("mmse", "channel", "w8a8", ("Add",)),
    "w8a16": ("normal", "channel", "w8a16", ()),
}


def heldout(cfg: Any, n: int) -> tuple[np.ndarray, dict[str, list[int]]]:
    """n held-out builtin:shapes images (never trained on), preprocessed as the bundle does, and their
    shape and colour targets."""
    tasks = shapes_tasks(cfg.image_size, n, seed=0)
    pixels = np.stack([preprocess(im, cfg) for im in tasks[0].images]).astype(np.float32)
    return pixels, {t.name: list(t.targets) for t in tasks}


@torch.no_grad()
def torch_embeddings(ckpt: Path, pixels: np.ndarray) -> np.ndarray:
    model, _ = load_checkpoint(ckpt)
    model.eval()
    out = [torch.nn.functional.normalize(model.encode_image(torch.from_numpy(pixels[i : i + 32])), dim=-1)
           for i in range(0, len(pixels), 32)]
    return torch.cat(out).numpy()


def compare(sim: np.ndarray, ref: np.ndarray, labels: dict[str, np.ndarray],
            targets: dict[str, list[int]] | None) -> dict[str, Any]:
    """Simulator vs torch: row cosine; per label set, top-1 agreement and (with targets) both top-1s."""
    sim = sim / np.linalg.norm(sim, axis=1, keepdims=True)
    cos = (sim * ref).sum(1)
    row: dict[str, Any] = {"images": len(ref), "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
                           "within_int8_budget": bool(cos.min() >= MIN_COSINE)}
    for name, emb in labels.items():
        a, b = (sim @ emb.T).argmax(1), (ref @ emb.T).argmax(1)
        row[f"{name}_top1_agreement"] = float((a == b).mean())
        if targets is not None:
            t = np.asarray(targets[name])
            row[f"{name}_top1_torch"], row[f"{name}_top1_simulator"] = float((b == t).mean()), float((a == t).mean())
    return row


def manifest_rows(bundle: Bundle) -> dict[str, Any]:
    return {a.key: {"file_bytes": (bundle.root / a.main_file).stat().st_size, "environment": a.environment.details,
                    "validation": a.validation.to_dict(),
                    "calibration": a.calibration.to_dict() if a.calibration else None}
            for a in bundle.manifest.artifacts}


def _provenance(ckpt: Path) -> dict[str, Any]:
    """How the checkpoint was trained: its model config's name and the train log's final record."""
    last = json.loads((ckpt / "train_log.jsonl").read_text().splitlines()[-1])
    final = last.get("final", last)
    model = json.loads((ckpt / "config.json").read_text())["model"]
    return {"model": model.get("name"), "data": "builtin:shapes", "steps": final.get("steps"),
            "final_loss": final.get("final_loss"), "zero_shot_torch_at_train_end": final.get("zero_shot")}


def part_model(ckpt: Path, tmp: Path, n: int, calib_size: int, configs: list[str], guarded: bool,
               classes: dict[str, tuple[str, ...]], targets_known: bool,
               save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """fp16 through export_bundle (both towers; the manifest's figures), held-out images on the
    simulator vs torch, RKNN's int8 options swept on the image tower, and (guarded) int8 through
    export_bundle's guard, whose refusal is recorded when nothing meets the budget."""
    out = tmp / "model.edgeclip"
    labels = {name: (list(c), list(ZERO_SHOT_TEMPLATES[name])) for name, c in classes.items()}
    t0 = time.perf_counter()
    export_bundle(ckpt, out, targets=["rknn"], precision=["fp16"], labels=labels, options={"rknn_platform": PLATFORM})
    result: dict[str, Any] = {"fp16_export_s": round(time.perf_counter() - t0, 1)}
    bundle = Bundle.open(out)
    pixels, targets = heldout(bundle.manifest.preprocess, n)
    ref = torch_embeddings(ckpt, pixels)
    label_emb = {name: bundle.label_set(name)[0] for name in classes}  # torch's text tower, at export
    clf = ZeroShotClassifier.load(out, backend="rknn", precision="fp16", device="SIM", labels=None)
    result["heldout_vs_torch"] = {"image/rknn-fp16": compare(clf.image(pixels), ref, label_emb,
                                                             targets if targets_known else None)}
    result["manifest"] = manifest_rows(bundle)
    save(result)
    artifact = bundle.manifest.find("image", "rknn", "fp16")[0]
    onnx = tmp / "int8" / "model.onnx"  # named "model": the toolkit names its step-1 files after it
    onnx.parent.mkdir()
    onnx.write_bytes((bundle.root / artifact.main_file).with_name("model.onnx").read_bytes())
    dataset = _calibration(bundle.manifest.preprocess, calib_size, tmp / "calib")
    result["int8_options"] = {"calib_images": calib_size, "budget_min_cosine": MIN_COSINE,
                              "float_always": list(FLOAT_DEFAULT_OPS), "configs": {}}
    with ToolkitWorker(toolkit_python()) as worker:
        for name in configs:
            try:
                row = _try_config(worker, name, onnx, dataset, pixels, ref, tmp / "int8")
                row.update(compare(worker.infer(pixels), ref, label_emb, targets if targets_known else None))
            except EdgeclipError as e:  # an option this platform refuses (the toolkit says which)
                row = {"refused_by_toolkit": [ln for ln in e.message.split(";")[0].splitlines() if ln.strip()][-1]}
            result["int8_options"]["configs"][name] = row
            print(name, json.dumps(row), flush=True)
            save(result)  # a long sweep keeps what it has measured
    if guarded:
        result["int8_guarded_export"] = _guarded_int8(ckpt, out, labels)
    result["manifest"] = manifest_rows(Bundle.open(out))
    return result


def _guarded_int8(ckpt: Path, out: Path, labels: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        export_bundle(ckpt, out, targets=["rknn"], precision=["int8"], encoders=["image"], labels=labels,
                      options={"rknn_platform": PLATFORM, "calib": "builtin:shapes"})
        outcome = "registered (figures in the manifest rows)"
    except ExportError as e:
        outcome = f"refused: {e.message}"
    return {"options": "--calib builtin:shapes (300 images), --calib-method minmax (RKNN normal)",
            "outcome": outcome, "seconds": round(time.perf_counter() - t0, 1)}


def _calibration(cfg: Any, n: int, folder: Path) -> Path:
    """n builtin:shapes training images as .npy rows and the list file RKNN reads."""
    folder.mkdir(parents=True, exist_ok=True)
    train = shapes_train(cfg.image_size, 0, n)
    for i in range(n):
        np.save(folder / f"{i}.npy", preprocess(train[i].image, cfg)[None].astype(np.float32), allow_pickle=False)
    listing = folder / "dataset.txt"
    listing.write_text("".join(f"{folder / f'{i}.npy'}\n" for i in range(n)))
    return listing


def _try_config(worker: ToolkitWorker, name: str, onnx: Path, dataset: Path, pixels: np.ndarray, ref: np.ndarray,
                work: Path) -> dict[str, Any]:
    """Calibrate and build one int8 configuration; the simulator keeps the built model for infer."""
    algorithm, method, dtype, float_ops = INT8_CONFIGS[name]
    t0 = time.perf_counter()
    made = worker.call("prepare_int8", platform=PLATFORM, onnx=str(onnx), input="pixel_values",
                       shape=[1, *pixels.shape[1:]], dataset=str(dataset), algorithm=algorithm, workdir=str(work),
                       method=method, dtype=dtype)
    layers = worker.call("layers", model=made["model"])["layers"]
    keep = [n for kind, n in layers if kind in FLOAT_DEFAULT_OPS or kind in float_ops]
    if "+mlp" in float_ops:
        keep += [n for i, (kind, n) in enumerate(layers) if kind == "exGelu" or (i and layers[i - 1][0] == "exGelu")]
    cfg = Path(made["quantization.cfg"])
    cfg.write_text(with_float_layers(cfg.read_text(), keep))
    out = work / f"{name}.rknn"
    worker.call("build_int8", platform=PLATFORM, model=made["model"], data=made["data"], cfg=str(cfg), out=str(out),
                algorithm=algorithm, method=method, dtype=dtype)
    return {"quantized_algorithm": algorithm, "quantized_method": method, "quantized_dtype": dtype,
            "float_layers": len(keep), "rknn_bytes": out.stat().st_size, "build_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="A quickstart-trained checkpoint (edgeclip quickstart).")
    ap.add_argument("--part", action="append", choices=["quickstart", "vitb32"])
    ap.add_argument("--int8-configs", default=",".join(INT8_CONFIGS))
    ap.add_argument("--guarded-int8", action="store_true", help="Also int8 through export_bundle's guard (slow).")
    ap.add_argument("--quick", action="store_true", help="Small held-out and calibration sets.")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    n, calib = (8, 16) if args.quick else (48, 64)
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result["conditions"] = {"platform": PLATFORM, "run_on": "rknn-toolkit2 PC simulator (accuracy only, not the NPU)",
                            "heldout": "builtin:shapes held-out split (seed 0), never trained on",
                            "python": platform.python_version()}
    configs = args.int8_configs.split(",")

    def saver(part: str, head: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
        before = result.get(part, {}).get("int8_options", {}).get("configs", {})

        def save(row: dict[str, Any]) -> None:  # configs measured by an earlier run are kept
            if "int8_options" in row:
                row["int8_options"]["configs"] = {**before, **row["int8_options"]["configs"]}
            result[part] = {**head, **row}
            write_json(args.out, result)
        return save

    for part in args.part or ["quickstart", "vitb32"]:
        with tempfile.TemporaryDirectory() as tmp:
            if part == "quickstart":
                if args.checkpoint is None:
                    sys.exit("--checkpoint: a quickstart-trained checkpoint (run `edgeclip quickstart` first)")
                save = saver(part, {"checkpoint": _provenance(args.checkpoint)})
                save(part_model(args.checkpoint, Path(tmp), n, calib, configs, args.guarded_int8,
                                {"shape": SHAPES, "colour": COLOURS}, True, save))
            else:
                ckpt = vit_b32_checkpoint(Path(tmp) / "vit")
                save = saver(part, {"model": "ViT-B-32, random init, 224 px: top-1 is agreement with torch only"})
                save(part_model(ckpt, Path(tmp), min(n, 16), calib, configs, args.guarded_int8, {"shape": SHAPES},
                                False, save))
        print(f"{part}: written to {args.out}", flush=True)


if __name__ == "__main__":
    main()
