"""Parity of edgeclip's native MobileCLIP / MobileCLIP2 with open_clip + timm, random init, both forms.

    .venv/bin/python benchmarks/mobileclip_parity.py [--ocenv /tmp/ocenv] [--models MobileCLIP2-S0 ...]

Worker (open_clip venv, see open_clip_peer.py): builds each model with a fixed seed, perturbs every
tensor (BatchNorm statistics and layer scales too, so that every branch matters), saves the state
dict as safetensors (open_clip's names), and writes open_clip's embeddings for fixed pixels and
token ids, and for FastViT towers also after timm's `reparameterize_model`. Driver (here):
`edgeclip import`s each file, embeds the same inputs in the training form and (FastViT) after
`edgeclip.model.reparameterize`, and writes benchmarks/results/mobileclip_parity.json.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from open_clip_peer import image_size, max_abs, models_main, perturbed

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "mobileclip_parity.json"
TEXTS = ["a photo of a dog.", "a diagram of three things", "word " * 100]
# every MobileCLIP / MobileCLIP2 model open_clip 3.3 lists
MODELS = ["MobileCLIP2-S0", "MobileCLIP-S1", "MobileCLIP-S2", "MobileCLIP2-S2", "MobileCLIP2-S3", "MobileCLIP2-S4",
          "MobileCLIP-B", "MobileCLIP2-B", "MobileCLIP2-L-14"]
REPARAMETERIZED = "reparameterized_image_max_abs_vs_timm_reparameterized"


def worker(out: Path, models: list[str]) -> None:
    """Runs inside the open_clip venv."""
    import copy
    import json

    import numpy as np
    import open_clip
    import timm
    import torch
    from safetensors.torch import save_file
    from timm.utils.model import reparameterize_model

    ids = open_clip.tokenize(TEXTS)
    for i, name in enumerate(models):
        model = perturbed(lambda name=name: open_clip.create_model(name, pretrained=None), seed=i)
        size = image_size(model)
        pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(10 + i))
        refs: dict[str, Any] = {}
        with torch.no_grad():
            refs["img"] = model.encode_image(pixels, normalize=True).numpy()
            refs["txt"] = model.encode_text(ids, normalize=True).numpy()
            if "stem.0.conv_kxk.0.conv.weight" in dict(model.visual.trunk.named_parameters()):
                fused = reparameterize_model(copy.deepcopy(model))
                refs["img_rep"] = fused.encode_image(pixels, normalize=True).numpy()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"{name}.safetensors"))
        np.savez(out / f"{name}.npz", pixels=pixels.numpy(), ids=ids.numpy(), **refs,
                 logit_scale=model.logit_scale.exp().item())
        del model
        print(f"worker: {name} done", flush=True)
    peer = {"open_clip": open_clip.__version__, "timm": timm.__version__, "torch": torch.__version__}
    (out / "worker.json").write_text(json.dumps(peer))


def compare(work: Path, models: list[str]) -> dict[str, Any]:
    import numpy as np
    import torch

    from edgeclip.model.checkpoint import load_checkpoint
    from edgeclip.model.importer import import_weights
    from edgeclip.model.reparameterize import reparameterize

    results: dict[str, Any] = {}
    for name in models:
        ref = np.load(work / f"{name}.npz")
        t0 = time.perf_counter()
        result = import_weights(work / f"{name}.safetensors", work / f"ckpt-{name}")
        seconds = time.perf_counter() - t0
        model, _ = load_checkpoint(result.path)
        pixels, ids = torch.from_numpy(ref["pixels"]), torch.from_numpy(ref["ids"])
        with torch.no_grad():
            img, txt, scale = model(pixels, ids)
            case: dict[str, Any] = {
                "edgeclip_config": result.config.name, "activation": result.activation,
                "text_no_causal_mask": result.config.text_cfg.no_causal_mask,
                "image_max_abs": max_abs(img, ref["img"]), "text_max_abs": max_abs(txt, ref["txt"]),
                "logit_scale_abs": abs(float(scale) - float(ref["logit_scale"])), "import_seconds": round(seconds, 2),
            }
            if "img_rep" in ref:  # FastViT: the inference form too
                rep = torch.nn.functional.normalize(reparameterize(model).encode_image(pixels), dim=-1)  # type: ignore[arg-type]
                case[REPARAMETERIZED] = max_abs(rep, ref["img_rep"])
                case["reparameterized_vs_training_form_max_abs"] = max_abs(rep, img)
        results[name] = case
        del model
        print(f"{name}: {case}", flush=True)
    return results


def main() -> None:
    models_main(__file__, __doc__, MODELS, worker, compare, RESULT,
                "edgeclip import of random-init open_clip MobileCLIP models vs open_clip's fp32 embeddings "
                "(L2-normalised, batch 2 of noise at the model's image size, 3 texts), training form and, for "
                "FastViT towers, reparameterized", ("image_max_abs", "text_max_abs", REPARAMETERIZED))


if __name__ == "__main__":
    main()
