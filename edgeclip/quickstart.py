"""The quickstart pipeline: train a small CLIP on builtin:shapes, export it to every target this
machine can build, classify held-out images through the torch-free runtime, bench, and write a
summary (`edgeclip quickstart` is a thin wrapper over `run_quickstart`)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from edgeclip._io import write_json
from edgeclip.bench.machine import machine_info
from edgeclip.bench.report import write_outputs
from edgeclip.bench.run import BenchConfig, run_bench
from edgeclip.data.shapes import COLOURS, SHAPES, ZERO_SHOT_TEMPLATES
from edgeclip.data.tasks import ZeroShotTask, zero_shot_tasks
from edgeclip.errors import ConfigError
from edgeclip.export.driver import export_bundle
from edgeclip.runtime import ZeroShotClassifier
from edgeclip.train.config import DEFAULT_MODEL, TrainConfig, default
from edgeclip.train.loop import TrainResult, train

__all__ = ["QUICKSTART_TARGETS", "run_quickstart", "summary_lines"]

# onnx and openvino run here; tensorrt (ONNX + build recipe) and coreml (.mlpackage) are built
# here and run on their devices
QUICKSTART_TARGETS = ("onnx", "openvino", "tensorrt", "coreml")
DATA = "builtin:shapes"

Log = Callable[[str], None]


def run_quickstart(root: Path, steps: int | None = None, seed: int | None = None, progress: bool = True,
                   log: Log = print) -> dict[str, Any]:
    """Run the whole pipeline under `root` and return the summary also written to
    root/quickstart.json. `steps` and `seed` default to TrainConfig's; so do the model, batch
    size and learning rate, which learn builtin:shapes on 2 CPU cores in minutes."""
    started, load_before = time.perf_counter(), _load_average()
    ckpt, bundle = _fresh_layout(root)

    cfg = _train_config(ckpt, steps, seed, progress)
    log(f"[1/5] training {cfg.model} on {DATA} for {cfg.steps} steps ...")
    result = train(cfg)

    # both encoders, with two label sets: shape (the default) and colour
    log(f"[2/5] exporting split encoders ({', '.join(QUICKSTART_TARGETS)}) ...")
    t0 = time.perf_counter()
    exported = export_bundle(ckpt, bundle, targets=list(QUICKSTART_TARGETS), labels={
        "default": (list(SHAPES), list(ZERO_SHOT_TEMPLATES["shape"])),
        "colour": (list(COLOURS), list(ZERO_SHOT_TEMPLATES["colour"])),
    })
    export_s = time.perf_counter() - t0

    log("[3/5] zero-shot evaluation on held-out combinations (torch-free runtime) ...")
    tasks = {t.name: t for t in zero_shot_tasks(DATA, image_size=64, size=cfg.eval_size, seed=cfg.seed)}
    runtime_acc = _runtime_accuracy(bundle, tasks)

    log("[4/5] classifying sample images ...")
    clf, examples = _classify_samples(root / "samples", bundle, tasks)

    log("[5/5] benchmarking the image encoder (short run; see `edgeclip bench` for more) ...")
    bench_rows = _bench(root, bundle, ckpt, cfg.eval_size)

    summary = {
        "model": cfg.model,
        "total_seconds": round(time.perf_counter() - started, 1),
        "conditions": {**_conditions(), "load_average_1min": {"start": load_before, "end": _load_average()}},
        "train": {k: v for k, v in asdict(result).items() if k != "zero_shot"},
        "zero_shot_heldout": _heldout_figures(result, runtime_acc, tasks),
        "export_seconds": round(export_s, 2),
        "artifacts": {a.key: a.validation.to_dict() for a in exported.artifacts},
        "examples": examples,
        "classified_with": f"{clf.image.artifact.key} on {clf.backend_name} ({clf.image.reason})",
        "bench": bench_rows,
        "paths": _paths(root, ckpt, bundle),
    }
    write_json(root / "quickstart.json", summary)
    return summary


def _fresh_layout(root: Path) -> tuple[Path, Path]:
    """root/checkpoint and root/shapes.edgeclip, emptied: a rerun starts clean. A directory that
    holds anything else is refused, so a mistyped --out never loses a user's files."""
    if root.exists() and any(root.iterdir()) and not (root / "quickstart.json").exists():
        raise ConfigError(f"{root} exists and is not a quickstart directory", fix="choose another --out")
    root.mkdir(parents=True, exist_ok=True)
    ckpt, bundle = root / "checkpoint", root / "shapes.edgeclip"
    for stale in (ckpt, bundle):
        shutil.rmtree(stale, ignore_errors=True)
    return ckpt, bundle


