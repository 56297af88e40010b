"""A minimal but correct single-process CLIP trainer.

Reads top to bottom: data and tokenizer, model, optimiser and schedule, the step loop,
evaluation, checkpoint. The trainer issue extends it (distributed, resume, accumulation).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeclip.bundle import PreprocessConfig
from edgeclip.errors import ConfigError, DataError
from edgeclip.model.checkpoint import save_checkpoint
from edgeclip.model.clip import CLIP
from edgeclip.model.config import get_config
from edgeclip.model.tokenizer import train_tokenizer
from edgeclip.runtime.tokenizer import TextTokenizer
from edgeclip.train.data import open_source, zero_shot_tasks
from edgeclip.train.loss import clip_loss
from edgeclip.train.transforms import eval_transform
from edgeclip.train.zeroshot import evaluate

# ln(100): CLIP caps the temperature so logits cannot blow up (Radford et al. 2021)
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class TrainConfig:
    model: str = "edge-tiny"
    data: str = "builtin:shapes"
    out: str = "checkpoints/run"
    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    seed: int = 0
    threads: int | None = None
    log_every: int = 20
    eval_size: int = 480  # held-out images for zero-shot evaluation at the end
    tokenizer_samples: int = 4000  # captions used to learn the BPE merges
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        if self.batch_size < 2:
            raise ConfigError("--batch-size must be >= 2: a contrastive loss needs negatives")


@dataclass
class TrainResult:
    checkpoint: str
    steps: int
    samples: int
    seconds: float
    samples_per_s: float
    final_loss: float
    zero_shot: dict[str, float] = field(default_factory=dict)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to zero."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: CLIP, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on gains, biases, embeddings and the logit scale (CLIP practice)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(cfg: TrainConfig) -> TrainResult:
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model_cfg = get_config(cfg.model)
    pre = PreprocessConfig(image_size=model_cfg.vision_cfg.image_size)
    out = Path(cfg.out)

    # --- data and tokenizer: BPE merges learnt from the training captions themselves
    data = open_source(cfg.data, size=cfg.steps * cfg.batch_size, image_size=pre.image_size, seed=cfg.seed)
    if len(data) == 0:
        raise DataError(f"data source '{cfg.data}' is empty")
    captions = (data[i][1] for i in range(min(cfg.tokenizer_samples, len(data))))
    tok, tok_cfg = train_tokenizer(captions, model_cfg.text_cfg.vocab_size, model_cfg.text_cfg.context_length)
    tmpdir = tempfile.TemporaryDirectory()
    tok_file = Path(tmpdir.name) / "tokenizer.json"
    tok.save(str(tok_file))
    tokenize = TextTokenizer(tok_file, tok_cfg)
    transform = eval_transform(pre)

    # --- model and optimiser
    model = CLIP(model_cfg).train()
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "train_log.jsonl", "a", encoding="utf-8")

    # --- the step loop
    order = np.random.default_rng(cfg.seed).permutation(len(data))
    t0 = time.perf_counter()
    loss_value = float("nan")
    with _progress(cfg.progress, cfg.steps) as bar:
        for step in range(cfg.steps):
            idx = order[(np.arange(cfg.batch_size) + step * cfg.batch_size) % len(data)]
            pairs = [data[int(i)] for i in idx]
            pixels = torch.stack([transform(img) for img, _ in pairs])
            ids_np = tokenize([c for _, c in pairs])
            ids = torch.from_numpy(ids_np[:, : int(ids_np.argmax(1).max()) + 1])  # drop all-padding columns

            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            img_f, txt_f, scale = model(pixels, ids)
            loss = clip_loss(img_f, txt_f, scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                loss_value = float(loss.detach())
                elapsed = time.perf_counter() - t0
                rec = {
                    "step": step + 1,
                    "loss": round(loss_value, 5),
                    "lr": lr_at(step, cfg),
                    "logit_scale": round(float(model.logit_scale.detach().exp()), 3),
                    "samples_per_s": round((step + 1) * cfg.batch_size / elapsed, 1),
                    "elapsed_s": round(elapsed, 2),
                }
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.update(step + 1, rec)
    seconds = time.perf_counter() - t0

    # --- evaluation on held-out combinations, then the checkpoint
    tasks = zero_shot_tasks(cfg.data, image_size=pre.image_size, size=cfg.eval_size, seed=cfg.seed)
    zs = evaluate(model, tokenize, transform, tasks) if tasks else {}
    result = TrainResult(
        checkpoint=str(out),
        steps=cfg.steps,
        samples=cfg.steps * cfg.batch_size,
        seconds=round(seconds, 2),
        samples_per_s=round(cfg.steps * cfg.batch_size / seconds, 1),
        final_loss=round(loss_value, 5),
        zero_shot={k: round(v, 4) for k, v in zs.items()},
    )
    log.write(json.dumps({"final": asdict(result)}) + "\n")
    log.close()
    save_checkpoint(out, model, tok_file, pre, tok_cfg, meta={"train": asdict(cfg), "result": asdict(result)})
    tmpdir.cleanup()
    return result


class _progress:
    """A rich progress bar showing loss and samples/s; silent when disabled."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total

    def __enter__(self) -> _progress:
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._p = Progress(
                TextColumn("train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
            )
            self._p.__enter__()
            self._task = self._p.add_task("train", total=self.total, info="")
        return self

    def update(self, step: int, rec: dict[str, Any]) -> None:
        if self.enabled:
            info = f"loss {rec['loss']:.3f}  {rec['samples_per_s']:.0f} samples/s"
            self._p.update(self._task, completed=step, info=info)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._p.__exit__(None, None, None)
