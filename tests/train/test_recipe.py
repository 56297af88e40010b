"""The trainer's recipe: schedule, parameter groups, temperature cap, a short run, config checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from edgeclip.errors import ConfigError
from edgeclip.train.config import TrainConfig
from edgeclip.train.loop import apply_gradients, train
from edgeclip.train.loss import clip_loss
from edgeclip.train.nonfinite import NonFiniteSkipper
from edgeclip.train.recipe import lr_at, param_groups


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
