"""Resuming a run that already finished (issue 21, item 6): the saved result is reported as valid
JSON, nothing is trained or logged again; a checkpoint past --steps is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgeclip.errors import ConfigError
from edgeclip.train.config import TrainConfig
from edgeclip.train.loop import train
from tests.conftest import run_cli

ARGS = ["--model", "test-tiny", "--batch-size", "8", "--warmup-steps", "1", "--no-progress", "--threads", "1",
        "--no-augment", "--log-every", "1", "--eval-every", "0"]


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_resuming_a_finished_run_reports_its_result_and_logs_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = run_cli("train", *ARGS, "--steps", "4", "--save-every", "2", "--out", str(out))
    assert first.returncode == 0, first.stderr
    log = (out / "train_log.jsonl").read_text()
    again = run_cli("train", *ARGS, "--steps", "4", "--save-every", "2", "--out", str(out), "--resume", "latest")
    assert again.returncode == 0, again.stderr
    assert _strict_json(again.stdout) == _strict_json(first.stdout)  # the run's own result, valid JSON
    assert (out / "train_log.jsonl").read_text() == log  # no second `final` entry, nothing else either
    assert sum('"final"' in line for line in log.splitlines()) == 1


def test_a_checkpoint_past_steps_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg: dict[str, Any] = {"model": "test-tiny", "out": str(out), "batch_size": 8, "warmup_steps": 1,
                           "progress": False, "augment": False, "eval_size": 8, "tokenizer_samples": 200}
    train(TrainConfig(**cfg, steps=4, save_every=2))
    with pytest.raises(ConfigError, match="at step 4, past --steps 2"):
        train(TrainConfig(**cfg, steps=2, resume="latest"))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
