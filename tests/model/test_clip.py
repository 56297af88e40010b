from __future__ import annotations

import math

import pytest
import torch

from edgeclip.errors import ConfigError, UnknownNameError
from edgeclip.model.clip import CLIP, MASK_VALUE, ImageEncoder, TextEncoder, create_model
from edgeclip.model.config import ModelConfig, get_config, list_models


def test_registry_has_required_configs() -> None:
    names = list_models()
    for required in ("test-tiny", "edge-tiny", "ViT-B-32"):
        assert required in names
    b32 = get_config("ViT-B-32")
    assert (b32.embed_dim, b32.vision_cfg.width, b32.vision_cfg.patch_size, b32.text_cfg.width) == (512, 768, 32, 512)


def test_unknown_model_suggests_close_name() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'ViT-B-32'"):
        get_config("vit-b-32")


def test_invalid_config_is_a_typed_error() -> None:
    with pytest.raises(ConfigError, match="not a multiple"):
        ModelConfig.from_dict({"embed_dim": 8, "vision_cfg": {"image_size": 30, "patch_size": 8}}, name="bad")


def test_state_dict_names_follow_openai_clip() -> None:
    keys = set(create_model("test-tiny").state_dict())
    for k in (
        "visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.ln_pre.weight",
        "visual.transformer.resblocks.0.ln_1.weight", "visual.transformer.resblocks.0.attn.in_proj_weight",
        "visual.transformer.resblocks.0.attn.in_proj_bias", "visual.transformer.resblocks.0.attn.out_proj.weight",
        "visual.transformer.resblocks.1.ln_2.bias", "visual.transformer.resblocks.1.mlp.c_fc.weight",
        "visual.transformer.resblocks.1.mlp.c_proj.weight", "visual.ln_post.weight", "visual.proj",
        "token_embedding.weight", "positional_embedding", "transformer.resblocks.0.attn.in_proj_weight",
        "ln_final.weight", "text_projection", "logit_scale",
    ):
        assert k in keys, k
    assert "attn_mask" not in keys  # rebuilt from the config, never loaded


def test_logit_scale_init_and_finite_causal_mask() -> None:
    m = create_model("test-tiny")
    assert float(m.logit_scale.detach()) == pytest.approx(math.log(1 / 0.07))
    mask = m.attn_mask
    assert isinstance(mask, torch.Tensor)
    assert torch.isfinite(mask).all()
    assert float(mask[0, 1]) == MASK_VALUE and float(mask[1, 0]) == 0.0


def test_quick_gelu_is_part_of_the_config() -> None:
    cfg = get_config("test-tiny")
    a = CLIP(cfg)
    b = CLIP(ModelConfig(cfg.name, cfg.embed_dim, cfg.vision_cfg, cfg.text_cfg, quick_gelu=True))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(a.encode_image(x), b.encode_image(x))


def test_text_pooling_reads_the_eot_position_and_ignores_padding() -> None:
    torch.manual_seed(0)
    m = create_model("test-tiny").eval()
    eot = m.cfg.text_cfg.vocab_size - 1
    ids = torch.zeros(1, 16, dtype=torch.long)
    ids[0, :4] = torch.tensor([eot - 1, 5, 6, eot])
    other = ids.clone()
    other[0, 4:] = 7  # tokens after EOT cannot influence it through the causal mask
    with torch.no_grad():
        assert torch.allclose(m.encode_text(ids), m.encode_text(other), atol=1e-6)
        # trimming trailing padding (as the trainer does) is exact
        assert torch.allclose(m.encode_text(ids), m.encode_text(ids[:, :4]), atol=1e-6)


def test_split_encoders_match_the_joint_model_and_are_normalised() -> None:
    m = create_model("test-tiny").eval()
    x = torch.randn(3, 3, 32, 32)
    ids = torch.randint(1, 500, (3, 16))
    ids[:, 6] = 511
    with torch.no_grad():
        img, txt, _ = m(x, ids)
        assert torch.allclose(ImageEncoder(m)(x), img)
        assert torch.allclose(TextEncoder(m)(ids), txt)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not any(k.startswith("visual") for k in TextEncoder(m).state_dict())
