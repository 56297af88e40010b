"""`edgeclip quickstart`: the whole pipeline on built-in data, on this machine, in minutes."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from edgeclip._io import write_json

# Measured to learn builtin:shapes on 2 CPU cores within the time budget (README, issue notes)
QUICKSTART_MODEL = "edge-tiny"
QUICKSTART_STEPS = 1000
QUICKSTART_BATCH = 128
QUICKSTART_LR = 1e-3
# onnx and openvino run here; tensorrt (ONNX + build recipe) and coreml (.mlpackage) are built
# here and run on their devices
QUICKSTART_TARGETS = ("onnx", "openvino", "tensorrt", "coreml")


@click.command()
@click.option("--out", default="quickstart", show_default=True, type=click.Path(), help="Output directory.")
@click.option("--steps", default=QUICKSTART_STEPS, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--no-progress", is_flag=True)
def quickstart(out: str, steps: int, seed: int, no_progress: bool) -> None:
    """Train a small CLIP on builtin:shapes, export it, classify held-out images, report."""
    from edgeclip.errors import ConfigError

    root = Path(out)
    if root.exists() and any(root.iterdir()) and not (root / "quickstart.json").exists():
        raise ConfigError(f"{root} exists and is not a quickstart directory", fix="choose another --out")
    summary = run_quickstart(root, steps=steps, seed=seed, progress=not no_progress)
    _print_summary(summary)


def run_quickstart(root: Path, steps: int, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    import shutil

    from edgeclip.bench.report import write_outputs
    from edgeclip.bench.run import BenchConfig, run_bench
    from edgeclip.export.api import export_bundle
    from edgeclip.runtime import ZeroShotClassifier
    from edgeclip.train.data import zero_shot_tasks
    from edgeclip.train.loop import TrainConfig, train
    from edgeclip.train.shapes import COLOURS, SHAPES, ZERO_SHOT_TEMPLATES

    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    ckpt, bundle = root / "checkpoint", root / "shapes.edgeclip"
    for stale in (ckpt, bundle):  # a rerun starts clean
        shutil.rmtree(stale, ignore_errors=True)

    # 1. train
    click.echo(f"[1/5] training {QUICKSTART_MODEL} on builtin:shapes for {steps} steps ...")
    cfg = TrainConfig(
        model=QUICKSTART_MODEL, data=["builtin:shapes"], out=str(ckpt), steps=steps,
        augment=False,  # procedural data never repeats: augmentation would only cost time
        batch_size=QUICKSTART_BATCH, lr=QUICKSTART_LR, warmup_steps=min(50, steps // 5 + 1),
        seed=seed, progress=progress,
    )
    result = train(cfg)

    # 2. export both encoders to every target this machine can build, with two label sets:
    #    shape (the default) and colour
    click.echo(f"[2/5] exporting split encoders ({', '.join(QUICKSTART_TARGETS)}) ...")
    t0 = time.perf_counter()
    labels = {
        "default": (list(SHAPES), list(ZERO_SHOT_TEMPLATES["shape"])),
        "colour": (list(COLOURS), list(ZERO_SHOT_TEMPLATES["colour"])),
    }
    exported = export_bundle(ckpt, bundle, targets=list(QUICKSTART_TARGETS), labels=labels)
    export_s = time.perf_counter() - t0

    # 3. zero-shot accuracy on held-out colour x shape combinations, through the runtime
    click.echo("[3/5] zero-shot evaluation on held-out combinations (torch-free runtime) ...")
    tasks = {t.name: t for t in zero_shot_tasks("builtin:shapes", image_size=64, size=cfg.eval_size, seed=seed)}
    runtime_acc: dict[str, float] = {}
    for attr, label_set in (("shape", "default"), ("colour", "colour")):
        clf = ZeroShotClassifier.load(bundle, labels=label_set)
        task = tasks[attr]
        preds = clf.classify(list(task.images), top_k=1)
        hits = sum(p.label == task.classes[t] for p, t in zip(preds, task.targets, strict=True))
        runtime_acc[attr] = round(hits / len(task.targets), 4)

    # 4. classify a few held-out images saved as files
    click.echo("[4/5] classifying sample images ...")
    samples = root / "samples"
    samples.mkdir(exist_ok=True)
    files = []
    shape_task, colour_task = tasks["shape"], tasks["colour"]
    for i in range(4):
        truth = f"{colour_task.classes[colour_task.targets[i]]}_{shape_task.classes[shape_task.targets[i]]}"
        f = samples / f"heldout_{i}_{truth}.png"
        shape_task.images[i].save(f)
        files.append(f)
    clf = ZeroShotClassifier.load(bundle)
    examples = [r.to_dict() for r in clf.classify(files, top_k=3)]

    # 5. a short bench of what was built, against torch eager fp32 in the same run
    click.echo("[5/5] benchmarking the image encoder (short run; see `edgeclip bench` for more) ...")
    report = run_bench(
        BenchConfig(bundle=bundle, encoders=["image"], batch_sizes=[1], min_time_s=1.5, checkpoint=ckpt,
                    eval_data="builtin:shapes", eval_size=cfg.eval_size, end_to_end=True),
        log=lambda _: None,
    )
    write_outputs(report, str(root / "bench.json"), str(root / "bench.md"), None, None)

    summary = {
        "model": QUICKSTART_MODEL,
        "total_seconds": round(time.perf_counter() - started, 1),
        "conditions": _conditions(),
        "train": {k: v for k, v in asdict(result).items() if k != "zero_shot"},
        "zero_shot_heldout": {
            attr: {
                "top1_runtime": runtime_acc[attr],
                "top1_torch": result.zero_shot.get(attr),
                "chance": round(1 / len(tasks[attr].classes), 4),
                "images": len(tasks[attr].targets),
            }
            for attr in ("shape", "colour")
        },
        "export_seconds": round(export_s, 2),
        "artifacts": {a.key: a.validation for a in exported.artifacts},
        "examples": examples,
        "classified_with": f"{clf.image.artifact.key} on {clf.backend_name} ({clf.image.reason})",
        "bench": [
            {k: r.get(k) for k in ("key", "median_ms", "p90_ms", "speedup_vs_baseline", "top1", "cosine_min")}
            for r in report["rows"]
        ],
        "paths": {"checkpoint": str(ckpt), "bundle": str(bundle), "samples": str(samples),
                  "train_log": str(ckpt / "train_log.jsonl"), "bench": str(root / "bench.md"),
                  "summary": str(root / "quickstart.json")},
    }
    write_json(root / "quickstart.json", summary)
    return summary


def _conditions() -> dict[str, Any]:
    """What the figures depend on: the machine, threads, torch; weights are trained here from
    random init on the generated builtin:shapes data."""
    import platform

    import torch

    from edgeclip.bench.machine import machine_info

    m = machine_info(threads=torch.get_num_threads())
    return {"cpu": m.get("cpu"), "cores": m.get("cores"), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "weights": "random init, trained by this run", "data": "builtin:shapes (generated)"}


def _print_summary(s: dict[str, Any]) -> None:
    t = s["train"]
    click.echo("")
    click.echo(f"trained {s['model']}: {t['steps']} steps, {t['samples']} samples in {t['seconds']:.0f} s "
               f"({t['samples_per_s']:.0f} samples/s); quickstart total {s['total_seconds']:.0f} s")
    for attr, z in s["zero_shot_heldout"].items():
        click.echo(f"zero-shot {attr:<6} top-1 {z['top1_runtime']:.1%} (torch {z['top1_torch']:.1%}, "
                   f"chance {z['chance']:.1%}) on {z['images']} held-out images")
    click.echo(f"classified with {s['classified_with']}")
    for ex in s["examples"]:
        top = ex["predictions"][0] if "predictions" in ex else {"label": "error", "probability": 0.0}
        click.echo(f"  {Path(ex['image']).name}: {top['label']} ({top['probability']:.2f})")
    for b in s["bench"]:
        if b["key"].endswith("/model"):
            speed = f"  {b['speedup_vs_baseline']:.1f}x torch" if b.get("speedup_vs_baseline") else ""
            click.echo(f"  bench {b['key']:<34} {b['median_ms']:7.2f} ms{speed}")
    click.echo("")
    for name, path in s["paths"].items():
        click.echo(f"{name:<11} {path}")
    click.echo(json.dumps({k: v["top1_runtime"] for k, v in s["zero_shot_heldout"].items()}))
