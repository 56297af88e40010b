"""Training under faults: SIGKILL at seeded random points (also inside checkpoint writes) and a
disk that fills up. After every fault no file is corrupt, no complete checkpoint is lost, and the
resumed run ends bitwise equal to an uninterrupted one."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.train.config import TrainConfig
from edgeclip.train.loop import train
from edgeclip.train.state import list_checkpoints, load_state
from tests.conftest import REPO

ARGS = ["--model", "test-tiny", "--batch-size", "8", "--warmup-steps", "2", "--no-progress", "--threads", "1",
        "--log-every", "1", "--no-augment", "--eval-every", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cmd(out: Path, steps: int, save_every: int, resume: bool) -> list[str]:
    # a run killed before its first checkpoint has nothing to resume: it is started again
    extra = ["--resume", "latest"] if resume else ["--overwrite"] if out.exists() else []
    return [sys.executable, "-m", "edgeclip", "train", *ARGS, "--steps", str(steps), "--save-every",
            str(save_every), "--out", str(out), *extra]


def _integrity(out: Path) -> tuple[int, list[str]]:
    """(complete checkpoints, problems): every complete step dir and OUT's weights must load."""
    problems = []
    found = list_checkpoints(out)
    for _, step in found:
        try:
            load_checkpoint(step)
            load_state(step)
        except Exception as e:
            problems.append(f"{step.name}: {type(e).__name__}: {e}")
    if (out / "config.json").exists():
        try:
            load_checkpoint(out)
        except Exception as e:
            problems.append(f"OUT: {type(e).__name__}: {e}")
    return len(found), problems


def _appended_steps(log: Path, offset: int) -> list[int]:
    """Steps logged after `offset` (one process's lines); a line cut by SIGKILL is left out."""
    text = log.read_text()[offset:] if log.exists() else ""
    lines = text.split("\n")[:-1]  # the last piece is either empty or cut mid-write
    return [r["step"] for r in map(json.loads, lines) if "loss" in r]


