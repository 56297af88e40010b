"""Parity of `edgeclip import` of open_clip's SigLIP / SigLIP 2 checkpoints with open_clip + timm, random init.

    .venv/bin/python benchmarks/siglip_parity.py [--ocenv /tmp/ocenv] [--models ViT-B-16-SigLIP ...]

Worker (open_clip venv, see open_clip_peer.py): builds each model with a fixed seed, perturbs every
tensor (logit scale and bias too), saves its state dict as safetensors (open_clip's names) and
writes open_clip's embeddings for fixed pixels and token ids. Driver (here): puts a SigLIP
tokenizer.json beside each file (the import reads it from there, as open_clip's hub repositories
ship it; the ids compared are the worker's, so which tokenizer does not matter), `edgeclip import`s
it and compares embeddings, scale and bias. Writes benchmarks/results/siglip_parity.json.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from open_clip_peer import image_size, max_abs, models_main, perturbed

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "siglip_parity.json"
# exact-GELU image tower with SigLIP's text; SigLIP 2's text (tanh-GELU, Gemma vocabulary); a tanh-GELU image tower
MODELS = ["ViT-B-16-SigLIP", "ViT-B-16-SigLIP2", "ViT-B-32-SigLIP2-256"]


def worker(out: Path, models: list[str]) -> None:
    """Runs inside the open_clip venv."""
    import json

    import numpy as np
    import open_clip
    import timm
    import torch
    from safetensors.torch import save_file

    for i, name in enumerate(models):
        model = perturbed(lambda name=name: open_clip.create_model(name, pretrained=None), seed=i)
        with torch.no_grad():
            model.logit_scale.fill_(2.3)
            model.logit_bias.fill_(-7.5)
        size = image_size(model)
        gen = torch.Generator().manual_seed(10 + i)
        pixels = torch.randn(2, 3, size, size, generator=gen)
        ids = torch.randint(0, 180, (3, model.text.context_length), generator=gen)  # the driver's tokenizer's ids
        with torch.no_grad():
            img = model.encode_image(pixels, normalize=True).numpy()
            txt = model.encode_text(ids, normalize=True).numpy()
        (out / name).mkdir()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(out / name / "open_clip_model.safetensors"))
        np.savez(out / f"{name}.npz", pixels=pixels.numpy(), ids=ids.numpy(), img=img, txt=txt,
                 logit_scale=model.logit_scale.exp().item(), logit_bias=model.logit_bias.item())
        del model
        print(f"worker: {name} done", flush=True)
    peer = {"open_clip": open_clip.__version__, "timm": timm.__version__, "torch": torch.__version__}
    (out / "worker.json").write_text(json.dumps(peer))


def compare(work: Path, models: list[str]) -> dict[str, Any]:
    import numpy as np
    import torch

    from edgeclip.model.checkpoint import load_checkpoint
    from edgeclip.model.importer import import_weights
    from tests.model.siglip_fixtures import write_siglip_tokenizer

    results: dict[str, Any] = {}
    for name in models:
        ref = np.load(work / f"{name}.npz")
        write_siglip_tokenizer(work / name)
        t0 = time.perf_counter()
        result = import_weights(work / name / "open_clip_model.safetensors", work / f"ckpt-{name}")
        seconds = time.perf_counter() - t0
        model, _ = load_checkpoint(result.path)
        with torch.no_grad():
            img, txt, scale = model(torch.from_numpy(ref["pixels"]), torch.from_numpy(ref["ids"]))
        results[name] = {
            "edgeclip_config": result.config.name, "activation": result.activation,
            "image_max_abs": max_abs(img, ref["img"]), "text_max_abs": max_abs(txt, ref["txt"]),
            "logit_scale_abs": abs(float(scale) - float(ref["logit_scale"])),
            "logit_bias_abs": abs(float(model.logit_bias.detach().reshape(-1)[0]) - float(ref["logit_bias"])),
            "import_seconds": round(seconds, 2),
        }
        del model
        print(f"{name}: {results[name]}", flush=True)
    return results


def main() -> None:
    models_main(__file__, __doc__, MODELS, worker, compare, RESULT,
                "edgeclip import of random-init open_clip SigLIP / SigLIP 2 models vs open_clip's fp32 "
                "embeddings (L2-normalised, batch 2 of noise at the model's image size, 3 random id rows)",
                ("image_max_abs", "text_max_abs", "logit_scale_abs", "logit_bias_abs"))


if __name__ == "__main__":
    main()
