"""Distributed setup on torch.distributed: torchrun (and SLURM) environments, gloo on CPU,
NCCL on CUDA. Only rank 0 writes files; everyone meets at barriers around eval and save."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from edgeclip.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # a gloo group beside NCCL's, for decisions taken on the host (see all_agree); None: the
    # default group is gloo already
    host_group: Any = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _slurm_to_torchrun_env() -> None:
    """Map SLURM's variables to torchrun's when launched by `srun` directly."""
    if "WORLD_SIZE" in os.environ or "SLURM_NTASKS" not in os.environ:
        return
    if int(os.environ["SLURM_NTASKS"]) <= 1:
        return
    if "MASTER_ADDR" not in os.environ:
        raise ConfigError("SLURM job without MASTER_ADDR", fix="export MASTER_ADDR/MASTER_PORT, or use torchrun")
    os.environ.setdefault("MASTER_PORT", "29500")
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")


def init_world(device: str = "auto") -> World:
    """Read torchrun/SLURM variables; initialise the process group when there are several ranks."""
    _slurm_to_torchrun_env()
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is available", fix="use --device cpu")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    host_group = None
    if size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        if use_cuda:  # NCCL reduces only device tensors, and reading one back waits for the GPU
            host_group = dist.new_group(backend="gloo")
    return World(rank, local, size, dev, host_group)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def all_agree(ok: bool, world: World) -> bool:
    """True when `ok` is true on every rank: a decision each rank makes from its own data (is
    this batch usable?) taken by all of them together, so that none enters a collective the
    others skip. One small all-reduce on the host (gloo), which never waits for the GPU."""
    if not world.distributed:
        return ok
    flag = torch.tensor([int(ok)], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=world.host_group)
    return bool(flag.item())


class _AllGather(torch.autograd.Function):
    """all_gather whose backward sums, over ranks, the gradient of each rank's slice."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.size = dist.get_rank(), dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(ctx.size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss saw every slice
        return grad.chunk(ctx.size, dim=0)[ctx.rank]


def all_gather_with_grad(x: torch.Tensor, world: World) -> torch.Tensor:
    """Concatenate x (same shape on every rank) in rank order; gradients flow back to each slice."""
    if not world.distributed:
        return x
    out: torch.Tensor = _AllGather.apply(x)
    return out


def gather_padded(
    x: torch.Tensor, world: World, rows: int | None
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Every rank's rows of x, with gradient: (gathered [W*R, ...], valid [W*R] or None, offset).

    Ranks may hold fewer rows than the batch size (undecodable images are dropped per rank),
    but a collective needs one shape: with `rows` (the per-rank batch size, the same on every
    rank) each rank pads to it and `valid` (float 0/1) marks the real rows. Sizes are never read
    on the host, so a CUDA step does not wait. `offset`: where this rank's rows start.
    """
    n = x.shape[0]
    if not world.distributed:
        return x, None, 0
    if rows is None:
        return all_gather_with_grad(x, world), None, world.rank * n
    if n > rows:
        raise ValueError(f"{n} rows on rank {world.rank}, more than the {rows} every rank pads to")
    padded = torch.cat([x, x.new_zeros((rows - n, *x.shape[1:]))]) if n < rows else x
    mine = (torch.arange(rows, device=x.device) < n).float()
    parts = [torch.empty_like(mine) for _ in range(world.size)]
    dist.all_gather(parts, mine)
    return all_gather_with_grad(padded, world), torch.cat(parts), world.rank * rows


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
