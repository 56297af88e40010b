"""OpenAI's ModifiedResNet image tower: names, attention pooling numerics, import and ONNX export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edgeclip.errors import ConfigError
from edgeclip.model.clip import CLIP, ImageEncoder, create_model
from edgeclip.model.config import ModelConfig, TextConfig, VisionConfig, get_config
from edgeclip.model.resnet import AttentionPool2d

TINY_RN = ModelConfig(
    "tiny-rn", 32,
    VisionConfig(image_size=64, patch_size=32, width=8, layers=(1, 2, 1, 1), heads=4),
    TextConfig(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
    quick_gelu=True,
)


def test_resnet_configs_and_openai_names() -> None:
    rn50 = get_config("RN50")
    assert rn50.vision_cfg.layers == (3, 4, 6, 3) and rn50.embed_dim == 1024
    assert get_config("RN101").vision_cfg.layers == (3, 4, 23, 3)
    assert get_config("RN50-quickgelu").quick_gelu and not rn50.quick_gelu
    assert ModelConfig.from_dict(rn50.to_dict()) == rn50  # layers survive the JSON round trip as a list
    keys = set(CLIP(TINY_RN).state_dict())
    for k in ("visual.conv1.weight", "visual.bn1.running_mean", "visual.conv3.weight", "visual.bn3.bias",
              "visual.layer1.0.conv1.weight", "visual.layer1.0.downsample.0.weight",
              "visual.layer2.1.bn3.weight", "visual.layer4.0.downsample.1.running_var",
              "visual.attnpool.positional_embedding", "visual.attnpool.q_proj.weight",
              "visual.attnpool.k_proj.bias", "visual.attnpool.v_proj.weight", "visual.attnpool.c_proj.weight"):
        assert k in keys, k
    assert "visual.layer2.1.downsample.0.weight" not in keys


def test_invalid_resnet_config() -> None:
    with pytest.raises(ConfigError, match="four stage depths"):
        VisionConfig(width=8, layers=(1, 1, 1), heads=4)
    with pytest.raises(ConfigError, match="multiple of 32"):
        VisionConfig(image_size=48, width=8, layers=(1, 1, 1, 1), heads=4)


def test_attention_pool_matches_openai_formula() -> None:
    """OpenAI's AttentionPool2d (F.multi_head_attention_forward over all tokens, keep token 0)."""
    torch.manual_seed(0)
    pool = AttentionPool2d(grid=3, width=32, heads=4, output_dim=16).eval()
    x = torch.randn(2, 32, 3, 3)
    t = x.flatten(2).permute(2, 0, 1)
    t = torch.cat([t.mean(dim=0, keepdim=True), t]) + pool.positional_embedding[:, None, :]
    ref, _ = F.multi_head_attention_forward(
        query=t, key=t, value=t, embed_dim_to_check=32, num_heads=4, q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight, in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]), bias_k=None, bias_v=None,
        add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True, training=False, need_weights=False,
    )
    with torch.no_grad():
        assert torch.allclose(pool(x), ref[0], atol=1e-6)


def test_resnet_encoder_shapes_and_rn50_size() -> None:
    m = CLIP(TINY_RN).eval()
    with torch.no_grad():
        out = ImageEncoder(m)(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 32) and torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)
    n = sum(p.numel() for p in create_model("RN50").visual.parameters())
    assert 38_000_000 < n < 39_000_000  # OpenAI RN50's image tower: 38.3M parameters


def _imported_resnet(tmp_path: Path, cfg: ModelConfig) -> Path:
    from edgeclip.model.importer import import_weights

    torch.manual_seed(0)
    model = CLIP(cfg)
    with torch.no_grad():  # non-trivial BN statistics, so eval-mode BN is really exercised
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                buf.normal_(0, 0.1)
        for name, p in model.named_parameters():
            if name.endswith("bn3.weight"):
                p.normal_(0, 0.2)
    torch.save(model.state_dict(), tmp_path / "rn.pt")
    act = "quick_gelu" if cfg.quick_gelu else "gelu"  # a bare state dict does not record it
    result = import_weights(tmp_path / "rn.pt", tmp_path / "ckpt", activation=act)
    assert result.config.vision_cfg.layers == cfg.vision_cfg.layers
    assert result.config.vision_cfg.heads == cfg.vision_cfg.width * 32 // 64
    return result.path


def test_tiny_resnet_imports_and_exports_to_onnx(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from edgeclip.export.driver import export_bundle

    ckpt = _imported_resnet(tmp_path, TINY_RN)
    result = export_bundle(ckpt, tmp_path / "rn.edgeclip", targets=["onnx"], encoders=["image"])
    assert (result.artifacts[0].validation.max_abs or 1.0) < 1e-4


@pytest.mark.slow
def test_rn50_exports_to_onnx(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from edgeclip.export.driver import export_bundle

    ckpt = _imported_resnet(tmp_path, get_config("RN50-quickgelu"))
    result = export_bundle(ckpt, tmp_path / "rn50.edgeclip", targets=["onnx"])
    assert all((a.validation.max_abs or 1.0) < 1e-4 for a in result.artifacts)


@pytest.mark.parametrize("config", ["resnet", "edge-tiny"])
def test_batchnorm_is_folded_for_export_without_changing_outputs(config: str) -> None:
    from edgeclip.export.encoders import encoder_module, export_module

    torch.manual_seed(0)
    m = CLIP(TINY_RN) if config == "resnet" else create_model("edge-tiny")
    with torch.no_grad():  # non-trivial statistics, so folding has something to fold
        for name, buf in m.visual.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.5)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    x = torch.randn(3, 3, m.cfg.vision_cfg.image_size, m.cfg.vision_cfg.image_size)
    folded = export_module("image", m)
    assert not [x for x in folded.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    assert [x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)]  # the model itself is untouched
    with torch.no_grad():
        torch.testing.assert_close(folded(x), encoder_module("image", m)(x), atol=2e-5, rtol=1e-4)
