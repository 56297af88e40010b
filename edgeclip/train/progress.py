"""A rich progress bar showing loss and samples/s; silent when disabled (and on non-main ranks).
And the JSONL log the trainer appends to."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TextIO


class Progress:
    def __init__(self, enabled: bool, total: int, start: int = 0) -> None:
        self.enabled, self.total, self.start = enabled, total, start

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._p = RichProgress(
                TextColumn("train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
            )
            self._p.__enter__()
            self._task = self._p.add_task("train", total=self.total, completed=self.start, info="")
        return self

    def update(self, step: int, rec: dict[str, Any]) -> None:
        if self.enabled:
            loss = "nan" if rec["loss"] is None else f"{rec['loss']:.3f}"
            info = (f"loss {loss}  lr {rec['lr']:.2e}  scale {rec['logit_scale']:.1f}  "
                    f"{rec['samples_per_s']:.0f} samples/s")
            self._p.update(self._task, completed=step, info=info)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._p.__exit__(None, None, None)


def open_log(out: Path) -> TextIO:
    """The JSONL log, opened to append. A line that a killed run left unfinished is ended first,
    so the next record starts a line of its own."""
    path = out / "train_log.jsonl"
    unfinished = False
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            unfinished = f.read(1) != b"\n"
    log = open(path, "a", encoding="utf-8")
    if unfinished:
        log.write("\n")
    return log
