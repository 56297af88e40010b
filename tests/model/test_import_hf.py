"""Parity with transformers' CLIPModel: random-init HF models -> `edgeclip import` -> same numbers.

transformers pools the text tower at the first `eos_token_id` (49407 in current configs; the
argmax id for legacy configs with eos_token_id == 2); edgeclip pools at argmax(input_ids). The
ids below hold EOT (49407, the highest id) exactly once, so both rules pick the same position.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from edgeclip.errors import ConfigError
from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.model.clip import CLIP
from edgeclip.model.hf_keys import hf_to_openai
from edgeclip.model.importer import import_weights, infer_config, load_strict, resolve_config
from edgeclip.model.sources import read_source

transformers = pytest.importorskip("transformers")
open_clip_vocab = pytest.importorskip("edgeclip.model.openai_tokenizer")

SOT, EOT = 49406, 49407

CONFIGS: dict[str, dict[str, Any]] = {
    # name: vision (width, layers, heads, patch, image, mlp), text (width, layers, heads, mlp), act, proj
    "quickgelu-p8": dict(v=(64, 2, 4, 8, 32, 4), t=(32, 2, 2, 4), act="quick_gelu", proj=24),
    "gelu-p16-3heads": dict(v=(48, 1, 3, 16, 64, 3), t=(64, 3, 4, 2), act="gelu", proj=32),
    "quickgelu-p4-deep": dict(v=(32, 3, 2, 4, 24, 2), t=(48, 1, 6, 4), act="quick_gelu", proj=16),
}


def make_hf_clip(v: tuple[int, ...], t: tuple[int, ...], act: str, proj: int, seed: int = 0) -> Any:
    """A random transformers CLIPModel; every tensor perturbed so no mapping hides behind 0/1 inits."""
    vw, vl, vh, patch, size, vm = v
    tw, tl, th, tm = t
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=tw, intermediate_size=tw * tm, num_hidden_layers=tl,
                         num_attention_heads=th, max_position_embeddings=77, hidden_act=act,
                         bos_token_id=SOT, eos_token_id=EOT),
        vision_config=dict(hidden_size=vw, intermediate_size=vw * vm, num_hidden_layers=vl, num_attention_heads=vh,
                           image_size=size, patch_size=patch, hidden_act=act),
        projection_dim=proj,
    )
    torch.manual_seed(seed)
    model = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def save_hf(model: Any, path: Path) -> Path:
    model.save_pretrained(str(path))
    return path


def probe_inputs(image_size: int, batch: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 3, image_size, image_size, generator=g)
    ids = torch.zeros(batch, 77, dtype=torch.long)
    for i, n in enumerate((5, 40, 75)[:batch]):  # EOT early, middle and last (a truncated caption)
        ids[i, 0] = SOT
        ids[i, 1 : n + 1] = torch.randint(1, SOT, (n,), generator=g)
        ids[i, n + 1] = EOT
    return pixels, ids


@torch.no_grad()
def hf_outputs(model: Any, pixels: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    out = model(input_ids=ids, pixel_values=pixels)
    return out.image_embeds, out.text_embeds, out.logits_per_image


@torch.no_grad()
def edgeclip_outputs(model: CLIP, pixels: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    img, txt, scale = model(pixels, ids)
    return img, txt, scale * img @ txt.t()


def max_diffs(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> list[float]:
    return [float((x - y).abs().max()) for x, y in zip(a, b, strict=True)]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hf_import_matches_transformers(name: str, tmp_path: Path) -> None:
    spec = CONFIGS[name]
    hf = make_hf_clip(**spec)
    result = import_weights(save_hf(hf, tmp_path / "hf"), tmp_path / "ckpt")
    model, info = load_checkpoint(result.path)
    assert result.activation == spec["act"]
    assert (info.model.vision_cfg.heads, info.model.text_cfg.heads) == (spec["v"][2], spec["t"][2])
    assert (info.tokenizer.sot_id, info.tokenizer.eot_id, info.tokenizer.pad_id) == (SOT, EOT, 0)
    assert info.preprocess.image_size == spec["v"][4]
    pixels, ids = probe_inputs(spec["v"][4])
    diffs = max_diffs(edgeclip_outputs(model, pixels, ids), hf_outputs(hf, pixels, ids))
    assert max(diffs) < 1e-5, diffs


def test_hf_argmax_and_first_eos_pooling_agree_on_these_ids(tmp_path: Path) -> None:
    """The legacy HF rule (eos_token_id == 2: argmax) and the current one give the same numbers."""
    hf = make_hf_clip(**CONFIGS["quickgelu-p8"])
    pixels, ids = probe_inputs(32)
    current = hf_outputs(hf, pixels, ids)[1]
    hf.text_model.eos_token_id = 2
    legacy = hf_outputs(hf, pixels, ids)[1]
    assert torch.equal(current, legacy)


def test_swapped_q_and_k_is_detected(tmp_path: Path) -> None:
    """A deliberately wrong mapping (k, q, v instead of q, k, v) must not pass the parity check."""
    hf = make_hf_clip(**CONFIGS["quickgelu-p8"])
    src = read_source(save_hf(hf, tmp_path / "hf"))
    wrong = hf_to_openai({k: v for k, v in hf.state_dict().items()}, qkv_order="kqv")
    model = CLIP(infer_config(src.state, src))
    load_strict(model, wrong, "swapped")
    pixels, ids = probe_inputs(32)
    diffs = max_diffs(edgeclip_outputs(model.eval(), pixels, ids), hf_outputs(hf, pixels, ids))
    assert min(diffs[:2]) > 1e-3, diffs


def test_gelu_instead_of_quickgelu_is_refused_and_would_break_parity(tmp_path: Path) -> None:
    hf = make_hf_clip(**CONFIGS["quickgelu-p8"])
    src = read_source(save_hf(hf, tmp_path / "hf"))
    inferred = infer_config(src.state, src)
    gelu = dataclasses.replace(inferred, name="gelu-variant", quick_gelu=False)
    with pytest.raises(ConfigError, match="(?s)activation mismatch.*QuickGELU.*--force-activation"):
        resolve_config(inferred, gelu, src, force_activation=False)
    forced, origin, notes = resolve_config(inferred, gelu, src, force_activation=True)
    assert not forced.quick_gelu and any("--force-activation" in n for n in notes)
    assert origin.startswith("--model gelu-variant with --force-activation")
    model = CLIP(forced)
    load_strict(model, dict(src.state), "forced")
    pixels, ids = probe_inputs(32)
    diffs = max_diffs(edgeclip_outputs(model.eval(), pixels, ids), hf_outputs(hf, pixels, ids))
    assert max(diffs[:2]) > 1e-4, diffs  # the check above is what stands between users and this


def test_hf_config_decides_the_activation(tmp_path: Path) -> None:
    """The same model.safetensors bytes: config.json's hidden_act, not the directory name, decides."""
    src = save_hf(make_hf_clip(**CONFIGS["quickgelu-p8"]), tmp_path / "gelu-model")
    other = Path(shutil.copytree(src, tmp_path / "quickgelu-model"))
    cfg = json.loads((src / "config.json").read_text())
    for tower in ("text_config", "vision_config"):
        cfg[tower]["hidden_act"] = "gelu"
    (other / "config.json").write_text(json.dumps(cfg))
    results = {p.name: import_weights(p, tmp_path / f"ck-{p.name}") for p in (src, other)}
    assert results["gelu-model"].activation == "quick_gelu" and results["quickgelu-model"].activation == "gelu"
    assert results["quickgelu-model"].activation_origin == "config.json hidden_act=gelu"
    assert results["gelu-model"].activation_origin == "config.json hidden_act=quick_gelu"


def test_model_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    hf = make_hf_clip(**CONFIGS["quickgelu-p8"])
    with pytest.raises(ConfigError, match=r"do not fit --model ViT-B-32-quickgelu: embed_dim 24 vs 512"):
        import_weights(save_hf(hf, tmp_path / "hf"), tmp_path / "ckpt", model="ViT-B-32-quickgelu")


def test_image_size_change_interpolates_positions(tmp_path: Path) -> None:
    from edgeclip.model.importer import resize_positions

    hf = make_hf_clip(**CONFIGS["quickgelu-p8"])
    src = read_source(save_hf(hf, tmp_path / "hf"))
    cfg = infer_config(src.state, src)
    bigger = dataclasses.replace(cfg.vision_cfg, image_size=48)
    state = dict(src.state)
    resize_positions(state, bigger)
    pos = state["visual.positional_embedding"]
    assert pos.shape == (1 + 6 * 6, 64)
    assert torch.equal(pos[0], src.state["visual.positional_embedding"][0])  # class token row kept
    same = dict(src.state)
    resize_positions(same, cfg.vision_cfg)  # same grid: bicubic resampling is the identity
    assert torch.allclose(same["visual.positional_embedding"], src.state["visual.positional_embedding"], atol=1e-6)
