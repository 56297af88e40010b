"""The trainer's own distributed path: `torchrun -m edgeclip train` on 2 gloo ranks against one
process on the same global batch (issue 13, item 2).

`--batch-size` is per process and rank r of W reads global positions
[step*B*W + r*B, step*B*W + (r+1)*B) (train/loader.py), so 2 ranks x 8 see, in rank order, the
16 samples one process with --batch-size 16 sees. Random init comes from --seed on every rank,
the towers have no dropout, and the random crop of a sample is keyed to its global position (not
to the rank that loads it): the two runs differ only in how the arithmetic is split, so they must
agree to fp32 round-off, with augmentation on as well as off.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from edgeclip.errors import ConfigError
from edgeclip.model.clip import CLIP
from edgeclip.model.config import get_config
from edgeclip.train.distributed import World, _slurm_to_torchrun_env, init_world
from tests.conftest import REPO

STEPS = 4
GLOBAL_BATCH = 16
# --grad-clip below some steps' gradient norm: a gradient of the wrong scale (a missing division
# by the world size) then changes which steps are clipped, which shows in the weights too.
COMMON = ["--model", "test-tiny", "--steps", str(STEPS), "--warmup-steps", "2", "--grad-clip", "20",
          "--no-progress", "--threads", "1", "--log-every", "1", "--seed", "3"]
# Measured on this setup: fp32 round-off between the two splits leaves Adam's moments ~5e-6 of a
# tensor's largest value apart and the weights ~1e-4 of the training update; a rank that trains
# on its own gradient (no DDP, no averaging) is ~1e-1 and ~0.7 off, an un-averaged SigLIP bias
# gradient ~4e-3 off in its moments.
REL_TOL = 1e-4
WEIGHTS_REL_TOL = 1e-3


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]


def _one_process(out: Path, *flags: str) -> Path:
    _run([sys.executable, "-m", "edgeclip", "train", *COMMON, *flags, "--batch-size", str(GLOBAL_BATCH),
          "--out", str(out)])
    return out


def _two_ranks(out: Path, *flags: str) -> Path:
    # --standalone: torchrun picks a free port, so parallel test runs cannot collide
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          "-m", "edgeclip", "train", *COMMON, *flags, "--batch-size", str(GLOBAL_BATCH // 2), "--out", str(out)])
    return out


def _state(run: Path) -> dict[str, Any]:
    path = run / "checkpoints" / f"step_{STEPS:08d}" / "train_state.pt"
    state: dict[str, Any] = torch.load(path, weights_only=True)
    return state


def _grad_norms(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    return [r["grad_norm"] for r in rows if "grad_norm" in r]


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    scale = want.abs().max().clamp_min(1e-12)
    err = float((got - want).abs().max() / scale)
    assert err <= REL_TOL, f"{what}: off by {err:.2e} of its largest value"


def _assert_same_training(got: Path, want: Path) -> None:
    # The weights as a whole, relative to how far training moved them. Not element by element:
    # Adam divides each gradient by its own running RMS, which turns round-off in a gradient that
    # is ~0 by construction (the key bias of attention) into a full-size step of either sign.
    torch.manual_seed(3)
    init = CLIP(get_config("test-tiny")).state_dict()
    a, b = load_file(str(got / "model.safetensors")), load_file(str(want / "model.safetensors"))
    assert a.keys() == b.keys() == init.keys()
    moved = torch.cat([(b[k] - init[k]).flatten() for k in b]).norm()
    apart = torch.cat([(a[k] - b[k]).flatten() for k in b]).norm()
    assert moved > 0, "training did not move the weights: the comparison would prove nothing"
    assert apart / moved <= WEIGHTS_REL_TOL, f"weights differ by {float(apart / moved):.2e} of the training update"
    # Adam's moments are running sums of the raw gradients (the update itself is scale-free)
    sa, sb = _state(got), _state(want)
    moments_a, moments_b = sa["optimizer"]["state"], sb["optimizer"]["state"]
    assert moments_a.keys() == moments_b.keys()
    for i in moments_b:
        for key in ("exp_avg", "exp_avg_sq"):
            _close(moments_a[i][key], moments_b[i][key], f"optimizer state {i}.{key}")
    if "siglip" in sb:
        _close(sa["siglip"]["logit_bias"], sb["siglip"]["logit_bias"], "siglip logit_bias")
    norms_a, norms_b = _grad_norms(got), _grad_norms(want)
    assert len(norms_b) == STEPS
    assert norms_a == pytest.approx(norms_b, rel=1e-3)  # the log rounds to 4 digits


@pytest.mark.parametrize("flags", [("--loss", "clip", "--no-augment"), ("--loss", "siglip")],
                         ids=["clip-no-augment", "siglip-augment"])
def test_torchrun_two_ranks_train_like_one_process_on_the_global_batch(tmp_path: Path,
                                                                      flags: tuple[str, ...]) -> None:
    """--accum-steps 1 (DDP) and --accum-steps 2 (GradCache + hand-averaged gradients)."""
    reference = _one_process(tmp_path / "one", *flags)
    for accum in ("1", "2"):
        run = _two_ranks(tmp_path / f"two-accum{accum}", *flags, "--accum-steps", accum)
        _assert_same_training(run, reference)


def _captions_with_one_undecodable_image(root: Path, images: int = 32) -> Path:
    rng = np.random.default_rng(0)
    lines = ["filepath,caption"]
    for i in range(images):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        lines.append(f"{path.name},a {('red', 'green', 'blue', 'yellow')[i % 4]} thing number {i}")
    broken = root / "img5.png"
    broken.write_bytes(broken.read_bytes()[:60])  # truncated: the header survives, the pixels do not
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    return root / "data.csv"


def test_torchrun_with_an_undecodable_image_on_one_rank_trains_like_one_process(tmp_path: Path) -> None:
    """The rank that drops the image holds 7 rows, the other 8: the collectives must still
    match (this crashed gloo before), and the loss is still the mean over the 15 real pairs."""
    (tmp_path / "data").mkdir()
    flags = ("--data", str(_captions_with_one_undecodable_image(tmp_path / "data")), "--no-augment")
    reference = _one_process(tmp_path / "one", *flags)
    log = [json.loads(x) for x in (reference / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["final"]["skipped_samples"] == 2  # 4 steps of 16 = 2 epochs: the image came up twice
    _assert_same_training(_two_ranks(tmp_path / "two", *flags), reference)


def test_torchrun_skips_a_step_on_every_rank_when_one_rank_has_no_usable_pair(tmp_path: Path) -> None:
    """8 images, one undecodable, 2 ranks x 2 per step: each epoch (2 steps) deals the broken
    image to one rank, which is left with a single pair and no negative, so that step is skipped.
    Every rank must skip it together: a rank that skips alone leaves the other waiting for it in
    the step's collectives (this hung), or pairs its collectives with the wrong step."""
    (tmp_path / "data").mkdir()
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "edgeclip", "train", *COMMON, "--no-augment", "--batch-size", "2", "--out", str(out),
           "--data", str(_captions_with_one_undecodable_image(tmp_path / "data", images=8))]
    with open(tmp_path / "stderr.txt", "w+") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            _kill_with_ranks(proc)
            pytest.fail("torchrun did not finish in 240 s: a rank waited for one that skipped its step")
        err.seek(0)
        assert proc.returncode == 0, err.read()[-3000:]
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    # 4 steps of 4 = 2 epochs: one step per epoch skipped by both ranks, two trained on 2 x 2 pairs
    assert [r["samples"] for r in rows if "loss" in r] == [4, 8]
    assert rows[-1]["final"]["samples"] == 8 and rows[-1]["final"]["final_loss"] is not None