def _train_config(ckpt: Path, steps: int | None, seed: int | None, progress: bool) -> TrainConfig:
    steps = default("steps") if steps is None else steps
    return TrainConfig(
        model=DEFAULT_MODEL, data=[DATA], out=str(ckpt), steps=steps,
        augment=False,  # procedural data never repeats: augmentation would only cost time
        warmup_steps=min(50, steps // 5 + 1),  # the quickstart's runs are short: so is its warmup
        seed=default("seed") if seed is None else seed, progress=progress,
    )


def _runtime_accuracy(bundle: Path, tasks: dict[str, ZeroShotTask]) -> dict[str, float]:
    """Held-out top-1 per attribute, classified by the runtime with the matching label set."""
    acc: dict[str, float] = {}
    for attr, label_set in (("shape", "default"), ("colour", "colour")):
        clf = ZeroShotClassifier.load(bundle, labels=label_set)
        task = tasks[attr]
        preds = clf.classify(list(task.images), top_k=1)
        hits = sum(p.label == task.classes[t] for p, t in zip(preds, task.targets, strict=True))
        acc[attr] = round(hits / len(task.targets), 4)
    return acc


def _classify_samples(samples: Path, bundle: Path,
                      tasks: dict[str, ZeroShotTask]) -> tuple[ZeroShotClassifier, list[dict[str, Any]]]:
    """A few held-out images saved as files (named by their truth) and classified from disk, as a
    user would."""
    samples.mkdir(exist_ok=True)
    files = []
    shape_task, colour_task = tasks["shape"], tasks["colour"]
    for i in range(4):
        truth = f"{colour_task.classes[colour_task.targets[i]]}_{shape_task.classes[shape_task.targets[i]]}"
        f = samples / f"heldout_{i}_{truth}.png"
        shape_task.images[i].save(f)
        files.append(f)
    clf = ZeroShotClassifier.load(bundle)
    return clf, [r.to_dict() for r in clf.classify(files, top_k=3)]


def _bench(root: Path, bundle: Path, ckpt: Path, eval_size: int) -> list[dict[str, Any]]:
    """A short bench of the image encoder against torch eager fp32 in the same run; the full
    report goes to root/bench.json and bench.md, the summary keeps the headline columns."""
    report = run_bench(
        BenchConfig(bundle=bundle, encoders=["image"], batch_sizes=[1], min_time_s=1.5, checkpoint=ckpt,
                    eval_data=DATA, eval_size=eval_size, end_to_end=True),
        log=lambda _: None,
    )
    write_outputs(report, str(root / "bench.json"), str(root / "bench.md"), None, None)
    keys = ("key", "median_ms", "p90_ms", "speedup_vs_baseline", "top1", "cosine_min")
    return [{k: r.get(k) for k in keys} for r in report["rows"]]


def _heldout_figures(result: TrainResult, runtime_acc: dict[str, float],
                     tasks: dict[str, ZeroShotTask]) -> dict[str, dict[str, Any]]:
    return {
        attr: {
            "top1_runtime": runtime_acc[attr],
            "top1_torch": result.zero_shot.get(attr),
            "chance": round(1 / len(tasks[attr].classes), 4),
            "images": len(tasks[attr].targets),
        }
        for attr in ("shape", "colour")
    }


def _paths(root: Path, ckpt: Path, bundle: Path) -> dict[str, str]:
    return {"checkpoint": str(ckpt), "bundle": str(bundle), "samples": str(root / "samples"),
            "train_log": str(ckpt / "train_log.jsonl"), "bench": str(root / "bench.md"),
            "summary": str(root / "quickstart.json")}


def _load_average() -> float | None:
    """The machine's 1-minute load: wall times from a busy machine are not the quickstart's own."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # not on every platform
        return None


def _conditions() -> dict[str, Any]:
    """What the figures depend on: the machine, threads, torch; weights are trained here from
    random init on the generated builtin:shapes data."""
    m = machine_info(threads=torch.get_num_threads())
    return {"cpu": m.get("cpu"), "cores": m.get("cores"), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "weights": "random init, trained by this run", "data": "builtin:shapes (generated)"}


def summary_lines(s: dict[str, Any]) -> list[str]:
    """The summary as the terminal shows it; the last line is the held-out top-1 as JSON."""
    t = s["train"]
    lines = ["", f"trained {s['model']}: {t['steps']} steps, {t['samples']} samples in {t['seconds']:.0f} s "
                 f"({t['samples_per_s']:.0f} samples/s); quickstart total {s['total_seconds']:.0f} s"]
    for attr, z in s["zero_shot_heldout"].items():
        lines.append(f"zero-shot {attr:<6} top-1 {z['top1_runtime']:.1%} (torch {z['top1_torch']:.1%}, "
                     f"chance {z['chance']:.1%}) on {z['images']} held-out images")
    lines.append(f"classified with {s['classified_with']}")
    for ex in s["examples"]:
        top = ex["predictions"][0] if "predictions" in ex else {"label": "error", "probability": 0.0}
        lines.append(f"  {Path(ex['image']).name}: {top['label']} ({top['probability']:.2f})")
    for b in s["bench"]:
        if b["key"].endswith("/model"):
            speed = f"  {b['speedup_vs_baseline']:.1f}x torch" if b.get("speedup_vs_baseline") else ""
            lines.append(f"  bench {b['key']:<34} {b['median_ms']:7.2f} ms{speed}")
    lines.append("")
    lines.extend(f"{name:<11} {path}" for name, path in s["paths"].items())
    lines.append(json.dumps({k: v["top1_runtime"] for k, v in s["zero_shot_heldout"].items()}))
    return lines
