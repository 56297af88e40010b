"""`reparameterize(model)`: the inference form of a FastViT (MobileCLIP) CLIP, on a copy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeclip.bundle import PreprocessConfig
from edgeclip.data.builtin import REFERENCE_SEED, shapes_heldout
from edgeclip.errors import ConfigError
from edgeclip.model.clip import CLIP, create_model
from edgeclip.model.config import ModelConfig, get_config
from edgeclip.model.fastvit import Reparameterizable
from edgeclip.model.fastvit_config import FastViTConfig
from edgeclip.model.reparameterize import inference_config, reparameterize
from edgeclip.runtime.preprocess import preprocess

TOLERANCE = 1e-5  # issue 16: the inference form matches the training form within 1e-5 (fp32)

# every block kind once: SE downsampling, both attention norms, with and without the stem's scale branch
VARIANTS = {
    "mci0-like": dict(attention_norm="batchnorm", stem_scale_branch=True),
    "mci3-like": dict(attention_norm="layernorm", stem_scale_branch=False),
}


def _tiny(**fastvit: object) -> ModelConfig:
    f = FastViTConfig(layers=(1, 2, 1), widths=(16, 32, 64), mixers=("repmixer", "repmixer", "attention"),
                      se_downsample=(False, True, True), **fastvit)  # type: ignore[arg-type]
    base = get_config("test-tiny-mci")
    return dataclasses.replace(base, vision_cfg=dataclasses.replace(base.vision_cfg, fastvit=f))


def _perturbed(cfg: ModelConfig, seed: int = 0) -> CLIP:
    """Random weights where every branch matters: BatchNorm statistics and affine terms away from
    identity, layer scales near 1 (their 1e-5 init would hide a wrongly merged branch)."""
    torch.manual_seed(seed)
    model = CLIP(cfg)
    with torch.no_grad():
        for name, p in model.visual.named_parameters():
            p.add_(torch.randn_like(p) * (0.5 if name.endswith("gamma") else 0.05))
        for name, b in model.visual.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                b.normal_(0, 0.2)
    return model.eval()


def _images(size: int) -> torch.Tensor:
    """Held-out built-in images through the runtime's preprocessing (resize, crop, normalise)."""
    shapes = shapes_heldout(size + 13, REFERENCE_SEED, size=4)
    cfg = PreprocessConfig(image_size=size)
    return torch.from_numpy(np.stack([preprocess(shapes[i].image, cfg) for i in range(len(shapes))]))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_inference_form_matches_training_form(variant: str) -> None:
    model = _perturbed(_tiny(**VARIANTS[variant]))
    pixels = _images(model.cfg.vision_cfg.image_size)
    fused = reparameterize(model)
    with torch.no_grad():
        raw = model.encode_image(pixels)
        ref, out = F.normalize(raw, dim=-1), F.normalize(fused.encode_image(pixels), dim=-1)
    assert raw.abs().max() > 0.1  # the comparison is not between two near-zero outputs
    assert (ref - out).abs().max() < TOLERANCE  # on the embeddings as exported (L2-normalised)


def test_inference_form_has_no_branches_left() -> None:
    model = _perturbed(_tiny())
    fused = reparameterize(model)
    assert not [m for m in fused.visual.modules() if isinstance(m, Reparameterizable)]
    # only the BatchNorms before attention (no conv to fold them into) are left
    norms = [n for n, m in fused.visual.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(n.endswith(".norm") for n in norms)
    assert sum(p.numel() for p in fused.parameters()) < sum(p.numel() for p in model.parameters())
    assert fused.cfg == inference_config(model.cfg) and fused.cfg.vision_cfg.fastvit.reparameterized  # type: ignore[union-attr]


def test_training_form_is_left_trainable() -> None:
    model = _perturbed(_tiny())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    reparameterize(model)
    assert model.training and not model.cfg.vision_cfg.fastvit.reparameterized  # type: ignore[union-attr]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    s = model.cfg.vision_cfg.image_size
    img, txt, scale = model(torch.randn(4, 3, s, s), torch.randint(1, 500, (4, 16)))
    (img @ txt.T * scale).logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.visual.parameters()]
    assert all(g is not None for g in grads)
    assert model.visual.stem[0].conv_kxk[0].conv.weight.grad.abs().sum() > 0  # type: ignore[union-attr]


def test_reparameterizing_twice_is_refused() -> None:
    fused = reparameterize(_perturbed(_tiny()))
    with pytest.raises(ConfigError, match="already reparameterized") as e:
        reparameterize(fused)
    assert e.value.fix


def test_models_without_an_inference_form_are_refused() -> None:
    with pytest.raises(ConfigError, match="no reparameterizable blocks"):
        reparameterize(create_model("test-tiny"))


def test_an_inference_form_config_does_not_build() -> None:
    with pytest.raises(ConfigError, match="inference-form") as e:
        CLIP(inference_config(get_config("test-tiny-mci")))
    assert "reparameterize" in (e.value.fix or "")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["MobileCLIP2-S0", "MobileCLIP2-S3"])
def test_full_size_inference_form_matches(name: str) -> None:
    model = _perturbed(get_config(name))
    pixels = _images(model.cfg.vision_cfg.image_size)[:2]
    with torch.no_grad():
        ref, out = (F.normalize(m.encode_image(pixels), dim=-1) for m in (model, reparameterize(model)))
    assert (ref - out).abs().max() < TOLERANCE
