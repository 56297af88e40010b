"""Contrastive losses (train/loss.py) against references written from the papers' formulas."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edgeclip.train.distributed import World
from edgeclip.train.loss import SIGLIP_LOGIT_SCALE_INIT, SigLipLoss, clip_loss

N, DIM, WORLD = 6, 8, 2


def _features(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, DIM, generator=g), dim=-1)
    txt = F.normalize(torch.randn(n, DIM, generator=g), dim=-1)
    return img, txt


def siglip_reference(x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Zhai et al. 2023, eq. 1: L = -1/|B| sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b)),
    z_ij = 1 for the matching pair (i = j), -1 otherwise; float64, one term at a time."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(len(x)):
        for j in range(len(y)):
            z = 1.0 if i == j else -1.0
            logit = t * torch.dot(x[i].double(), y[j].double()) + b
            total = total + torch.log(1.0 / (1.0 + torch.exp(-z * logit)))
    return -total / len(x)


def test_siglip_initialisation_is_the_papers() -> None:
    # Zhai et al. 2023, sec. 3.2: t' = log 10 (t = exp(t') = 10) and b = -10
    assert SigLipLoss().logit_bias.item() == -10.0
    assert math.exp(SIGLIP_LOGIT_SCALE_INIT) == pytest.approx(10.0)


@pytest.mark.parametrize("bias", [-10.0, -2.5, 1.5])
def test_siglip_loss_and_gradients_match_the_papers_formula(bias: float) -> None:
    img, txt = _features(N)
    img.requires_grad_(True)
    txt.requires_grad_(True)
    scale = torch.tensor(10.0, requires_grad=True)
    loss_fn = SigLipLoss()
    with torch.no_grad():
        loss_fn.logit_bias.fill_(bias)
    loss = loss_fn(img, txt, scale)
    loss.backward()

    x, y = img.detach().double().requires_grad_(True), txt.detach().double().requires_grad_(True)
    t, b = torch.tensor(10.0, dtype=torch.float64, requires_grad=True), torch.tensor(bias, dtype=torch.float64,
                                                                                    requires_grad=True)
    want = siglip_reference(x, y, t, b)
    want.backward()
    torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-5, atol=1e-6)
    for got, ref in ((img.grad, x.grad), (txt.grad, y.grad), (scale.grad, t.grad), (loss_fn.logit_bias.grad, b.grad)):
        assert got is not None and ref is not None
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)


def clip_reference(x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Radford et al. 2021, fig. 3: the mean of the image->text and text->image cross-entropies
    over the batch, pair i the positive of row i; float64, one row at a time."""
    logits = t * x.double() @ y.double().t()
    i2t = torch.stack([torch.logsumexp(logits[i, :], 0) - logits[i, i] for i in range(len(x))]).mean()
    t2i = torch.stack([torch.logsumexp(logits[:, i], 0) - logits[i, i] for i in range(len(x))]).mean()
    return (i2t + t2i) / 2


def _loss_worker(rank: int, world_size: int, init_file: str, out_dir: str, sizes: list[int],
                 rows: int | None) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    img, txt = _features(sum(sizes))
    start = sum(sizes[:rank])
    share = slice(start, start + sizes[rank])  # this rank's rows of the global batch
    world = World(rank=rank, size=world_size)
    out = {}
    for name in ("clip", "siglip"):
        x, y = img[share].clone().requires_grad_(True), txt[share].clone().requires_grad_(True)
        siglip = SigLipLoss()
        with torch.no_grad():
            siglip.logit_bias.fill_(-2.5)
        if name == "clip":
            loss = clip_loss(x, y, torch.tensor(10.0), world, rows=rows)
        else:
            loss = siglip(x, y, torch.tensor(10.0), world, rows=rows)
        loss.backward()
        out[name] = {"loss": loss.detach(), "img": x.grad, "txt": y.grad}
        if name == "siglip":
            out[name]["bias"] = siglip.logit_bias.grad
    torch.save(out, f"{out_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("sizes,rows", [([N, N], None), ([N, N - 2], N)], ids=["equal", "rank1-short"])
def test_losses_over_two_gloo_ranks_match_the_papers_formulas_on_the_global_batch(
        tmp_path: Path, sizes: list[int], rows: int | None) -> None:
    """What the trainer optimises is the mean over ranks of each rank's loss and gradients
    (DDP's average); it must be the single-process loss of the global batch. A rank may hold
    fewer rows (its undecodable images dropped): padded to `rows`, the padding is no candidate."""
    import torch.multiprocessing as mp

    mp.start_processes(_loss_worker, args=(WORLD, str(tmp_path / "init"), str(tmp_path), sizes, rows),
                       nprocs=WORLD, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    img, txt = _features(sum(sizes))
    for name in ("clip", "siglip"):
        x, y = img.double().requires_grad_(True), txt.double().requires_grad_(True)
        t = torch.tensor(10.0, dtype=torch.float64)
        b = torch.tensor(-2.5, dtype=torch.float64, requires_grad=True)
        want = clip_reference(x, y, t) if name == "clip" else siglip_reference(x, y, t, b)
        want.backward()
        assert x.grad is not None and y.grad is not None
        got = [r[name] for r in ranks]
        torch.testing.assert_close(torch.stack([r["loss"] for r in got]).mean().double(), want.detach(),
                                   rtol=1e-5, atol=1e-6, msg=f"{name} loss")
        for key, ref in (("img", x.grad), ("txt", y.grad)):
            torch.testing.assert_close(torch.cat([r[key] for r in got]).double() / WORLD, ref, rtol=1e-4, atol=1e-6,
                                       msg=f"{name} {key} gradient")
        if name == "siglip":
            torch.testing.assert_close(torch.stack([r["bias"] for r in got]).mean().double(), b.grad,
                                       rtol=1e-4, atol=1e-6, msg="siglip bias gradient")


def test_clip_loss_is_symmetric_infonce() -> None:
    img, txt = _features(N)
    scale = torch.tensor(10.0)
    want = clip_reference(img, txt, scale.double())
    assert clip_loss(img, txt, scale).item() == pytest.approx(want.item(), rel=1e-5)
    assert clip_loss(img, img, torch.tensor(100.0)).item() < 1e-3  # perfect alignment
