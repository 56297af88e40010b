"""Parity with transformers' SiglipModel: random-init HF directories -> `edgeclip import` -> same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from edgeclip.errors import CheckpointError, ConfigError
from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.model.importer import import_weights
from edgeclip.model.siglip import SigLIP
from edgeclip.runtime.tokenizer import TextTokenizer
from tests.model.siglip_fixtures import CONFIGS, make_hf_dir

transformers = pytest.importorskip("transformers")

TEXTS = ["a photo of a red circle.", "Two CATS, on a sofa!", "東京の写真 фото", "x" * 300, ""]
# the bound for embeddings and logits after import
TOL = 1e-5


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def imported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    root = tmp_path_factory.mktemp(request.param)
    hf, src = make_hf_dir(root / "hf", request.param)
    import_weights(src, root / "ckpt")
    model, info = load_checkpoint(root / "ckpt")
    return hf, src, model, info


def test_architecture_read_from_the_weights(imported: tuple) -> None:
    hf, _, model, info = imported
    assert isinstance(model, SigLIP) and info.model.family == "siglip"
    v, t = hf.config.vision_config, hf.config.text_config
    assert (info.model.vision_cfg.width, info.model.vision_cfg.layers, info.model.vision_cfg.heads) == (
        v.hidden_size, v.num_hidden_layers, v.num_attention_heads)
    assert info.model.vision_cfg.image_size == v.image_size and info.model.vision_cfg.patch_size == v.patch_size
    assert (info.model.text_cfg.width, info.model.text_cfg.layers, info.model.text_cfg.context_length) == (
        t.hidden_size, t.num_hidden_layers, t.max_position_embeddings)
    assert info.preprocess.resize == "squash" and info.preprocess.mean == (0.5, 0.5, 0.5)


def test_embeddings_and_logits_match_transformers(imported: tuple) -> None:
    hf, _, model, info = imported
    s = info.model.vision_cfg.image_size
    pixels = torch.randn(3, 3, s, s, generator=torch.Generator().manual_seed(1))
    ids = torch.from_numpy(TextTokenizer(info.tokenizer_path, info.tokenizer)(TEXTS))
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pixels)
        img, txt, _ = model(pixels, ids)
        logits = model.logits(pixels, ids)
    assert (img - ref.image_embeds).abs().max() < TOL
    assert (txt - ref.text_embeds).abs().max() < TOL
    assert (logits - ref.logits_per_image).abs().max() < TOL


def test_naflex_checkpoint_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "naflex"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "siglip2", "architectures": ["Siglip2Model"]}))
    with pytest.raises(ConfigError, match="NaFlex") as e:
        import_weights(src, tmp_path / "out")
    assert e.value.fix and "fixed-resolution" in e.value.fix


def test_missing_logit_bias_is_refused(tmp_path: Path) -> None:
    _, src = make_hf_dir(tmp_path / "hf", "p8-w32")
    state = load_file(str(src / "model.safetensors"))
    del state["logit_bias"]
    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(CheckpointError, match="logit_bias"):
        import_weights(src, tmp_path / "out")


def test_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path: Path) -> None:
    _, src = make_hf_dir(tmp_path / "hf", "p8-w32")
    state = load_file(str(src / "model.safetensors"))
    key = "text_model.embeddings.token_embedding.weight"
    state[key] = state[key][:50].contiguous()
    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(CheckpointError, match="ids but the text tower embeds only 50"):
        import_weights(src, tmp_path / "out")


def test_cli_import_prints_error_without_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    src = tmp_path / "naflex"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "siglip2"}))
    r = subprocess.run([sys.executable, "-m", "edgeclip", "import", str(src), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("Error:") and "Traceback" not in r.stderr, r.stderr
