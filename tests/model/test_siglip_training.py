"""`--loss siglip` trains SigLIP models: from scratch on builtin:shapes, and from an imported checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.model.importer import import_weights
from edgeclip.model.siglip import INIT_LOGIT_BIAS, SigLIP
from edgeclip.train.config import TrainConfig
from edgeclip.train.loop import train
from tests.model.siglip_fixtures import make_hf_dir

SHAPES_CHANCE = {"colour": 1 / 8, "shape": 1 / 8}  # builtin:shapes: 8 colours x 8 shapes


def _train(out: Path, **kw: object) -> object:
    base = dict(out=str(out), batch_size=32, lr=2e-3, warmup_steps=5, augment=False, log_every=5, eval_size=64,
                tokenizer_samples=300, progress=False, loss="siglip")
    return train(TrainConfig(**{**base, **kw}))  # type: ignore[arg-type]


def test_siglip_loss_trains_the_models_own_bias(tmp_path: Path) -> None:
    """Fast sanity: a few steps; the bias the loss learns is the model's, saved in its checkpoint."""
    r = _train(tmp_path / "run", model="test-tiny-siglip", steps=8)
    model, info = load_checkpoint(tmp_path / "run")
    assert isinstance(model, SigLIP) and info.tokenizer.pooling == "last"
    assert float(model.logit_bias.detach()) != INIT_LOGIT_BIAS  # the loss's gradient reached the model's parameter
    assert r.final_loss is not None and r.final_loss == r.final_loss  # type: ignore[attr-defined]


def test_init_from_an_imported_siglip_checkpoint(tmp_path: Path) -> None:
    _, src = make_hf_dir(tmp_path / "hf", "p8-w32")
    import_weights(src, tmp_path / "imported")
    before = load_file(str(tmp_path / "imported" / "model.safetensors"))
    _train(tmp_path / "ft", init=str(tmp_path / "imported"), steps=4, lr=1e-4, warmup_steps=1)
    after = load_file(str(tmp_path / "ft" / "model.safetensors"))
    assert before.keys() == after.keys()
    # started from the imported weights (not a fresh init): close to them, yet trained
    key = "vision_model.head.probe"
    assert 0 < float((after[key] - before[key]).abs().max()) < 0.05
    assert float(after["logit_scale"]) == pytest.approx(float(before["logit_scale"]), abs=0.05)


@pytest.mark.slow
def test_siglip_reaches_zero_shot_far_above_chance_on_shapes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    r = _train(tmp_path / "run", model="edge-tiny-siglip", steps=300, batch_size=64, lr=1e-3, warmup_steps=30)
    zs = r.zero_shot  # type: ignore[attr-defined]
    assert zs["colour"] >= 0.8, zs  # docs/ENVIRONMENT: colour >= 0.80 after 300 patch-16 steps (CLIP loss)
