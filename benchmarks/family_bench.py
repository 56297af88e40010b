"""`edgeclip bench` pages for the SigLIP and MobileCLIP families: random-init ViT-B-16-SigLIP and
MobileCLIP2-S0 / MobileCLIP2-S2, exported to ONNX and OpenVINO (fp32 and guarded INT8), benched
against torch eager fp32 in one interleaved run per model.

    .venv/bin/python benchmarks/family_bench.py [--only siglip-b-16,mobileclip2-s0,mobileclip2-s2] [--quick]

No pretrained weights can be downloaded here, so the weights are random (seed 0):
- ViT-B-16-SigLIP: a transformers `SiglipModel` of B/16 shape (224 px, text 64 tokens) with a
  SentencePiece-Unigram tokenizer learnt here (180 tokens instead of 32,000: the text tower's
  compute is the same, its token table is 24.6M parameters smaller), imported with `edgeclip import`;
- MobileCLIP2-S0 / -S2: edgeclip's native MCi towers (256 px) with OpenAI's tokenizer, the
  preprocessing of Apple's released weights; exports use the reparameterized form.
Writes docs/bench-<name>.{md,json} (or --docs DIR). --quick: a tiny SigLIP, short
timing, written outside docs/ — it checks the script runs, its figures are not for publishing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EDGECLIP = [sys.executable, "-m", "edgeclip"]
# name -> edgeclip config; --quick swaps SigLIP B/16 for a tiny shape (the MCi towers are small already)
MODELS = {"siglip-b-16": "ViT-B-16-SigLIP", "mobileclip2-s0": "MobileCLIP2-S0", "mobileclip2-s2": "MobileCLIP2-S2"}
QUICK = {"siglip-b-16": "p16-w48-3heads", "mobileclip2-s0": "MobileCLIP2-S0", "mobileclip2-s2": "MobileCLIP2-S2"}
# vision (width, layers, heads, patch, image, mlp), text (width, layers, heads, mlp, context)
SIGLIP_B16 = dict(v=(768, 12, 12, 16, 224, 3072), t=(768, 12, 12, 3072, 64))


def run(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(list(args), check=True, cwd=ROOT)


def siglip_checkpoint(d: Path, quick: bool) -> Path:
    sys.path.insert(0, str(ROOT))
    import transformers

    from tests.model.siglip_fixtures import CONFIGS, make_hf_siglip, siglip_unigram, write_siglip_tokenizer

    shape = CONFIGS[QUICK["siglip-b-16"]] if quick else SIGLIP_B16
    hf = d / "hf"
    make_hf_siglip(shape["v"], shape["t"], siglip_unigram().get_vocab_size(), seed=0).save_pretrained(str(hf))
    write_siglip_tokenizer(hf)
    size = shape["v"][4]
    transformers.SiglipImageProcessorPil(size={"height": size, "width": size}).save_pretrained(str(hf))
    run(*EDGECLIP, "import", str(hf), "--out", str(d / "checkpoint"))
    return d / "checkpoint"


def mobileclip_checkpoint(d: Path, model: str) -> Path:
    import torch

    from edgeclip.bundle import PreprocessConfig
    from edgeclip.model.checkpoint import save_checkpoint
    from edgeclip.model.clip import create_model
    from edgeclip.model.config import get_config
    from edgeclip.model.mobileclip_keys import release_preprocess
    from edgeclip.model.openai_tokenizer import openai_clip_tokenizer

    torch.manual_seed(0)
    tok, tok_cfg = openai_clip_tokenizer()
    tok.save(str(d / "tokenizer.json"))
    vision = get_config(model).vision_cfg
    clip = create_model(model).eval()
    pre = release_preprocess(vision) or PreprocessConfig(image_size=vision.image_size)
    save_checkpoint(d / "checkpoint", clip, d / "tokenizer.json", pre, tok_cfg,
                    meta={"weights": "random init (seed 0)"})
    return d / "checkpoint"


def bundle_for(name: str, work: Path, quick: bool, precision: str) -> tuple[Path, Path]:
    d = work / name
    ckpt, bundle = d / "checkpoint", d / f"{name}.edgeclip"
    if not (ckpt / "config.json").exists():
        d.mkdir(parents=True, exist_ok=True)
        model = QUICK[name] if quick else MODELS[name]
        ckpt = siglip_checkpoint(d, quick) if name.startswith("siglip") else mobileclip_checkpoint(d, model)
    if not (bundle / "manifest.json").exists():
        classes, templates = work / "shapes.txt", work / "shape_templates.txt"
        from edgeclip.data.shapes import SHAPES, ZERO_SHOT_TEMPLATES

        classes.write_text("\n".join(SHAPES) + "\n")
        templates.write_text("\n".join(ZERO_SHOT_TEMPLATES["shape"]) + "\n")
        run(*EDGECLIP, "export", str(ckpt), "--target", "onnx,openvino", "--precision", precision,
            "--calib", "builtin:shapes", "--labels", str(classes), "--templates", str(templates),
            "--out", str(bundle))
    return ckpt, bundle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "work" / "families"))
    ap.add_argument("--threads", default="2")
    ap.add_argument("--only", default=",".join(MODELS))
    ap.add_argument("--quick", action="store_true", help="tiny configs, short timing (checks the script runs)")
    ap.add_argument("--docs", default=str(ROOT / "docs"), help="where the tables go")
    ap.add_argument("--precision", default="fp32,int8",
                    help="export precisions (int8 runs the guard, whose sensitivity pass on a random B/16 is long)")
    args = ap.parse_args()
    work = Path(args.work) / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    timing = ["--min-time", "0.3", "--warmup", "1"] if args.quick else ["--min-time", "3"]
    for name in args.only.split(","):
        ckpt, bundle = bundle_for(name, work, args.quick, args.precision)
        run(*EDGECLIP, "bench", str(bundle), "--checkpoint", str(ckpt), "--batch-sizes", "1", "--threads", args.threads,
            "--encoders", "image,text", "--camera-sizes", "", "--label-classes", "0", *timing,
            "--json", str(docs / f"bench-{name}.json"), "--markdown", str(docs / f"bench-{name}.md"))


if __name__ == "__main__":
    main()
