"""Parity of `edgeclip import` with open_clip itself, on random-init open_clip models (ViT and RN50).

open_clip runs in its own venv (see open_clip_peer.py):

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
import sys
import time
from pathlib import Path
from typing import Any

from open_clip_peer import ensure_ocenv, image_size, max_abs, perturbed, run, write_report

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "open_clip_parity.json"
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
    for i, case in enumerate(CASES.values()):
        model = perturbed(lambda case=case: open_clip.create_model(case["model"], pretrained=None) if "model" in case
                          else open_clip.CLIP(**case["custom"]), seed=i)
        size = image_size(model)
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
    (out / "worker.json").write_text(json.dumps({"open_clip": open_clip.__version__, "torch": torch.__version__}))


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
            "image_max_abs": max_abs(img, ref["img"]), "text_max_abs": max_abs(txt, ref["txt"]),
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
    peer, cases = run(__file__, ensure_ocenv(Path(args.ocenv)), [], compare)
    identical = all(c["token_ids_identical"] for c in cases.values())
    write_report(RESULT, "edgeclip import of random-init open_clip models vs open_clip's own fp32 embeddings "
                 "(L2-normalised)", peer, cases, ("image_max_abs", "text_max_abs"), all_token_ids_identical=identical)


if __name__ == "__main__":
    main()
