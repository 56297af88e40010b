"""Importing open_clip MobileCLIP / MobileCLIP2 state dicts (timm naming) onto the native modules."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from edgeclip.errors import CheckpointError, ConfigError
from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.model.clip import CLIP
from edgeclip.model.config import ModelConfig, TextConfig, get_config
from edgeclip.model.importer import import_weights, infer_config
from edgeclip.model.reparameterize import reparameterize
from edgeclip.model.sources import Source
from tests.model.test_reparameterize import _perturbed, _tiny

REPO = Path(__file__).resolve().parents[2]
OCENV = Path(os.environ.get("EDGECLIP_OCENV", "/tmp/ocenv"))
TOLERANCE = 1e-5  # issue 16: image and text embeddings within 1e-5 after import


def _importable(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with a text tower the importer accepts (OpenAI's vocabulary, heads = width // 64)."""
    text = TextConfig(context_length=77, vocab_size=49408, width=64, heads=1, layers=2, no_causal_mask=True)
    return dataclasses.replace(cfg, text_cfg=text)


def open_clip_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """edgeclip names -> open_clip CustomTextCLIP names (timm's under visual.trunk.)."""
    def rename(k: str) -> str:
        if k.startswith("visual."):
            return "visual.trunk." + k[len("visual."):]
        return k if k == "logit_scale" else "text." + k
    return {rename(k): v.contiguous() for k, v in state.items()}


def _write(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "open_clip_model.safetensors"
    save_file(state, str(path))
    return path


@pytest.mark.parametrize("variant", [dict(attention_norm="batchnorm"), dict(attention_norm="layernorm",
                                                                              stem_scale_branch=False)])
def test_open_clip_layout_imports_exactly(tmp_path: Path, variant: dict[str, object]) -> None:
    model = _perturbed(_importable(_tiny(**variant)))
    path = _write(tmp_path, open_clip_names(model.state_dict()))
    result = import_weights(path, tmp_path / "ckpt")
    assert result.config.vision_cfg == dataclasses.replace(model.cfg.vision_cfg, image_size=256)
    assert result.config.text_cfg.no_causal_mask and result.activation == "gelu"
    loaded, info = load_checkpoint(result.path)
    assert info.preprocess.interpolation == "bilinear"
    pixels, ids = torch.randn(2, 3, 256, 256), torch.randint(1, 49000, (2, 77))
    with torch.no_grad():
        for a, b in zip(model(pixels, ids), loaded(pixels, ids), strict=True):
            assert torch.equal(a, b)


def test_mixed_training_and_inference_keys_are_refused(tmp_path: Path) -> None:
    model = _perturbed(_importable(_tiny()))
    state = open_clip_names(model.state_dict())
    state["visual.trunk.stages.0.blocks.0.token_mixer.reparam_conv.weight"] = torch.zeros(16, 1, 3, 3)
    with pytest.raises(CheckpointError, match="mixes training-form and reparameterized") as e:
        import_weights(_write(tmp_path, state), tmp_path / "ckpt")
    assert e.value.fix


def test_an_inference_form_state_dict_is_refused(tmp_path: Path) -> None:
    fused = reparameterize(_perturbed(_importable(_tiny())))
    with pytest.raises(CheckpointError, match="inference-form"):
        import_weights(_write(tmp_path, open_clip_names(fused.state_dict())), tmp_path / "ckpt")


def _unsupported_tower(model: CLIP) -> dict[str, torch.Tensor]:
    """open_clip names with a timm image tower edgeclip lacks (a ConvNeXt's stem and stages)."""
    state = {k: v for k, v in open_clip_names(model.state_dict()).items() if not k.startswith("visual.")}
    state["visual.trunk.stem.0.weight"] = torch.zeros(96, 3, 4, 4)
    state["visual.trunk.stages.0.blocks.0.conv_dw.weight"] = torch.zeros(96, 1, 7, 7)
    return state


def test_an_unsupported_timm_tower_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unsupported open_clip timm image tower") as e:
        import_weights(_write(tmp_path, _unsupported_tower(_perturbed(_importable(_tiny())))), tmp_path / "ckpt")
    assert "MobileCLIP2-L-14" in (e.value.fix or "")  # names what is supported


def test_cli_reports_the_unsupported_variant_without_traceback(tmp_path: Path) -> None:
    state = _unsupported_tower(_perturbed(_importable(_tiny())))
    proc = subprocess.run([sys.executable, "-m", "edgeclip", "import", str(_write(tmp_path, state)),
                           "--out", str(tmp_path / "ckpt")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("Error:") and "Traceback" not in proc.stderr


def test_full_size_layout_is_inferred_as_registered() -> None:
    for name in ("MobileCLIP2-S0", "MobileCLIP2-S4"):
        with torch.device("meta"):
            state = CLIP(get_config(name)).state_dict()
        cfg = infer_config(dict(state), Source(state, "open_clip", False, "test", no_causal_mask=True))
        assert cfg.vision_cfg == get_config(name).vision_cfg and cfg.text_cfg == get_config(name).text_cfg


@pytest.mark.slow
@pytest.mark.skipif(not (OCENV / "bin" / "python").exists(), reason="needs the open_clip venv (EDGECLIP_OCENV)")
@pytest.mark.parametrize("name", ["MobileCLIP2-S0", "MobileCLIP-B"])
def test_parity_with_open_clip_and_timm(tmp_path: Path, name: str) -> None:
    """Random-init open_clip models against open_clip; FastViT also against timm's reparameterize_model."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from mobileclip_parity import compare

    subprocess.run([str(OCENV / "bin" / "python"), str(REPO / "benchmarks" / "mobileclip_parity.py"),
                    "--worker", str(tmp_path), "--models", name], check=True, capture_output=True)
    case = compare(tmp_path, [name])[name]
    assert case["image_max_abs"] < TOLERANCE and case["text_max_abs"] < TOLERANCE
    assert case.get("reparameterized_image_max_abs_vs_timm_reparameterized", 0.0) < TOLERANCE
    assert ("reparameterized_image_max_abs_vs_timm_reparameterized" in case) == (name != "MobileCLIP-B")
