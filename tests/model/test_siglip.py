"""The native SigLIP towers: transformers' names and shapes one to one, registered configs, bad configs."""

from __future__ import annotations

import pytest
import torch

from edgeclip.errors import ConfigError
from edgeclip.model.build import build_model
from edgeclip.model.config import ModelConfig, get_config
from edgeclip.model.siglip import SigLIP

transformers = pytest.importorskip("transformers")


def hf_config(cfg: ModelConfig) -> object:
    v, t = cfg.vision_cfg, cfg.text_cfg
    assert isinstance(v.layers, int)
    return transformers.SiglipConfig(
        vision_config=dict(hidden_size=v.width, intermediate_size=round(v.width * v.mlp_ratio),
                           num_hidden_layers=v.layers, num_attention_heads=v.heads, image_size=v.image_size,
                           patch_size=v.patch_size),
        text_config=dict(hidden_size=t.width, intermediate_size=round(t.width * t.mlp_ratio),
                         num_hidden_layers=t.layers,
                         num_attention_heads=t.heads, vocab_size=t.vocab_size, max_position_embeddings=t.context_length,
                         projection_size=cfg.embed_dim))


@pytest.mark.parametrize("name", ["test-tiny-siglip", "edge-tiny-siglip", "ViT-B-16-SigLIP", "ViT-B-16-SigLIP2",
                                  "ViT-SO400M-14-SigLIP-384"])
def test_state_dict_is_transformers_one_to_one(name: str) -> None:
    """Every tensor has transformers' SiglipModel name and shape (built on the meta device: no memory)."""
    cfg = get_config(name)
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in transformers.SiglipModel(hf_config(cfg)).state_dict().items()
                  if not k.endswith("position_ids")}
    assert ours == theirs


def test_so400m_shape() -> None:
    """So400m/14 at 384 px: 27 x 27 patches (6 px of the 384 unused, as in transformers), MLP 4304."""
    cfg = get_config("ViT-SO400M-14-SigLIP-384")
    assert (cfg.vision_cfg.grid, round(cfg.vision_cfg.width * cfg.vision_cfg.mlp_ratio)) == (27, 4304)
    with torch.device("meta"):
        n = sum(p.numel() for p in build_model(cfg).vision_model.parameters())
    assert 400e6 < n < 440e6  # "shape-optimised 400M" image tower


def test_forward_interface_and_sigmoid_logits() -> None:
    torch.manual_seed(0)
    model = build_model("test-tiny-siglip").eval()
    assert isinstance(model, SigLIP)
    pixels, ids = torch.randn(2, 3, 32, 32), torch.randint(0, 512, (3, 16))
    img, txt, scale = model(pixels, ids)
    assert img.shape == (2, 32) and txt.shape == (3, 32) and scale.ndim == 0
    logits = model.logits(pixels, ids)
    torch.testing.assert_close(logits, scale * img @ txt.T + model.logit_bias)
    # bidirectional (no causal mask): the first position sees a change of the last token
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 1) % 512
    text = model.text_model
    with torch.no_grad():
        first = [text.encoder(text.embeddings(i))[:, 0] for i in (ids, ids2)]
    assert not torch.allclose(*first)


@pytest.mark.parametrize("bad,match", [
    (dict(embed_dim=16), "must equal the image width"),
    (dict(quick_gelu=True), "tanh-GELU"),
    (dict(family="siglip3"), "unknown model family"),
])
def test_bad_siglip_configs_are_typed_errors(bad: dict[str, object], match: str) -> None:
    d = {**get_config("test-tiny-siglip").to_dict(), **bad}
    with pytest.raises(ConfigError, match=match):
        build_model(ModelConfig.from_dict(d))
