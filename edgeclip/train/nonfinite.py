"""Skipping optimiser steps whose loss or gradient is not finite, without a host sync per step.

The verdict is a 0-dim tensor that stays on the device: fused AdamW (and GradScaler) take it as
`found_inf` and leave parameters, moments and the step count untouched inside the kernel, and the
counters are device tensors too. The host reads them only in `check()`, which the loop calls at
log, eval and save points (and every step on CPU, where reading a tensor costs nothing).
"""

from __future__ import annotations

import torch


class NonFiniteSkipper:
    """Counts and skips the optimiser steps whose loss or gradient norm is inf or NaN."""

    def __init__(self, device: torch.device) -> None:
        self.skipped = torch.zeros((), device=device)  # skipped steps in this run
        self.run = torch.zeros((), device=device)  # current streak of skipped steps
        self.worst = torch.zeros((), device=device)  # longest streak since the last check()

    def step(self, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loss: torch.Tensor,
             grad_norm: torch.Tensor) -> None:
        """opt.step() unless `loss` or `grad_norm` (taken after unscaling) is inf or NaN."""
        bad = (~(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm))).to(torch.float32)
        self.skipped.add_(bad)
        self.run.add_(1).mul_(bad)
        torch.maximum(self.worst, self.run, out=self.worst)
        if scaler.is_enabled():
            scaler.step(opt)  # GradScaler finds the inf/NaN gradients itself and skips the update
        elif getattr(opt, "_step_supports_amp_scaling", False):  # fused optimisers
            opt.found_inf, opt.grad_scale = bad, None  # type: ignore[attr-defined]
            try:
                opt.step()
            finally:
                del opt.found_inf, opt.grad_scale  # type: ignore[attr-defined]
        elif not bool(bad):  # other optimisers: one sync per step
            opt.step()
        scaler.update()

    def check(self) -> tuple[int, int]:
        """(steps skipped so far, longest streak of skipped steps since the last check); a host sync."""
        worst = int(self.worst)
        self.worst.zero_()  # a streak still going on keeps counting in self.run
        return int(self.skipped), worst
