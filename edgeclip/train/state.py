"""Checkpoints during training: one directory per saved step, written atomically.

    OUT/checkpoints/step_00000100/   config.json  model.safetensors  tokenizer.json  train_state.pt
    OUT/                             the final (or latest) weights, what `edgeclip export` reads

A step directory is built under a temporary name and renamed when complete, so a crash at
any point leaves every earlier checkpoint intact and never a half-written one that looks
complete. train_state.pt holds only tensors and plain containers: it loads with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from edgeclip._io import atomic_dir, atomic_path
from edgeclip.errors import CheckpointError, ConfigError

STATE = "train_state.pt"
_RUN_MARKS = ("checkpoints", "config.json", "model.safetensors", "train_log.jsonl")
_RUN_ENTRIES = (*_RUN_MARKS, "tokenizer.json", "tensorboard")
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step_{step:08d}"


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    _finish_swaps(root)
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / STATE).is_file()]
    return sorted(found)


def _finish_swaps(root: Path) -> None:
    """Complete a step-directory swap (see save_step) that a crash interrupted between its two
    renames: the new directory (complete: it is renamed into `.new` only when written) wins,
    else the old one goes back."""
    for staged in root.glob(".step_*.new"):
        dst = root / staged.name[1 : -len(".new")]
        if not dst.exists() and (staged / STATE).is_file():
            os.rename(staged, dst)
    for aside in root.glob(".step_*.old"):
        dst = root / aside.name[1 : -len(".old")]
        if not dst.exists():
            os.rename(aside, dst)
        else:
            shutil.rmtree(aside, ignore_errors=True)


def resolve_resume(resume: str, out: Path) -> Path:
    """`latest` -> the newest complete step directory under OUT; otherwise a path to one."""
    if resume == "latest":
        found = list_checkpoints(out)
        if not found:
            fix = ("the run there saved none: start it again with --overwrite" if holds_run(out)
                   else "start without --resume, or pass --out of the run to resume")
            raise CheckpointError(f"--resume latest: no checkpoint under {out / 'checkpoints'}", fix=fix)
        return found[-1][1]
    path = Path(resume)
    if not (path / STATE).is_file():
        raise CheckpointError(f"--resume {resume}: not a training checkpoint ({STATE} missing)",
                              fix="pass OUT/checkpoints/step_NNNNNNNN or --resume latest")
    return path


def save_step(out: Path, step: int, write_weights: Any, state: dict[str, Any], keep: int) -> Path:
    """Write a complete step directory atomically, then prune to the newest `keep`."""
    dst = step_dir(out, step)
    if dst.exists():
        # the step is written again: build the new one beside it, then swap, so a crash at any
        # point leaves a complete step directory (and whatever `write_weights` reads from the old
        # one, such as a resumed run's tokenizer, is still there while it writes)
        new, aside = dst.with_name(f".{dst.name}.new"), dst.with_name(f".{dst.name}.old")
        for leftover in (new, aside):  # from a crash during an earlier swap
            shutil.rmtree(leftover, ignore_errors=True)
        with atomic_dir(new) as tmp:
            write_weights(tmp)
            torch.save(state, tmp / STATE)
        os.rename(dst, aside)
        os.rename(new, dst)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        with atomic_dir(dst) as tmp:
            write_weights(tmp)
            torch.save(state, tmp / STATE)
    for _, old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return dst


def holds_run(out: Path) -> bool:
    """True when OUT already has a run's checkpoints, published weights or log."""
    return any((out / name).exists() for name in _RUN_MARKS)


def foreign_entries(out: Path) -> list[str]:
    """Names in OUT that no run writes (and no atomic write left behind): --overwrite keeps off them."""
    return sorted(p.name for p in out.iterdir()
                  if p.name not in _RUN_ENTRIES and not any(p.name.startswith(f".{e}.") for e in _RUN_ENTRIES))


def remove_run(out: Path) -> None:
    """Delete the run in OUT for --overwrite. One rename takes it out of OUT first, so a crash
    leaves either the whole old run or none of it, never a mix with the new one."""
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".overwritten", dir=out.parent))
    os.rename(out, aside / out.name)
    shutil.rmtree(aside, ignore_errors=True)


def check_out(out: Path, resume: str | None, overwrite: bool, init: str | None) -> None:
    """Refuse, before any work, a run that would mix with (or silently delete) one already in
    --out: its step directories would stay beside the new ones and `--resume latest` could pick
    one of them. Every rank checks, before the process group forms (no rank has written yet)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file", fix="choose a directory for --out")
    if not holds_run(out):
        return
    if resume:
        src = resolve_resume(resume, out)
        if src.resolve().parent.parent != out.resolve():
            raise ConfigError(f"--resume {resume} is another run's checkpoint, and {out} holds a run already",
                              fix="resume into an empty --out, or pass --resume latest to continue the run in it")
        return
    if not overwrite:
        fix = ("continue it with --resume latest, replace it with --overwrite, or choose another --out"
               if list_checkpoints(out) else
               "it saved no checkpoint to resume from: replace it with --overwrite, or choose another --out")
        raise ConfigError(f"{out} already holds a training run (checkpoints, weights or log)", fix=fix)
    doomed = out.resolve()
    foreign = foreign_entries(out)
    if foreign:
        raise ConfigError(f"--overwrite: {out} also holds files no run writes ({', '.join(foreign[:5])})",
                          fix="move them elsewhere, or choose another --out")
    if doomed in (Path.cwd(), *Path.cwd().parents):
        raise ConfigError(f"--overwrite would delete {out}, the current directory", fix="choose another --out")
    if init and doomed in (Path(init).resolve(), *Path(init).resolve().parents):
        raise ConfigError(f"--overwrite would delete {init}, the weights --init starts from",
                          fix="copy them out of --out first, or choose another --out")


def publish(src: Path, out: Path) -> None:
    """Copy a step's weights to OUT's top level, file by file atomically."""
    for name in ("tokenizer.json", "model.safetensors", "config.json"):  # config last: readers key on it
        with atomic_path(out / name) as tmp:
            shutil.copyfile(src / name, tmp)


def load_state(path: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors have many types; all mean the same to the user
        raise CheckpointError(f"cannot load {path / STATE} (refused or corrupt): {e}") from e
    return state


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])
