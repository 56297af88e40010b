"""Regenerate docs/bench-*.{md,png,json}: `edgeclip bench` on the quickstart bundle and on a ViT-B-32 bundle.

    .venv/bin/python benchmarks/bench_docs.py [--work benchmarks/work] [--threads 2] [--quick] [--docs DIR]

Builds what is missing under --work (kept between runs, git-ignored):
- quickstart/: `edgeclip quickstart` (trained edge-tiny + bundle; its summary is copied to
  benchmarks/results/quickstart.json), plus guarded INT8 ONNX Runtime and OpenVINO artifacts
  calibrated on builtin:shapes;
- vit-b-32/: a random-init ViT-B-32 checkpoint (OpenAI tokenizer; no pretrained weights can be
  downloaded here) exported to ONNX and OpenVINO, fp32 and guarded INT8.
Then runs `edgeclip bench` with the torch eager fp32 baseline interleaved, writing the tables and plots:
end-to-end rows on model-size and camera-size JPEGs (1280x720, 4032x3024), what ran each row and its
peak RSS (a fresh process per row) and, for ViT-B-32, the labels table (1,000 classes x 7 templates
through every text artifact). --quick checks that it all runs (short timing, 20 classes); write its
tables outside docs/ (--docs), since figures measured that way are not for publishing.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EDGECLIP = [sys.executable, "-m", "edgeclip"]


def run(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(list(args), check=True, cwd=ROOT)


def shapes_labels(work: Path) -> tuple[Path, Path]:
    from edgeclip.data.shapes import SHAPES, ZERO_SHOT_TEMPLATES

    classes, templates = work / "shapes.txt", work / "shape_templates.txt"
    classes.write_text("\n".join(SHAPES) + "\n")
    templates.write_text("\n".join(ZERO_SHOT_TEMPLATES["shape"]) + "\n")
    return classes, templates


def quickstart_bundle(work: Path) -> tuple[Path, Path]:
    qs = work / "quickstart"
    ckpt, bundle = qs / "checkpoint", qs / "shapes.edgeclip"
    if not (bundle / "manifest.json").exists():
        run(*EDGECLIP, "quickstart", "--out", str(qs), "--no-progress")
        # the README's quickstart figures come from this file (wall time, accuracy, conditions)
        shutil.copyfile(qs / "quickstart.json", ROOT / "benchmarks" / "results" / "quickstart.json")
    classes, templates = shapes_labels(work)
    from edgeclip.bundle import Bundle

    if not Bundle.open(bundle).manifest.find("image", "onnx", "int8"):
        run(*EDGECLIP, "export", str(ckpt), "--target", "onnx,openvino", "--precision", "int8",
            "--calib", "builtin:shapes", "--labels", str(classes), "--templates", str(templates),
            "--out", str(bundle))
    return ckpt, bundle


def vit_b32_bundle(work: Path) -> tuple[Path, Path]:
    d = work / "vit-b-32"
    ckpt, bundle = d / "checkpoint", d / "vit-b-32.edgeclip"
    if not (ckpt / "config.json").exists():
        import torch

        from edgeclip.bundle import PreprocessConfig
        from edgeclip.model.checkpoint import save_checkpoint
        from edgeclip.model.clip import create_model
        from edgeclip.model.openai_tokenizer import openai_clip_tokenizer

        torch.manual_seed(0)
        tok, tok_cfg = openai_clip_tokenizer()
        d.mkdir(parents=True, exist_ok=True)
        tok.save(str(d / "tokenizer.json"))
        save_checkpoint(ckpt, create_model("ViT-B-32").eval(), d / "tokenizer.json", PreprocessConfig(image_size=224),
                        tok_cfg, meta={"weights": "random init (seed 0)"})
    classes, templates = shapes_labels(work)
    if not (bundle / "manifest.json").exists():
        run(*EDGECLIP, "export", str(ckpt), "--target", "onnx,openvino", "--precision", "fp32",
            "--labels", str(classes), "--templates", str(templates), "--out", str(bundle))
    from edgeclip.bundle import Bundle

    if not Bundle.open(bundle).manifest.find("image", "onnx", "int8"):
        run(*EDGECLIP, "export", str(ckpt), "--target", "onnx,openvino", "--precision", "int8",
            "--calib", "builtin:shapes", "--labels", str(classes), "--templates", str(templates),
            "--out", str(bundle))
    if importlib.util.find_spec("litert_torch") and not Bundle.open(bundle).manifest.find("image", "litert"):
        # LiteRT rows beside onnxruntime and OpenVINO in the same interleaved run (the export side is the
        # opt-in [litert-export] extra; without it the page has no LiteRT rows)
        try:
            run(*EDGECLIP, "export", str(ckpt), "--target", "litert", "--precision", "fp32,int8",
                "--calib", "builtin:shapes", "--labels", str(classes), "--templates", str(templates),
                "--out", str(bundle))
        except subprocess.CalledProcessError as e:  # the page is still worth having without them
            print(f"no LiteRT rows: the export failed ({e})", flush=True)
    return ckpt, bundle


def bench_args(name: str, quick: bool, label_classes: int) -> list[str]:
    """The bench options of one docs page: its encoders, eval set, labels table and timing budget."""
    args = ["--encoders", "image", "--eval", "builtin:shapes"] if name == "quickstart" else [
        "--encoders", "image,text", "--label-classes", "20" if quick else str(label_classes), "--label-templates", "7"]
    return args + (["--min-time", "0.3", "--warmup", "1"] if quick else ["--min-time", "3"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "work"))
    ap.add_argument("--threads", default="2")
    ap.add_argument("--only", default="quickstart,vit-b-32")
    ap.add_argument("--quick", action="store_true", help="check it runs: short timing, a small labels table")
    ap.add_argument("--docs", default=str(ROOT / "docs"), help="where the tables and plots go")
    ap.add_argument("--label-classes", type=int, default=1000,
                    help="labels table size (x 7 templates) through every text artifact and hint")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    for name in args.only.split(","):
        ckpt, bundle = quickstart_bundle(work) if name == "quickstart" else vit_b32_bundle(work)
        run(*EDGECLIP, "bench", str(bundle), "--checkpoint", str(ckpt), "--batch-sizes", "1,8",
            "--threads", args.threads, *bench_args(name, args.quick, args.label_classes),
            "--json", str(docs / f"bench-{name}.json"), "--markdown", str(docs / f"bench-{name}.md"),
            "--plot", str(docs / f"bench-{name}.png"))


if __name__ == "__main__":
    main()
