"""The native FastViT MCi towers (MobileCLIP) and the bidirectional text tower option."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from edgeclip.errors import ConfigError
from edgeclip.model.clip import CLIP, create_model
from edgeclip.model.config import ModelConfig, get_config, list_models
from edgeclip.model.fastvit import FastViT
from edgeclip.model.fastvit_config import FastViTConfig

# state-dict sizes of open_clip 3.3 + timm 1.0.31 `create_model(name)` (image tensors, other tensors,
# number of tensors; BatchNorm step counters included), measured in the open_clip venv
OPEN_CLIP_SIZES = {
    "MobileCLIP2-S0": (11457778, 63428097, 934),
    "MobileCLIP-S1": (21631184, 63428097, 1586),
    "MobileCLIP-S2": (35939940, 63428097, 1722),
    "MobileCLIP2-S2": (35939940, 63428097, 1722),
    "MobileCLIP2-S3": (125401370, 123650305, 1681),
    "MobileCLIP2-S4": (322013916, 123650305, 1715),
}


@pytest.mark.parametrize("name", sorted(OPEN_CLIP_SIZES))
def test_registered_configs_have_open_clips_tensors(name: str) -> None:
    with torch.device("meta"):
        state = create_model(name).state_dict()
    image = sum(t.numel() for k, t in state.items() if k.startswith("visual."))
    other = sum(t.numel() for k, t in state.items() if not k.startswith("visual."))
    assert (image, other, len(state)) == OPEN_CLIP_SIZES[name]


def test_mobileclip_names_are_registered() -> None:
    assert set(OPEN_CLIP_SIZES) | {"edge-mci", "test-tiny-mci"} <= set(list_models())


@pytest.mark.parametrize("name", ["test-tiny-mci", "edge-mci"])
def test_small_towers_embed(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    s = model.cfg.vision_cfg.image_size
    with torch.no_grad():
        img, txt, _ = model(torch.randn(3, 3, s, s), torch.randint(1, 400, (3, model.cfg.text_cfg.context_length)))
    assert isinstance(model.visual, FastViT)
    assert img.shape == (3, model.cfg.embed_dim) == txt.shape
    assert torch.isfinite(img).all() and torch.allclose(img.norm(dim=-1), torch.ones(3))


def test_config_round_trip_and_other_configs_unchanged() -> None:
    cfg = get_config("MobileCLIP2-S3")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["vision_cfg"]["fastvit"]["attention_norm"] == "layernorm"
    vit = get_config("ViT-B-32").to_dict()
    assert "fastvit" not in vit["vision_cfg"] and "no_causal_mask" not in vit["text_cfg"]


@pytest.mark.parametrize("change", [dict(mixers=("repmixer", "conv")), dict(widths=(16,)),
                                    dict(attention_norm="groupnorm"), dict(widths=(16, 40))])
def test_bad_fastvit_config_is_refused(change: dict[str, object]) -> None:
    f = get_config("test-tiny-mci").vision_cfg.fastvit
    assert f is not None
    with pytest.raises(ConfigError):
        dataclasses.replace(f, **change)  # type: ignore[arg-type]


def test_image_size_must_fit_the_stride() -> None:
    d = get_config("test-tiny-mci").to_dict()
    d["vision_cfg"]["image_size"] = 36  # stride 8
    with pytest.raises(ConfigError, match="stride"):
        ModelConfig.from_dict(d)


def test_fastvit_stride_matches_the_output_grid() -> None:
    f = FastViTConfig(layers=(1, 1, 1), widths=(8, 16, 32), mixers=("repmixer",) * 3, se_downsample=(False,) * 3)
    tower = FastViT(dataclasses.replace(get_config("test-tiny-mci").vision_cfg, image_size=64, fastvit=f), 8)
    assert tower.stages(tower.stem(torch.zeros(1, 3, 64, 64))).shape[-1] == 64 // f.stride


def _pad_sensitivity(no_causal_mask: bool) -> float:
    cfg = get_config("test-tiny-mci")
    cfg = dataclasses.replace(cfg, text_cfg=dataclasses.replace(cfg.text_cfg, no_causal_mask=no_causal_mask))
    torch.manual_seed(0)
    model = CLIP(cfg).eval()
    ids = torch.zeros(1, 16, dtype=torch.long)
    ids[0, :4] = torch.tensor([300, 5, 6, 511])  # EOT (the highest id) at 3, then padding
    other = ids.clone()
    other[0, 10] = 7  # a token after EOT: only a bidirectional tower sees it
    with torch.no_grad():
        return float((model.encode_text(ids) - model.encode_text(other)).abs().max())


def test_no_causal_mask_attends_to_later_tokens() -> None:
    assert _pad_sensitivity(no_causal_mask=False) == 0.0
    assert _pad_sensitivity(no_causal_mask=True) > 1e-4


def test_trains_on_channels_last_images() -> None:
    """Decoded image batches arrive channels-last; the stem's strided 1x1 branch once crashed on them."""
    model = create_model("test-tiny-mci").train()
    for seed in range(3):
        pixels = torch.randn(4, 128, 128, 3, generator=torch.Generator().manual_seed(seed)).permute(0, 3, 1, 2)
        model.encode_image(pixels).square().sum().backward()
    grad = model.visual.stem[0].conv_scale.conv.weight.grad  # type: ignore[union-attr]
    assert grad is not None and grad.abs().sum() > 0
