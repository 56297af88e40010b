"""The trainer on CUDA: autocast precisions, fused AdamW skipping non-finite steps on the device,
channels-last and torch.compile. Skipped (with the reason) where no NVIDIA GPU is present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.train.config import TrainConfig
from edgeclip.train.loop import train
from edgeclip.train.nonfinite import NonFiniteSkipper

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA"),
]


@pytest.mark.parametrize("options", [{"precision": "bf16"}, {"precision": "fp16"},
                                     {"precision": "bf16", "channels_last": True, "model": "edge-tiny"},
                                     {"precision": "bf16", "compile": True}])
def test_cuda_training_learns_and_checkpoints(tmp_path: Path, options: dict[str, object]) -> None:
    out = tmp_path / "run"
    cfg = {"model": "test-tiny", **options}
    result = train(TrainConfig(out=str(out), steps=30, batch_size=32, lr=2e-3, warmup_steps=5, device="cuda",
                               log_every=5, eval_size=48, tokenizer_samples=400, progress=False, **cfg))  # type: ignore[arg-type]
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r.get("loss") is not None]
    # fp16: GradScaler may skip the first steps while it lowers its scale; they are counted
    assert losses[-1] < losses[0] and result.skipped_steps <= (10 if options["precision"] == "fp16" else 0)
    model, _ = load_checkpoint(out)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fused_adamw_skips_a_non_finite_step_on_the_device() -> None:
    dev = torch.device("cuda")
    model = torch.nn.Linear(8, 4).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    scaler, skipper = torch.amp.GradScaler("cuda", enabled=False), NonFiniteSkipper(dev)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = model(torch.randn(16, 8, device=dev)).sum() * float("nan")
    loss.backward()
    skipper.step(opt, scaler, loss, torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert skipper.check() == (1, 1)


def test_the_training_step_never_waits_for_the_gpu() -> None:
    """Batch normalisation, forward, loss, backward and the trainer's apply_gradients under CUDA's
    sync debug mode "error": any host synchronisation inside the step raises."""
    from edgeclip.model.clip import create_model
    from edgeclip.train.loop import apply_gradients
    from edgeclip.train.loss import clip_loss
    from edgeclip.train.recipe import param_groups

    dev = torch.device("cuda")
    model = create_model("test-tiny").to(dev).train()
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, fused=True)
    scaler, skipper = torch.amp.GradScaler("cuda", enabled=False), NonFiniteSkipper(dev)
    size, ctx = model.cfg.vision_cfg.image_size, model.cfg.text_cfg.context_length
    from edgeclip.bundle import PreprocessConfig
    from edgeclip.train.loader import normalize_batch

    pixels = torch.randint(0, 256, (8, size, size, 3), dtype=torch.uint8, device=dev)
    ids = torch.randint(1, model.cfg.text_cfg.vocab_size - 1, (8, ctx), device=dev)
    ids[:, -1] = model.cfg.text_cfg.vocab_size - 1
    for sync_mode in ("default", "error"):  # the first step allocates optimiser state
        torch.cuda.set_sync_debug_mode(sync_mode)
        try:
            images = normalize_batch(pixels, PreprocessConfig(image_size=size))
            with torch.autocast("cuda", dtype=torch.bfloat16):
                img, txt, scale = model(images, ids)
            loss = clip_loss(img, txt, scale)
            loss.backward()
            apply_gradients(model, opt, scaler, skipper, loss, list(model.parameters()), None)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert skipper.check() == (0, 0)
