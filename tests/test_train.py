"""The minimal trainer and the built-in data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeclip.data.shapes import COLOURS, HELDOUT_COMBOS, SHAPES, ZERO_SHOT_TEMPLATES, ShapesDataset
from edgeclip.data.spec import open_source
from edgeclip.data.tasks import zero_shot_tasks
from edgeclip.errors import ConfigError, DataError, UnknownNameError
from edgeclip.train.config import TrainConfig
from edgeclip.train.loop import apply_gradients, train
from edgeclip.train.loss import clip_loss
from edgeclip.train.nonfinite import NonFiniteSkipper
from edgeclip.train.recipe import lr_at, param_groups


def test_shapes_is_deterministic_and_holds_out_combinations() -> None:
    a, b = ShapesDataset("train", 200, 64, seed=3), ShapesDataset("train", 200, 64, seed=3)
    for i in (0, 17, 199):
        assert a[i].caption == b[i].caption
        assert np.array_equal(np.asarray(a[i].image), np.asarray(b[i].image))
    train_combos = {(a[i].colour, a[i].shape) for i in range(len(a))}
    assert HELDOUT_COMBOS and len(HELDOUT_COMBOS) < len(COLOURS) * len(SHAPES)  # some, not all, held out
    assert not train_combos & HELDOUT_COMBOS
    assert {c for c, _ in train_combos} == set(COLOURS) and {s for _, s in train_combos} == set(SHAPES)
    held = ShapesDataset("heldout", 50, 64)
    assert {(held[i].colour, held[i].shape) for i in range(50)} <= HELDOUT_COMBOS
    assert a[0].image.size == (64, 64) and a[0].image.mode == "RGB"
    with pytest.raises(IndexError):
        a[200]


def test_zero_shot_templates_differ_from_training_captions() -> None:
    captions = {ShapesDataset("train", 300, 32)[i].caption for i in range(300)}
    prompts = {t.format(c) for attr in ("shape", "colour") for t in ZERO_SHOT_TEMPLATES[attr]
               for c in (SHAPES if attr == "shape" else COLOURS)}
    assert not captions & prompts
    assert len(captions) > 50  # varied wording


def test_zero_shot_tasks_cover_both_attributes() -> None:
    tasks = zero_shot_tasks("builtin:shapes", image_size=32, size=24)
    assert [t.name for t in tasks] == ["shape", "colour"]
    assert all(len(t.images) == len(t.targets) == 24 for t in tasks)


def test_unknown_and_empty_sources() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'builtin:shapes'"):
        open_source("builtin:shape", image_size=32)
    with pytest.raises(DataError):
        open_source("/no/such/data.csv", image_size=32)


def test_schedule_warmup_then_cosine() -> None:
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.5, abs=0.02)
    assert lr_at(99, cfg) < 0.01


def test_no_weight_decay_on_gains_biases_embeddings_and_scale() -> None:
    from edgeclip.model.clip import create_model

    m = create_model("test-tiny")
    decay, no_decay = param_groups(m, 0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    assert {"logit_scale", "token_embedding.weight", "positional_embedding", "ln_final.weight"} <= nd
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in {names[id(p)] for p in decay["params"]}


def test_each_step_caps_the_temperature_at_100() -> None:
    # CLIP clips the learnt temperature so that logits are scaled by at most 100 (Radford et al. 2021)
    from edgeclip.model.clip import create_model

    torch.manual_seed(0)
    model = create_model("test-tiny").train()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=0.0)  # no update: only the cap can move the scale
    pixels, ids = torch.randn(4, 3, 32, 32), torch.randint(1, 500, (4, 16))
    loss = clip_loss(*model(pixels, ids))
    loss.backward()
    apply_gradients(model, opt, torch.amp.GradScaler("cpu", enabled=False), NonFiniteSkipper(torch.device("cpu")),
                    loss, params, None)
    assert float(model.logit_scale.detach().exp()) == pytest.approx(100.0, rel=1e-6)


def test_training_learns_and_writes_log_and_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = train(TrainConfig(model="test-tiny", out=str(out), steps=100, batch_size=32, lr=2e-3, warmup_steps=5,
                          augment=False,
                          log_every=5, eval_size=32, tokenizer_samples=300, progress=False))
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "step" in row]
    assert steps[-1]["loss"] < math.log(32) - 0.3  # well below chance (ln 32) after 100 steps
    # CLIP clips the temperature so that logits are scaled by at most 100 (Radford et al. 2021)
    assert all(0 < row["logit_scale"] <= 100.0 + 1e-3 for row in steps)
    assert rows[-1]["final"]["samples_per_s"] > 0
    assert {"shape", "colour", "shape_top5", "colour_top5", "image_to_text_r1"} <= set(r.zero_shot)
    assert all(r.zero_shot[f"{k}_top5"] >= r.zero_shot[k] for k in ("shape", "colour"))
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}


def test_bad_train_config() -> None:
    with pytest.raises(ConfigError):
        TrainConfig(batch_size=1)
    with pytest.raises(ConfigError):
        TrainConfig(steps=0)


def test_the_cli_and_quickstart_take_their_defaults_from_trainconfig() -> None:
    """`edgeclip train` with no flags builds TrainConfig() (every default, none copied), and the
    quickstart's --steps/--seed and its model are TrainConfig's too."""
    import click

    from edgeclip.cli.quickstart import quickstart
    from edgeclip.cli.train import train as train_cmd
    from edgeclip.cli.train import train_config
    from edgeclip.quickstart import _train_config
    from edgeclip.train.config import DEFAULT_MODEL

    want = TrainConfig()
    assert train_config(**train_cmd.make_context("train", []).params) == want
    qs = {p.name: p.default for p in quickstart.params if isinstance(p, click.Option)}
    assert (qs["steps"], qs["seed"]) == (want.steps, want.seed)
    cfg = _train_config(Path("unused"), None, None, progress=False)
    assert (cfg.model, cfg.steps, cfg.batch_size, cfg.lr, cfg.seed) == (DEFAULT_MODEL, want.steps, want.batch_size,
                                                                        want.lr, want.seed)
