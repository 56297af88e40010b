"""Importing MobileCLIP-B / MobileCLIP2-B (timm `vit_base_mci_224`) and MobileCLIP2-L-14
(`vit_large_patch14_clip_224`): open_clip's timm ViT names onto edgeclip's OpenAI-named ViT.

The timm-named state dicts here are written from edgeclip's own tiny towers by the inverse renaming
below (timm's names as open_clip 3.3 saves them); parity with timm itself is the slow test at the
end and benchmarks/mobileclip_parity.py."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.model.clip import CLIP
from edgeclip.model.config import ModelConfig, TextConfig, VisionConfig, get_config
from edgeclip.model.importer import import_weights, infer_config
from edgeclip.model.sources import Source, read_source

# the vision towers: MobileCLIP-B's and MobileCLIP2-L-14's shapes at width 64 (heads: width // 64, as imported)
MCI_B = VisionConfig(image_size=64, patch_size=16, width=64, layers=2, heads=1, stem="mci", stem_channels=(16, 16),
                     pos_embed_class=False, ln_pre=False, ln_eps=1e-6, proj_bias=True)
CLIP_L = VisionConfig(image_size=56, patch_size=14, width=64, layers=2, heads=1, proj_bias=True)
TEXT = TextConfig(context_length=77, vocab_size=49408, width=64, heads=1, layers=2)
OPENAI_TO_TIMM = [(r"^conv1\.", "patch_embed.proj."), (r"^ln_pre\.", "norm_pre."), (r"^ln_post\.", "norm."),
                  (r"^transformer\.resblocks\.", "blocks."), (r"\.ln_1\.", ".norm1."), (r"\.ln_2\.", ".norm2."),
                  (r"in_proj_weight", "qkv.weight"), (r"in_proj_bias", "qkv.bias"), (r"out_proj", "proj"),
                  (r"c_fc", "fc1"), (r"c_proj", "fc2")]


def _model(vision: VisionConfig, causal: bool) -> CLIP:
    torch.manual_seed(0)
    model = CLIP(ModelConfig("t", 32, vision, dataclasses.replace(TEXT, no_causal_mask=not causal)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    return model.eval()


def _timm_visual(key: str, value: torch.Tensor, stem_layers: int) -> tuple[str, torch.Tensor]:
    if key in ("class_embedding", "positional_embedding"):
        return ("cls_token" if key == "class_embedding" else "pos_embed"), value.reshape(1, -1, value.shape[-1])
    if key in ("proj", "proj_bias"):
        return ("head.weight", value.t()) if key == "proj" else ("head.bias", value)
    if m := re.match(r"stem\.(\d+)\.(.*)", key):
        return f"patch_embed.backbone.{int(m[1]) // 3}.{'bn' if int(m[1]) % 3 else 'conv'}.{m[2]}", value
    if key.startswith("conv1.") and stem_layers:
        return f"patch_embed.backbone.{stem_layers}.conv.{key[len('conv1.'):]}", value
    for pattern, repl in OPENAI_TO_TIMM:
        key = re.sub(pattern, repl, key)
    return key, value


def open_clip_names(model: CLIP) -> dict[str, torch.Tensor]:
    """edgeclip names -> open_clip CustomTextCLIP names with a timm ViT under visual.trunk."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("visual."):
            k, v = _timm_visual(key[len("visual."):], value, len(model.cfg.vision_cfg.stem_channels))
            out["visual.trunk." + k] = v.contiguous()
        else:
            out[key if key == "logit_scale" else "text." + key] = value.contiguous()
    return out


@pytest.mark.parametrize(("vision", "causal", "mean"), [(MCI_B, True, 0.0), (CLIP_L, False, 0.48145466)],
                         ids=["vit_base_mci", "vit_clip"])
def test_timm_vit_layout_imports_exactly(tmp_path: Path, vision: VisionConfig, causal: bool, mean: float) -> None:
    model = _model(vision, causal)
    path = tmp_path / "open_clip_model.safetensors"
    save_file(open_clip_names(model), str(path))
    result = import_weights(path, tmp_path / "ckpt")
    # the text mask is not in the shapes: it follows open_clip's config for the image tower
    assert result.config.vision_cfg == vision and result.config.text_cfg.no_causal_mask == (not causal)
    loaded, info = load_checkpoint(result.path)
    assert info.preprocess.mean[0] == pytest.approx(mean)  # Apple's: [0, 1] pixels for B, OpenAI's for L-14
    pixels, ids = torch.randn(2, 3, vision.image_size, vision.image_size), torch.randint(1, 49000, (2, 77))
    with torch.no_grad():
        for a, b in zip(model(pixels, ids), loaded(pixels, ids), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["MobileCLIP-B", "MobileCLIP2-L-14"])
def test_full_size_layout_is_inferred_as_registered(name: str) -> None:
    with torch.device("meta"):
        model = CLIP(get_config(name))
    state = read_source_state(open_clip_names(model))
    source = Source(state, "open_clip", False, "test", no_causal_mask=get_config(name).text_cfg.no_causal_mask)
    cfg = infer_config(state, source)
    assert cfg.name == name and cfg.vision_cfg == get_config(name).vision_cfg


def read_source_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from edgeclip.model.mobileclip_keys import custom_text_to_native

    return custom_text_to_native(state, "test")[0]


def test_read_source_says_which_text_mask(tmp_path: Path) -> None:
    for vision, causal in ((MCI_B, True), (CLIP_L, False)):
        path = tmp_path / f"{vision.stem}.safetensors"
        save_file(open_clip_names(_model(vision, causal)), str(path))
        assert read_source(path).no_causal_mask == (not causal)