def _kill_with_ranks(proc: subprocess.Popen[bytes]) -> None:
    """torchrun starts each rank in a session of its own: kill the ranks, then torchrun."""
    ranks = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat")
             if _parent_pid(p) == proc.pid]
    for pid in ranks:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait()


def _parent_pid(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):  # the process ended meanwhile
        return None


_LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_NTASKS", "SLURM_PROCID",
                "SLURM_LOCALID")


def _clean_launch_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for k in _LAUNCH_VARS:  # every variable touched, so monkeypatch restores what the code sets
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def test_srun_variables_become_torchruns(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_launch_env(monkeypatch, SLURM_NTASKS="4", SLURM_PROCID="2", SLURM_LOCALID="1", MASTER_ADDR="node7")
    _slurm_to_torchrun_env()
    assert {k: os.environ.get(k) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")} == {
        "WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "1", "MASTER_PORT": "29500"}

    _clean_launch_env(monkeypatch, SLURM_NTASKS="4", SLURM_PROCID="0")
    with pytest.raises(ConfigError, match="MASTER_ADDR") as e:
        _slurm_to_torchrun_env()
    assert e.value.fix

    _clean_launch_env(monkeypatch, SLURM_NTASKS="1", SLURM_PROCID="0")  # a one-task job is one process
    assert init_world("cpu") == World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))
    assert "WORLD_SIZE" not in os.environ


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_launch_env(monkeypatch)
    with pytest.raises(ConfigError, match="no CUDA device") as e:
        init_world("cuda")
    assert e.value.fix
