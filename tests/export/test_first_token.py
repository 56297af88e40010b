"""A ViT pooled at its class token, and a CLIP text tower pooled at its end-of-text token, are
exported with their last block run for that token alone (FirstTokenBlock): the same embeddings,
and the saved graph really computes less."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from onnx import shape_inference

from edgeclip.bundle import Bundle
from edgeclip.export.encoders import encoder_module, export_module
from edgeclip.model.clip import FirstTokenBlock, ResidualBlock, VisionTransformer, create_model
from edgeclip.model.config import ModelConfig, get_config


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name).eval()


@pytest.mark.parametrize("name", ["test-tiny", "edge-tiny"])  # patch stem; conv stem with BatchNorm
def test_exported_tower_gives_the_full_towers_embeddings(name: str) -> None:
    model = _model(name)
    s = get_config(name).vision_cfg.image_size
    x = torch.randn(3, 3, s, s, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, fast = encoder_module("image", model)(x), export_module("image", model)(x)
    assert (full - fast).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", ["test-tiny", "edge-tiny"])
def test_only_the_last_block_is_replaced_and_the_model_is_untouched(name: str) -> None:
    model = _model(name)
    module = export_module("image", model)
    visual = module.visual
    assert isinstance(visual, VisionTransformer)
    blocks = list(visual.transformer.resblocks)
    assert isinstance(blocks[-1], FirstTokenBlock)
    assert all(type(b) is ResidualBlock for b in blocks[:-1])
    # the BatchNorm fold of a conv stem survives the copy made for the class-token form
    assert not [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    # the training model keeps its full last block
    assert type(model.visual.transformer.resblocks[-1]) is ResidualBlock


def _mlp_tokens(bundle_path: Path, encoder: str) -> tuple[list[int], Any]:
    """Tokens each block's first MLP matmul ([tokens] x [width, hidden]) runs on in the saved ONNX of
    `encoder`, in graph order, and that tower's config."""
    bundle = Bundle.open(bundle_path)
    artifact = next(a for a in bundle.manifest.artifacts if a.encoder == encoder and a.target == "onnx")
    graph = shape_inference.infer_shapes(onnx.load(str(bundle.artifact_path(artifact)))).graph
    model = ModelConfig.from_dict(bundle.manifest.model_config)
    cfg = model.vision_cfg if encoder == "image" else model.text_cfg
    hidden = round(cfg.width * cfg.mlp_ratio)
    weights = {i.name: list(i.dims) for i in graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.value_info}
    return [shapes[n.output[0]][1] for n in graph.node
            if n.op_type == "MatMul" and weights.get(n.input[1]) == [cfg.width, hidden]], cfg


def test_saved_onnx_runs_the_last_mlp_for_one_token(tiny_bundle: Path) -> None:
    tokens, cfg = _mlp_tokens(tiny_bundle, "image")
    assert tokens == [cfg.grid**2 + 1] * (cfg.layers - 1) + [1]


def test_first_token_block_needs_the_pooled_positions_under_a_mask() -> None:
    block = _model("test-tiny").transformer.resblocks[-1]  # a text block
    assert isinstance(block, ResidualBlock)
    with pytest.raises(ValueError, match="index"):
        FirstTokenBlock(block)(torch.zeros(1, 4, 32), torch.zeros(4, 4))


def _ids(name: str, batch: int = 5) -> torch.Tensor:
    """Token ids with the end-of-text token (the highest id) at a different position in each row,
    zero padding after it, as the tokenizer writes them."""
    cfg = get_config(name).text_cfg
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, cfg.vocab_size - 1, (batch, cfg.context_length), generator=g)
    for row, end in enumerate(torch.linspace(1, cfg.context_length - 1, batch).long().tolist()):
        ids[row, end] = cfg.vocab_size - 1
        ids[row, end + 1 :] = 0
    return ids


@pytest.mark.parametrize("name", ["test-tiny", "edge-tiny", "test-tiny-mci"])  # causal; causal; bidirectional
def test_exported_text_tower_gives_the_full_towers_embeddings(name: str) -> None:
    model = _model(name)
    ids = _ids(name)
    with torch.no_grad():
        full, fast = encoder_module("text", model)(ids), export_module("text", model)(ids)
    assert (full - fast).abs().max().item() < 1e-5
    blocks = export_module("text", model).transformer.resblocks
    assert isinstance(blocks[-1], FirstTokenBlock) and all(type(b) is ResidualBlock for b in blocks[:-1])
    assert type(model.transformer.resblocks[-1]) is ResidualBlock  # the training model keeps its block


def test_saved_text_onnx_runs_the_last_mlp_for_one_token(tiny_bundle: Path) -> None:
    tokens, cfg = _mlp_tokens(tiny_bundle, "text")
    assert tokens == [cfg.context_length] * (cfg.layers - 1) + [1]
