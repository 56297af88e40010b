"""Parity of `edgeclip import` with open_clip itself, on random-init open_clip models (ViT and RN50).

open_clip cannot run beside edgeclip's torch (it needs torchvision), so it runs in its own venv
(created on first use, reused after: torch==2.14.1 torchvision==0.29.1 open_clip_torch, ~5.6 GB):

    .venv/bin/python benchmarks/open_clip_parity.py [--ocenv /tmp/ocenv]

Worker (in the open_clip venv): builds each model, perturbs every tensor (LayerNorm, BatchNorm
statistics too), saves its weights in a published layout, tokenizes fixed texts with open_clip's
tokenizer and writes open_clip's embeddings. Driver (here): `edgeclip import`s each file, embeds
the same pixels and texts, compares ids and embeddings, and writes
benchmarks/results/open_clip_parity.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "open_clip_parity.json"
OCENV_PACKAGES = ["torch==2.14.1", "torchvision==0.29.1", "open_clip_torch", "safetensors"]
TEXTS = ["a photo of a dog.", "A Diagram; of 3 “quoted” things!", "ﬁne café — naïve 😀", "word " * 100]

# name: (open_clip model name or custom config, file layout, edgeclip --model or --activation: open_clip's
# state dicts do not record the activation)
CASES: dict[str, dict[str, Any]] = {
    "ViT-B-32-quickgelu (full size), OpenAI .pt": dict(
        model="ViT-B-32-quickgelu", layout="openai_pt", edgeclip_model="ViT-B-32-quickgelu"),
    "RN50-quickgelu (full size), open_clip .safetensors + --model": dict(
        model="RN50-quickgelu", layout="open_clip_safetensors", edgeclip_model="RN50-quickgelu"),
    "small ViT GELU p16 96px, open_clip training checkpoint (module. prefix)": dict(
        custom=dict(embed_dim=64, quick_gelu=False,
                    vision_cfg=dict(image_size=96, patch_size=16, width=128, layers=3, head_width=64),
                    text_cfg=dict(context_length=77, vocab_size=49408, width=128, heads=2, layers=2)),
        layout="open_clip_checkpoint", activation="gelu"),
    "small ModifiedResNet [1,2,2,1] w16 QuickGELU, OpenAI .pt": dict(
        custom=dict(embed_dim=48, quick_gelu=True, vision_cfg=dict(image_size=96, layers=[1, 2, 2, 1], width=16),
                    text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=2)),
        layout="openai_pt", activation="quick_gelu"),
}


def worker(out: Path) -> None:
    """Runs inside the open_clip venv."""
    import numpy as np
    import open_clip
    import torch
    from safetensors.torch import save_file

    ids = open_clip.tokenize(TEXTS)
    report: dict[str, Any] = {"open_clip": open_clip.__version__, "torch": torch.__version__, "cases": {}}
    for i, case in enumerate(CASES.values()):
        torch.manual_seed(i)
        if "model" in case:
            model = open_clip.create_model(case["model"], pretrained=None)
        else:
            model = open_clip.CLIP(**case["custom"])
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
            for bname, buf in model.named_buffers():
                if bname.endswith("running_var"):
                    buf.uniform_(0.5, 2.0)
                elif bname.endswith("running_mean"):
                    buf.normal_(0, 0.1)
        model.eval()
        size = model.visual.image_size
        size = size[0] if isinstance(size, tuple) else size
        pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(10 + i))
        with torch.no_grad():
            img = model.encode_image(pixels, normalize=True)
            txt = model.encode_text(ids, normalize=True)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        stem = out / f"case{i}"
        if case["layout"] == "openai_pt":
            torch.save(state, f"{stem}.pt")
        elif case["layout"] == "open_clip_safetensors":
            stem.mkdir()
            save_file(state, str(stem / "open_clip_model.safetensors"))
        else:
            torch.save({"epoch": 1, "name": "parity", "state_dict": {f"module.{k}": v for k, v in state.items()}},
                       f"{stem}.pt")
        np.savez(f"{stem}.npz", pixels=pixels.numpy(), ids=ids.numpy(), img=img.numpy(), txt=txt.numpy(),
                 logit_scale=model.logit_scale.exp().item())
    (out / "worker.json").write_text(json.dumps(report))


def ensure_ocenv(ocenv: Path) -> Path:
    python = ocenv / "bin" / "python"
    check = [str(python), "-c", "import open_clip, safetensors"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(ocenv)], check=True)
    subprocess.run([str(ocenv / "bin" / "pip"), "install", "-q", *OCENV_PACKAGES], check=True)
    return python


def compare(work: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    from edgeclip.model.checkpoint import load_checkpoint
    from edgeclip.model.importer import import_weights
    from edgeclip.runtime.tokenizer import TextTokenizer

    results: dict[str, Any] = {}
    for i, (name, case) in enumerate(CASES.items()):
        ref = np.load(work / f"case{i}.npz")
        src = work / f"case{i}" / "open_clip_model.safetensors" if case["layout"] == "open_clip_safetensors" \
            else work / f"case{i}.pt"
        t0 = time.perf_counter()
        result = import_weights(src, work / f"ckpt{i}", model=case.get("edgeclip_model"),
                                activation=case.get("activation"))
        seconds = time.perf_counter() - t0
        model, info = load_checkpoint(result.path)
        ids = TextTokenizer(info.tokenizer_path, info.tokenizer)(TEXTS)
        with torch.no_grad():
            img, txt, scale = model(torch.from_numpy(ref["pixels"]), torch.from_numpy(ids))
        results[name] = {
            "edgeclip_config": result.config.name, "activation": result.activation, "source_kind": result.source_kind,
            "token_ids_identical": bool(np.array_equal(ids, ref["ids"])),
            "image_max_abs": float(np.abs(img.numpy() - ref["img"]).max()),
            "text_max_abs": float(np.abs(txt.numpy() - ref["txt"]).max()),
            "logit_scale_abs": abs(float(scale) - float(ref["logit_scale"])),
            "import_seconds": round(seconds, 2),
        }
        print(f"{name}: {results[name]}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ocenv", default="/tmp/ocenv", help="venv for open_clip (created if missing)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker))
        return
    sys.path.insert(0, str(ROOT))
    python = ensure_ocenv(Path(args.ocenv))
    with tempfile.TemporaryDirectory(prefix="oc-parity-") as tmp:
        work = Path(tmp)
        subprocess.run([str(python), __file__, "--worker", str(work)], check=True)
        peer = json.loads((work / "worker.json").read_text())
        cases = compare(work)
    worst = max(max(c["image_max_abs"], c["text_max_abs"]) for c in cases.values())
    report = {
        "what": "edgeclip import of random-init open_clip models vs open_clip's own fp32 embeddings (L2-normalised)",
        "peer": peer, "machine": platform.machine(), "cases": cases, "worst_max_abs": worst,
        "all_token_ids_identical": all(c["token_ids_identical"] for c in cases.values()),
        "passed": worst < 1e-5 and all(c["token_ids_identical"] for c in cases.values()),
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"worst max abs diff {worst:.2e}; wrote {RESULT}")


if __name__ == "__main__":
    main()
