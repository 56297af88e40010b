"""GradCache (train/gradcache.py): loss, gradients and BatchNorm statistics against plain forwards."""

from __future__ import annotations

import copy

import torch

from edgeclip.model.clip import CLIP, create_model
from edgeclip.model.config import ModelConfig, TextConfig, VisionConfig
from edgeclip.train.gradcache import grad_cache_step
from edgeclip.train.loss import SigLipLoss, clip_loss

# a ModifiedResNet image tower: BatchNorm in every block
TINY_RN = ModelConfig(
    "tiny-rn", 16,
    VisionConfig(image_size=32, patch_size=32, width=8, layers=(1, 1, 1, 1), heads=2),
    TextConfig(context_length=16, vocab_size=512, width=16, heads=2, layers=1),
)


def _batch(n: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(n, 3, size, size, generator=g)
    ids = torch.randint(1, 500, (n, 16), generator=g)
    ids[:, 9] = 511  # the end-of-text token (highest id) the text tower pools at
    return pixels, ids


def _grads(*modules: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for i, m in enumerate(modules):
        for name, p in m.named_parameters():
            assert p.grad is not None, name
            out[f"{i}.{name}"] = p.grad.clone()
        m.zero_grad(set_to_none=True)
    return out


def _assert_grads_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6, msg=name)


def _full_batch_reference(n: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, dict]:  # type: ignore[type-arg]
    """A fresh test-tiny model, a batch of n, and the loss and gradients of one full-batch step."""
    torch.manual_seed(0)
    model = create_model("test-tiny").train()
    pixels, ids = _batch(n)
    full_loss = clip_loss(*model(pixels, ids))
    full_loss.backward()
    return model, pixels, ids, full_loss, _grads(model)


def test_grad_cache_loss_and_gradients_equal_the_full_batch() -> None:
    model, pixels, ids, full_loss, want = _full_batch_reference(12)

    loss = grad_cache_step(model, clip_loss, pixels, ids, 3, lambda: model.logit_scale.exp())
    # the loss over all 12 pairs (every negative), not one micro-batch's
    torch.testing.assert_close(loss, full_loss.detach(), rtol=1e-5, atol=1e-6)
    assert not loss.requires_grad
    _assert_grads_close(_grads(model), want)


def test_grad_cache_with_a_locked_image_tower_equals_the_full_batch() -> None:
    """LiT (--lock-image) with --accum-steps: the frozen tower's embeddings carry no graph, so only
    the text tower's are back-propagated (this raised "does not require grad")."""
    torch.manual_seed(0)
    model = create_model("test-tiny").train()
    model.visual.requires_grad_(False)
    pixels, ids = _batch(12)
    full_loss = clip_loss(*model(pixels, ids))
    full_loss.backward()
    want = _grads(model.transformer)
    scale_grad = model.logit_scale.grad.clone()
    model.zero_grad(set_to_none=True)

    loss = grad_cache_step(model, clip_loss, pixels, ids, 3, lambda: model.logit_scale.exp())
    torch.testing.assert_close(loss, full_loss.detach(), rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in model.visual.parameters())
    torch.testing.assert_close(model.logit_scale.grad, scale_grad, rtol=1e-4, atol=1e-6)
    _assert_grads_close(_grads(model.transformer), want)


def test_grad_cache_siglip_loss_and_bias_gradient_equal_the_full_batch() -> None:
    torch.manual_seed(0)
    model, siglip = create_model("test-tiny").train(), SigLipLoss()
    pixels, ids = _batch(12)
    full_loss = siglip(*model(pixels, ids))
    full_loss.backward()
    want = _grads(model, siglip)

    loss = grad_cache_step(model, siglip, pixels, ids, 4, lambda: model.logit_scale.exp())
    torch.testing.assert_close(loss, full_loss.detach(), rtol=1e-5, atol=1e-6)
    _assert_grads_close(_grads(model, siglip), want)


def test_grad_cache_gradients_carry_the_loss_scale_of_fp16_training() -> None:
    # fp16 training scales the loss (GradScaler) and unscales the gradients before the step:
    # every gradient GradCache leaves must carry the scale, or the unscale shrinks it
    model, pixels, ids, full_loss, want = _full_batch_reference(8)

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt = torch.optim.AdamW(model.parameters())
    loss = grad_cache_step(model, clip_loss, pixels, ids, 2, lambda: model.logit_scale.exp(),
                           scale_loss=scaler.scale)
    torch.testing.assert_close(loss, full_loss.detach(), rtol=1e-5, atol=1e-6)  # not the scaled loss
    scaler.unscale_(opt)
    _assert_grads_close(_grads(model), want)


def _micro_batch_forwards(model: CLIP, pixels: torch.Tensor, ids: torch.Tensor, k: int) -> torch.Tensor:
    """What GradCache computes with BatchNorm: each micro-batch normalised by its own statistics,
    one loss over all of them."""
    feats = [model(p, i) for p, i in zip(pixels.chunk(k), ids.chunk(k), strict=True)]
    return clip_loss(torch.cat([f[0] for f in feats]), torch.cat([f[1] for f in feats]), feats[0][2])


def test_grad_cache_batchnorm_stats_move_once_per_micro_batch() -> None:
    torch.manual_seed(0)
    model = CLIP(TINY_RN).train()
    reference = copy.deepcopy(model)
    pixels, ids = _batch(12)
    want_loss = _micro_batch_forwards(reference, pixels, ids, 3)
    want_loss.backward()
    want = _grads(reference)

    loss = grad_cache_step(model, clip_loss, pixels, ids, 3, lambda: model.logit_scale.exp())
    torch.testing.assert_close(loss, want_loss.detach(), rtol=1e-5, atol=1e-6)
    _assert_grads_close(_grads(model), want)
    buffers, ref_buffers = dict(model.named_buffers()), dict(reference.named_buffers())
    stats = [k for k in ref_buffers if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(stats) >= 3 * 3, "the tower should have BatchNorm layers"
    for k in stats:
        torch.testing.assert_close(buffers[k], ref_buffers[k], rtol=1e-5, atol=1e-6, msg=k)
    assert all(int(buffers[k]) == 3 for k in stats if k.endswith("num_batches_tracked"))  # one per micro-batch
