"""Gradient accumulation that keeps the contrastive objective over the whole batch.

Accumulating plain micro-batch losses would shrink the set of negatives to one micro-batch.
GradCache (Gao et al. 2021) instead: (1) embed every micro-batch without a graph, (2) compute
the loss over all embeddings and take its gradient with respect to them, (3) re-embed each
micro-batch with a graph and back-propagate the cached embedding gradients. The result equals
the full-batch gradient; memory is that of one micro-batch. (Towers with BatchNorm normalise
with micro-batch statistics in steps 1 and 3 alike, so there it equals the gradient of a forward
run micro-batch by micro-batch; their running statistics are updated by step 3 only.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn

EncodeFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def grad_cache_step(
    encode: EncodeFn,
    loss_fn: LossFn,
    pixels: torch.Tensor,
    input_ids: torch.Tensor,
    micro_batches: int,
    logit_scale: Callable[[], torch.Tensor],
    autocast: Callable[[], AbstractContextManager[object]] = nullcontext,
    scale_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run forward+backward over the batch in `micro_batches` chunks; returns the loss.

    `encode(pixels, ids)` -> (image_features, text_features, logit_scale), normalised.
    `logit_scale()` -> the scale with a graph to its parameter (e.g. model.logit_scale.exp()).
    Across ranks, the caller averages gradients afterwards (the backward passes here run
    outside any DDP forward, so DDP's hooks cannot be used). When `encode` is a module, its
    BatchNorm running statistics move once per micro-batch, as in a plain forward.
    `scale_loss` (fp16: GradScaler.scale) scales the loss before its backward; the cached
    embedding gradients carry that factor into every parameter's gradient, as the caller's
    unscale step expects. The returned loss is not scaled.
    """
    px_chunks = pixels.chunk(micro_batches)
    id_chunks = input_ids.chunk(micro_batches)
    # 1. embeddings without a graph
    with torch.no_grad(), autocast(), _running_stats_kept(encode):
        feats = [encode(p, i) for p, i in zip(px_chunks, id_chunks, strict=True)]
    img = torch.cat([f[0] for f in feats]).float().requires_grad_(True)
    txt = torch.cat([f[1] for f in feats]).float().requires_grad_(True)
    # 2. loss over the full batch; its gradient w.r.t. the embeddings, and the logit scale's
    #    gradient straight onto its parameter
    loss = loss_fn(img, txt, logit_scale())
    (scale_loss(loss) if scale_loss is not None else loss).backward()
    assert img.grad is not None and txt.grad is not None
    img_grads, txt_grads = img.grad.split([len(p) for p in px_chunks]), txt.grad.split([len(i) for i in id_chunks])
    # 3. re-embed each chunk with a graph and push the cached gradients through it
    for k, (p, i) in enumerate(zip(px_chunks, id_chunks, strict=True)):
        with autocast():
            f_img, f_txt, _ = encode(p, i)
        # a locked tower (LiT) has no graph to push its gradient through
        pairs = [(f.float(), g) for f, g in ((f_img, img_grads[k]), (f_txt, txt_grads[k])) if f.requires_grad]
        torch.autograd.backward([f for f, _ in pairs], [g for _, g in pairs])
    return loss.detach()



@contextmanager
def _running_stats_kept(encode: object) -> Iterator[None]:
    """Undo the running-statistics update of BatchNorm layers in training mode: the no-grad pass
    must not count each micro-batch a second time (the recompute counts it). Eval mode instead
    would normalise with other statistics than the recompute, and the cached gradients would
    belong to other embeddings."""
    modules = encode.modules() if isinstance(encode, nn.Module) else iter(())
    norms = [m for m in modules if isinstance(m, nn.modules.batchnorm._NormBase)]  # BatchNorm, SyncBatchNorm
    saved = [{k: b.clone() for k, b in m.named_buffers(recurse=False)} for m in norms]
    try:
        yield
    finally:
        for m, buffers in zip(norms, saved, strict=True):
            for k, b in m.named_buffers(recurse=False):
                b.copy_(buffers[k])