def _kill_once(out: Path, steps: int, save_every: int, how: str, delay: float) -> tuple[bool, bool, list[int]]:
    """Start (or resume) a run and SIGKILL it; -> (killed, killed inside a checkpoint write,
    steps this process logged that did not start right after the checkpoint it resumed from)."""
    found = list_checkpoints(out)
    resume, saved = bool(found), (found[-1][0] if found else 0)
    log = out / "train_log.jsonl"
    offset = len(log.read_text()) if resume else 0
    proc = subprocess.Popen(_cmd(out, steps, save_every, resume), cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts, in_write = out / "checkpoints", False
    start = time.monotonic()
    while proc.poll() is None and time.monotonic() - start < 300:
        if how == "write":
            try:
                with os.scandir(ckpts) as it:
                    in_write = any(e.name.endswith(".partial") for e in it)
            except FileNotFoundError:
                pass
            if in_write:
                break
        elif log.exists() and time.monotonic() - start > delay:
            break
    proc.send_signal(signal.SIGKILL)  # no chance to clean up, as in a real crash
    proc.wait()
    logged = _appended_steps(log, offset)
    restarted = [] if logged == list(range(saved + 1, saved + 1 + len(logged))) else logged
    return proc.returncode == -signal.SIGKILL, in_write, restarted


@pytest.fixture(scope="module")
def reference() -> dict[tuple[int, int], dict[str, torch.Tensor]]:
    """Uninterrupted runs' final weights, keyed by (steps, save_every)."""
    return {}


def _straight(cache: dict[Any, Any], tmp: Path, steps: int, save_every: int) -> dict[str, torch.Tensor]:
    if (steps, save_every) not in cache:
        out = tmp / f"straight-{steps}-{save_every}"
        subprocess.run(_cmd(out, steps, save_every, False), check=True, capture_output=True, cwd=REPO, env=ENV)
        cache[steps, save_every] = load_file(str(out / "model.safetensors"))
    return cache[steps, save_every]


def _kill_matrix(kills: int, steps: int, save_every: int, seed: int, tmp: Path, cache: dict[Any, Any],
                 record_property: Any) -> None:
    rng = random.Random(seed)
    out = tmp / "killed"
    landed = in_write = lost = 0
    problems: list[str] = []
    restarted: list[list[int]] = []
    for i in range(kills):
        how = "write" if i % 2 == 0 else "time"  # alternate: inside a checkpoint write / anywhere
        before = list_checkpoints(out)
        killed, wrote, wrong = _kill_once(out, steps, save_every, how, delay=rng.uniform(0.0, 4.0))
        landed += killed
        restarted += [wrong] if wrong else []
        in_write += wrote
        _, bad = _integrity(out)
        problems += bad
        after = list_checkpoints(out)
        if before and (not after or after[-1][0] < before[-1][0]):
            lost += 1
    saved = list_checkpoints(out)[-1][0] if list_checkpoints(out) else 0
    offset = len((out / "train_log.jsonl").read_text()) if saved else 0
    subprocess.run(_cmd(out, steps, save_every, bool(saved)), check=True, capture_output=True, cwd=REPO, env=ENV)
    if _appended_steps(out / "train_log.jsonl", offset) != list(range(saved + 1, steps + 1)):
        restarted.append(_appended_steps(out / "train_log.jsonl", offset))
    _, bad = _integrity(out)
    problems += bad
    a, b = _straight(cache, tmp, steps, save_every), load_file(str(out / "model.safetensors"))
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    for key, value in {"kills": landed, "kills_in_checkpoint_write": in_write, "corrupt_files": len(problems),
                       "lost_checkpoints": lost, "weights_differ": len(differ),
                       "resumes_not_continuing": len(restarted)}.items():
        record_property(key, value)
    assert landed >= 1, "every run finished before it could be killed"
    assert not problems, problems
    assert lost == 0
    assert not restarted, f"a resumed process did not start right after its checkpoint: {restarted}"
    assert a.keys() == b.keys() and not differ, differ[:3]


def test_sigkill_inside_a_checkpoint_write_then_resume(tmp_path: Path, reference: dict[Any, Any],
                                                       record_property: Any) -> None:
    _kill_matrix(1, steps=6, save_every=2, seed=0, tmp=tmp_path, cache=reference, record_property=record_property)


@pytest.mark.slow
def test_sigkill_at_five_random_points_then_resume(tmp_path: Path, reference: dict[Any, Any],
                                                   record_property: Any) -> None:
    _kill_matrix(6, steps=24, save_every=3, seed=1, tmp=tmp_path, cache=reference, record_property=record_property)


def _leftovers(out: Path) -> list[str]:
    return [str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith((".partial", ".tmp"))]


@pytest.mark.parametrize("target", ["safetensors", "torch.save"])
def test_disk_full_on_the_second_checkpoint_keeps_the_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            target: str, record_property: Any) -> None:
    import edgeclip.model.checkpoint as ckpt_mod

    real = ckpt_mod.save_file if target == "safetensors" else torch.save
    calls = {"n": 0}

    def full_disk(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kw)

    if target == "safetensors":
        monkeypatch.setattr(ckpt_mod, "save_file", full_disk)
    else:
        monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "run"
    cfg = TrainConfig(model="test-tiny", out=str(out), steps=4, batch_size=8, warmup_steps=1, save_every=2,
                      progress=False, augment=False, eval_size=8, tokenizer_samples=200, threads=1)
    with pytest.raises(OSError) as e:
        train(cfg)
    assert e.value.errno == errno.ENOSPC  # the failure surfaces; nothing pretends to have saved
    monkeypatch.undo()
    found, problems = _integrity(out)
    leftovers = _leftovers(out)
    record_property("inputs", 1)
    record_property("corrupt_files", len(problems) + len(leftovers))
    record_property("lost_checkpoints", int(found != 1))
    assert [s for s, _ in list_checkpoints(out)] == [2]
    assert not problems and not leftovers, (problems, leftovers)
    # OUT's published weights are those of step 2, complete
    a = load_file(str(out / "model.safetensors"))
    b = load_file(str(out / "checkpoints" / "step_00000002" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
