"""A rich progress bar showing loss and samples/s; silent when disabled (and on non-main ranks)."""

from __future__ import annotations

from typing import Any


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
