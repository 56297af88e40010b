"""`edgeclip train --out DIR` where DIR already holds a run (issue 21, item 1): refused before
any work unless --resume continues it or --overwrite replaces it whole. Two runs never mix."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edgeclip.errors import CheckpointError, ConfigError
from edgeclip.train.config import TrainConfig
from edgeclip.train.loop import train
from edgeclip.train.state import list_checkpoints, resolve_resume, step_dir
from tests.conftest import run_cli

ARGS = ["--model", "test-tiny", "--batch-size", "8", "--warmup-steps", "1", "--no-progress", "--threads", "1",
        "--no-augment", "--log-every", "1"]


def _train(out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return run_cli("train", *ARGS, "--out", str(out), *flags)


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture()
def old_run(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    proc = _train(out, "--steps", "6", "--save-every", "2")
    assert proc.returncode == 0, proc.stderr
    assert [s for s, _ in list_checkpoints(out)] == [2, 4, 6]
    return out


def test_a_new_run_into_a_run_directory_is_refused_and_changes_nothing(old_run: Path) -> None:
    before = _files(old_run)
    # the two cases: pruning that deleted the new step before it was published (a
    # traceback), and a shorter run whose root weights replaced the old ones beside the old steps
    for flags in (("--steps", "2", "--save-every", "1", "--keep-checkpoints", "2"), ("--steps", "3",)):
        proc = _train(old_run, *flags)
        assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
        assert proc.stderr.startswith("Error:") and "Traceback" not in proc.stderr, proc.stderr
        assert "--resume latest" in proc.stderr and "--overwrite" in proc.stderr, proc.stderr
        assert _files(old_run) == before  # nothing written, nothing pruned
    assert resolve_resume("latest", old_run) == step_dir(old_run, 6)


def test_overwrite_replaces_the_old_run_whole(old_run: Path) -> None:
    proc = _train(old_run, "--steps", "3", "--save-every", "1", "--keep-checkpoints", "5", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert [s for s, _ in list_checkpoints(old_run)] == [1, 2, 3]  # steps 4 and 6 of the old run are gone
    assert resolve_resume("latest", old_run) == step_dir(old_run, 3)
    records = [json.loads(x) for x in (old_run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]  # the log is the new run's only
    assert [r["final"]["steps"] for r in records if "final" in r] == [3]
    for name in ("model.safetensors", "config.json"):
        assert (old_run / name).read_bytes() == (step_dir(old_run, 3) / name).read_bytes()
    assert [p.name for p in old_run.parent.iterdir()] == [old_run.name]  # the old run was not left aside


def _fake_run(out: Path) -> None:
    out.mkdir(parents=True)
    (out / "train_log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')


def test_the_refusal_comes_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _fake_run(out)
    step_dir(out, 2).mkdir(parents=True)
    (step_dir(out, 2) / "train_state.pt").write_bytes(b"")  # never read: the refusal comes first
    # a data source that does not exist: opening it (work) would raise DataError first
    cfg = TrainConfig(model="test-tiny", out=str(out), data=[str(tmp_path / "missing.csv")], steps=2,
                      warmup_steps=1, progress=False)
    with pytest.raises(ConfigError, match="already holds a training run") as e:
        train(cfg)
    assert e.value.fix is not None and "--resume latest" in e.value.fix and "--overwrite" in e.value.fix


def test_a_run_killed_before_its_first_checkpoint_is_started_again_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _fake_run(out)  # a log, no checkpoint: nothing to resume, and the two fixes must not send the user in a circle
    cfg = {"model": "test-tiny", "out": str(out), "steps": 2, "warmup_steps": 1, "progress": False}
    with pytest.raises(ConfigError, match="already holds a training run") as refused:
        train(TrainConfig(**cfg))  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="no checkpoint under") as no_checkpoint:
        train(TrainConfig(**cfg, resume="latest"))  # type: ignore[arg-type]
    for e in (refused.value, no_checkpoint.value):
        assert e.fix is not None and "--overwrite" in e.fix and "--resume" not in e.fix, e.fix


def test_overwrite_refuses_to_delete_what_is_not_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    _fake_run(out)
    (out / "notes.txt").write_text("mine")
    common = {"model": "test-tiny", "out": str(out), "steps": 2, "warmup_steps": 1, "progress": False,
              "overwrite": True}
    with pytest.raises(ConfigError, match="notes.txt"):
        train(TrainConfig(**common))  # type: ignore[arg-type]
    (out / "notes.txt").unlink()
    with pytest.raises(ConfigError, match="the weights --init starts from"):
        train(TrainConfig(**common, init=str(out)))  # type: ignore[arg-type]
    monkeypatch.chdir(out)
    with pytest.raises(ConfigError, match="the current directory"):
        train(TrainConfig(**common))  # type: ignore[arg-type]
    assert (out / "train_log.jsonl").is_file()
    with pytest.raises(ConfigError, match="pick one"):
        TrainConfig(**{**common, "resume": "latest"})  # type: ignore[arg-type]
