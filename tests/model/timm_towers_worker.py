"""Runs in the open_clip venv (timm, no edgeclip): tiny timm image towers of every layout edgeclip
imports, with every tensor perturbed, saved with their outputs for tests/model/test_timm_towers.py.

    python timm_towers_worker.py OUT_DIR

Layouts (timm's own constructors, shrunk): FastViT MCi0-like (BatchNorm before attention, stem scale
branch) and MCi3-like (LayerNorm2d, no stem scale branch), each also after timm's
`reparameterize_model`; `vit_base_mci_224`'s ConvStem ViT (MobileCLIP-B: no class position, no
pre-LN, head with bias); `vit_large_patch14_clip_224`'s pre-norm ViT (MobileCLIP2-L-14); and a SigLIP
tower (no class token, MAP head) as open_clip's ViT-*-SigLIP use. Also open_clip's own resampling of
a ViT's positional embeddings to other grids (`resize_pos_embed`, what loading at another image size does),
and timm's for a ViT whose class token has no position (`resample_abs_pos_embed`, no prefix tokens).
Whole open_clip `CLIP` models (OpenAI's architecture: a ViT with QuickGELU, a ModifiedResNet with
GELU) are saved as open_clip saves them, with both embeddings of open_clip's own tokenizer's ids.
"""

from __future__ import annotations

import copy
import json
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import open_clip
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, resize_pos_embed
from safetensors.torch import save_file
from timm.layers import LayerNorm2d, resample_abs_pos_embed
from timm.models.fastvit import FastVit, RepConditionalPosEnc
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer_hybrid import ConvStem, _create_vision_transformer_hybrid
from timm.utils.model import reparameterize_model

EMBED = 32
TEXTS = ["a photo of a dog.", "A DIAGRAM: three things!", "word " * 100]  # the last one is truncated


def fastvit(**kw: object) -> torch.nn.Module:
    return FastVit(layers=(1, 2, 1), embed_dims=(16, 32, 64), downsamples=(False, True, True),
                   se_downsamples=(False, True, True), token_mixers=("repmixer", "repmixer", "attention"),
                   pos_embs=(None, None, partial(RepConditionalPosEnc, spatial_shape=(7, 7))), lkc_use_act=True,
                   num_classes=EMBED, **kw)


def towers() -> dict[str, tuple[torch.nn.Module, int]]:
    stem = ConvStem(channels=(16, 16, 64), stride=(4, 2, 2), kernel_size=(4, 2, 2), padding=0, act_layer=torch.nn.GELU)
    return {
        "fastvit_mci0": (fastvit(mlp_ratios=(3, 3, 3)), 64),
        "fastvit_mci3": (fastvit(mlp_ratios=(4, 4, 4), norm_layer=partial(LayerNorm2d, eps=1e-5),
                                 stem_use_scale_branch=False), 64),
        "vit_mci": (_create_vision_transformer_hybrid(
            "vit_base_mci_224", backbone=stem, embed_args=dict(proj=False), img_size=64, embed_dim=64, depth=2,
            num_heads=1, no_embed_class=True, num_classes=EMBED), 64),
        "vit_clip": (VisionTransformer(img_size=56, patch_size=14, embed_dim=64, depth=2, num_heads=1, pre_norm=True,
                                       norm_layer=partial(torch.nn.LayerNorm, eps=1e-5), num_classes=EMBED), 56),
        "vit_siglip": (VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                                         class_token=False, global_pool="map", num_classes=0), 32),
    }


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every branch matters: BatchNorm statistics off identity, layer scales near 1 (not 1e-5)."""
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        p.add_(torch.randn_like(p) * (0.5 if name.endswith("gamma") else 0.05))
    for name, b in model.named_buffers():
        if name.endswith("running_var"):
            b.uniform_(0.5, 2.0)
        elif name.endswith("running_mean"):
            b.normal_(0, 0.2)
    return model.eval()


def resized(out: Path) -> None:
    """A 4x4-grid embedding (plus the class row) resampled by open_clip up to 6x6 and down to 3x3."""
    pos = torch.randn(1 + 4 * 4, 16, generator=torch.Generator().manual_seed(7))
    result = {"pos": pos}
    for grid in (6, 3):
        state = {"visual.positional_embedding": pos.clone()}
        resize_pos_embed(state, SimpleNamespace(visual=SimpleNamespace(grid_size=(grid, grid))))
        result[f"grid{grid}"] = state["visual.positional_embedding"]
        result[f"no_class_grid{grid}"] = resample_abs_pos_embed(pos[None, 1:], [grid, grid], num_prefix_tokens=0)[0]
    save_file(result, str(out / "resize.safetensors"))


@torch.no_grad()
def open_clip_models(out: Path) -> None:
    text = CLIPTextCfg(width=64, heads=1, layers=2)
    for i, (name, vision, quick) in enumerate([
        ("open_clip_vit", CLIPVisionCfg(layers=2, width=64, patch_size=8, image_size=32), True),
        ("open_clip_rn", CLIPVisionCfg(layers=(1, 1, 1, 1), width=16, image_size=64), False),
    ]):
        model = perturb(CLIP(EMBED, vision, text, quick_gelu=quick), 10 + i)
        pixels = torch.randn(2, 3, vision.image_size, vision.image_size, generator=torch.Generator().manual_seed(i))
        ids = open_clip.tokenize(TEXTS)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"{name}.safetensors"))
        save_file({"pixels": pixels, "ids": ids, "img": model.encode_image(pixels), "txt": model.encode_text(ids)},
                  str(out / f"{name}.outputs.safetensors"))


def norm_eps(model: torch.nn.Module) -> dict[str, float]:
    """Each normalisation layer's eps by module name: a wrong eps moves embeddings less than the
    parity bound on random weights, so it is compared as a fact."""
    return {name: float(m.eps) for name, m in model.named_modules()
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d))}


@torch.no_grad()
def main(out: Path) -> None:
    resized(out)
    open_clip_models(out)
    eps = {}
    for i, (name, (model, size)) in enumerate(towers().items()):
        perturb(model, i)
        pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(100 + i))
        outputs = {"pixels": pixels, "out": model(pixels)}
        if name.startswith("fastvit"):
            outputs["out_reparameterized"] = reparameterize_model(copy.deepcopy(model))(pixels)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"{name}.safetensors"))
        save_file(outputs, str(out / f"{name}.outputs.safetensors"))
        eps[name] = norm_eps(model)
    (out / "norm_eps.json").write_text(json.dumps(eps))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
