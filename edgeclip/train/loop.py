"""The CLIP trainer. Reads top to bottom: `train` sets up the world; `_train` builds the run
(train/recipe.py: model and tokenizer, data, optimiser, evaluation sets), then `_run_steps`
runs the step loop with logging, evaluation and checkpoints, and `_finish` evaluates, saves and
reports. Each part takes the run's one state object (`RunState`) explicitly."""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeclip.errors import ConfigError, TrainingError
from edgeclip.model.build import Model
from edgeclip.model.checkpoint import save_checkpoint
from edgeclip.train import zeroshot
from edgeclip.train.config import TrainConfig
from edgeclip.train.distributed import World, all_agree, barrier, init_world, shutdown
from edgeclip.train.gradcache import grad_cache_step
from edgeclip.train.loader import PositionDataset, TrainingData, make_loader, make_stream_loader, normalize_batch
from edgeclip.train.loss import clip_loss
from edgeclip.train.nonfinite import NonFiniteSkipper
from edgeclip.train.progress import Progress, open_log
from edgeclip.train.recipe import (
    EvalSet,
    RunState,
    autocast,
    lr_at,
    setup_data,
    setup_eval,
    setup_model,
    setup_optimizer,
)
from edgeclip.train.state import (
    check_out,
    holds_run,
    list_checkpoints,
    publish,
    remove_run,
    rng_state,
    save_step,
    step_dir,
)

__all__ = ["TrainResult", "apply_gradients", "train"]

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP caps the temperature at 100 (Radford et al. 2021)


@dataclass
class TrainResult:
    checkpoint: str
    steps: int
    samples: int
    seconds: float
    samples_per_s: float
    final_loss: float | None  # None (JSON null) when not known: the last step was skipped, or none ran here
    skipped_steps: int = 0
    skipped_samples: int = 0
    zero_shot: dict[str, float] = field(default_factory=dict)
    eval_skipped: str | None = None  # why there is no zero-shot accuracy, when there is none


def train(cfg: TrainConfig) -> TrainResult:
    check_out(Path(cfg.out), cfg.resume, cfg.overwrite, cfg.init)
    world = init_world(cfg.device)
    try:
        if cfg.overwrite and world.is_main and holds_run(Path(cfg.out)):
            remove_run(Path(cfg.out))
        barrier(world)
        with tempfile.TemporaryDirectory() as scratch:
            return _train(cfg, world, Path(scratch))
    finally:
        shutdown(world)


def _train(cfg: TrainConfig, world: World, scratch: Path) -> TrainResult:
    torch.manual_seed(cfg.seed)  # the model's random init (every rank alike) and the loader's seed
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    m = setup_model(cfg, scratch)
    if m.start_step > cfg.steps:
        raise ConfigError(f"{m.resumed_from} is at step {m.start_step}, past --steps {cfg.steps}",
                          fix=f"pass --steps {m.start_step} or more to continue the run")
    # a finished run resumed: nothing to train, and its saved result stands
    if m.saved_result is not None and m.start_step == cfg.steps and m.resumed_from is not None \
            and m.resumed_from.resolve() == step_dir(Path(cfg.out), cfg.steps).resolve():
        return _finished_run(m.resumed_from, m.saved_result, Path(cfg.out), world)
    # setup_optimizer restores a resumed run's RNG state: nothing after it may draw from torch's
    # RNG before the loader does, or the resumed run would not continue bitwise
    data = setup_data(cfg, m.preprocess, world)
    run = setup_optimizer(cfg, world, m)
    evals = setup_eval(cfg, m.preprocess)
    run.out.mkdir(parents=True, exist_ok=True)  # only now: a run refused above leaves no directory
    with ExitStack() as stack:
        if world.is_main:  # only rank 0 writes files
            run.log = stack.enter_context(open_log(run.out))
            if run.resumed_from is not None:  # marks where this process's lines begin
                run.log.write(json.dumps({"resume": {"from_step": run.start_step,
                                                     "checkpoint": str(run.resumed_from)}}) + "\n")
            run.tb = _tensorboard(stack, run.out)
        _run_steps(run, _loader(run, data), evals)
        return _finish(run, evals)


def _loader(run: RunState, data: TrainingData) -> Iterable[dict[str, Any]]:
    cfg, world = run.cfg, run.world
    pin = run.device.type == "cuda"  # page-locked batches: the copy to the GPU overlaps compute
    if isinstance(data, PositionDataset):
        return make_loader(data, run.start_step, cfg.steps, cfg.batch_size, world.rank, world.size, cfg.workers,
                           pin_memory=pin)
    return make_stream_loader(data, run.start_step, cfg.steps, cfg.batch_size, cfg.workers, pin_memory=pin)


# --- the step loop


def _run_steps(run: RunState, loader: Iterable[dict[str, Any]], evals: EvalSet) -> None:
    cfg = run.cfg
    run.autocast = autocast(cfg, run.device)
    run.t0, run.step, run.counted = time.perf_counter(), run.start_step, dict(run.counters)
    with Progress(cfg.progress and run.world.is_main, cfg.steps, run.start_step) as bar:
        for step, batch in zip(range(run.start_step, cfg.steps), loader, strict=False):
            run.step = step
            run.counters["skipped_samples"] += batch["skipped"]
            # a batch whose images all failed to decode (counted above), or that kept a single pair
            # (no negative), is skipped; under torchrun by every rank together, or the others would
            # wait for this rank in the step's collectives
            if not all_agree(batch["images"] is not None and len(batch["captions"]) >= 2, run.world):
                continue
            loss, norm = train_step(run, batch, step)
            run.done_here += 1
            logging_step = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps
            eval_step = bool(cfg.eval_every) and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps
            save_step_ = bool(cfg.save_every) and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps
            if run.device.type != "cuda" or logging_step or eval_step or save_step_:
                _check_nonfinite(run)  # the only host sync of a CUDA step, and not on every step
            if logging_step:
                _log_step(run, step, loss, norm, bar)
            if eval_step:
                _log_eval(run, step + 1, evaluate(run, evals), evals.no_zero_shot)
            if save_step_:
                save(run, step + 1, {})
    _check_nonfinite(run)


def training_ids(ids: np.ndarray, pooling: str, bidirectional: bool) -> np.ndarray:
    """Token ids as the text tower trains on them: trailing padding trimmed where nothing reads it
    (EOT pooling in a causal tower); kept where last-position pooling reads it or a bidirectional
    tower attends to it, so that training sees the length the tower is exported with."""
    if pooling != "eot" or bidirectional:
        return np.ascontiguousarray(ids)
    return np.ascontiguousarray(ids[:, : int(ids.argmax(1).max()) + 1])


def train_step(run: RunState, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss and backward for one batch, then `apply_gradients`. Returns (loss, gradient
    norm), both still on the device."""
    cfg, model = run.cfg, run.model
    for group in run.opt.param_groups:
        group["lr"] = lr_at(step, cfg)
    pixels = normalize_batch(batch["images"].to(run.device, non_blocking=True), run.preprocess)  # uint8 over the bus
    if cfg.channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    ids = torch.from_numpy(training_ids(run.tokenize(batch["captions"]), run.tokenizer.pooling,
                                        run.model.cfg.text_cfg.no_causal_mask))
    # from pageable memory a copy to the GPU waits for the queued work: pin it first
    ids = (ids.pin_memory() if run.device.type == "cuda" else ids).to(run.device, non_blocking=True)
    if cfg.lock_image:
        model.visual.eval()
    if cfg.accum_steps == 1:
        with run.autocast:
            img_f, txt_f, scale = run.forward(pixels, ids)
        loss = contrastive_loss(run, img_f, txt_f, scale)
        run.scaler.scale(loss).backward()
        if run.ddp and run.siglip is not None:  # DDP averages only the model's gradients
            _average_grads([run.siglip.logit_bias], run.world)
    else:
        loss = grad_cache_step(model, partial(contrastive_loss, run), pixels, ids, cfg.accum_steps,
                               lambda: model.logit_scale.exp(), autocast=lambda: autocast(cfg, run.device),
                               scale_loss=run.scaler.scale)  # fp16: apply_gradients unscales
        _average_grads(run.trainable, run.world)
    norm = apply_gradients(model, run.opt, run.scaler, run.skipper, loss, run.trainable, cfg.grad_clip)
    return loss, norm


def contrastive_loss(run: RunState, img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # a rank whose batch lost undecodable images holds fewer rows: every rank pads to the batch size
    if run.siglip is not None:
        return run.siglip(img, txt, scale, run.world, rows=run.cfg.batch_size)
    return clip_loss(img, txt, scale, run.world, rows=run.cfg.batch_size)


def apply_gradients(
    model: Model, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, skipper: NonFiniteSkipper,
    loss: torch.Tensor, params: list[torch.Tensor], grad_clip: float | None,
) -> torch.Tensor:
    """The second half of a training step, after backward: unscale, clip, step unless the loss or
    gradient norm is not finite (decided on the device), clear the gradients, clamp the logit
    scale. Returns the gradient norm. No host synchronisation."""
    scaler.unscale_(opt)
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
    skipper.step(opt, scaler, loss, norm)
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return norm


def _check_nonfinite(run: RunState) -> None:
    """Bring the device-side skip counters to the host; stop a run that keeps failing."""
    cfg = run.cfg
    skipped, streak = run.skipper.check()
    run.counters["skipped_steps"] = run.counted["skipped_steps"] + skipped
    run.counters["samples"] = run.counted["samples"] + (run.done_here - skipped) * cfg.batch_size * run.world.size
    if streak >= cfg.max_bad_steps:
        last = list_checkpoints(run.out)
        raise TrainingError(
            f"{streak} non-finite steps in a row by step {run.step + 1}; stopping",
            fix=f"lower --lr or use --grad-clip; last good checkpoint: {last[-1][1] if last else 'none'}",
        )


def _log_step(run: RunState, step: int, loss: torch.Tensor, norm: torch.Tensor, bar: Progress) -> None:
    cfg = run.cfg
    run.loss_value = float(loss.detach())
    elapsed = time.perf_counter() - run.t0
    rec = {"step": step + 1, "loss": _finite(run.loss_value, 5), "lr": lr_at(step, cfg),
           "logit_scale": round(float(run.model.logit_scale.detach().exp()), 3),
           "grad_norm": _finite(float(norm), 4),
           "samples_per_s": round(run.done_here * cfg.batch_size * run.world.size / elapsed, 1),
           "elapsed_s": round(elapsed, 2), **run.counters}
    if run.log:
        run.log.write(json.dumps(rec) + "\n")
        run.log.flush()
    if run.tb is not None:
        for key in ("loss", "lr", "logit_scale", "grad_norm", "samples_per_s"):
            if rec[key] is not None:
                run.tb.add_scalar(f"train/{key}", rec[key], step + 1)
    bar.update(step + 1, rec)


# --- evaluation, checkpoints and the result


def evaluate(run: RunState, evals: EvalSet) -> dict[str, float]:
    """Zero-shot accuracy and retrieval recall on the held-out sets, on the main rank (the
    others wait): {name: value}, empty when the data has no held-out split."""
    barrier(run.world)
    res: dict[str, float] = {}
    if run.world.is_main:
        res = zeroshot.evaluate(run.model, run.tokenize, evals.transform, evals.tasks) if evals.tasks else {}
        if evals.pairs:
            res.update(zeroshot.retrieval(run.model, run.tokenize, evals.transform, *evals.pairs))
    barrier(run.world)
    return res


def _log_eval(run: RunState, step: int, ev: dict[str, float], no_zero_shot: str | None) -> None:
    if run.log and (ev or no_zero_shot):
        run.log.write(json.dumps(_eval_record(step, ev, no_zero_shot)) + "\n")
    if run.tb is not None:
        for key, value in ev.items():
            run.tb.add_scalar(f"eval/{key}", value, step)


def save(run: RunState, step: int, meta_extra: dict[str, Any]) -> None:
    """A complete step directory (weights, tokenizer, optimiser/RNG state) written by the main
    rank, then published as OUT's weights; every rank waits for it."""
    barrier(run.world)
    if run.world.is_main:
        here = step_dir(run.out, step)
        if run.resumed_from is not None and step == run.start_step and run.resumed_from.resolve() == here.resolve():
            path = here  # a finished run resumed: its last step is on disk already
        else:
            meta = {"train": asdict(run.cfg), **meta_extra}
            state = {"step": step, "optimizer": run.opt.state_dict(), "scaler": run.scaler.state_dict(),
                     "rng": rng_state(), **run.counters}
            if run.siglip is not None:
                state["siglip"] = run.siglip.state_dict()
            path = save_step(run.out, step, lambda d: save_checkpoint(d, run.model, run.tokenizer_file,
                                                                      run.preprocess, run.tokenizer, meta),
                             state, run.cfg.keep_checkpoints)
        publish(path, run.out)  # again if it was: a crash may have come between save and publish
    barrier(run.world)


def _finish(run: RunState, evals: EvalSet) -> TrainResult:
    """Evaluate, save the last step with the result in its metadata, and log the result."""
    cfg, world = run.cfg, run.world
    seconds = time.perf_counter() - run.t0
    zs = evaluate(run, evals)
    if run.log and not zs and evals.no_zero_shot:
        run.log.write(json.dumps(_eval_record(cfg.steps, zs, evals.no_zero_shot)) + "\n")
    result = TrainResult(
        checkpoint=str(run.out), steps=cfg.steps, samples=run.counters["samples"], seconds=round(seconds, 2),
        samples_per_s=round(run.done_here * cfg.batch_size * world.size / max(seconds, 1e-9), 1),
        final_loss=_finite(run.loss_value, 5), skipped_steps=run.counters["skipped_steps"],
        skipped_samples=run.counters["skipped_samples"], zero_shot={k: round(v, 4) for k, v in zs.items()},
        eval_skipped=evals.no_zero_shot,
    )
    save(run, cfg.steps, {"result": asdict(result)})
    if run.log:
        run.log.write(json.dumps({"final": asdict(result)}) + "\n")
    return result


def _eval_record(step: int, ev: dict[str, float], skipped: str | None) -> dict[str, Any]:
    """A log line for an evaluation point; `eval: null` with the reason when nothing was evaluated."""
    return {"step": step, "eval": ev} if ev else {"step": step, "eval": None, "eval_skipped": skipped}


def _finished_run(last: Path, saved: dict[str, Any], out: Path, world: World) -> TrainResult:
    """--resume of a run that already reached --steps: nothing is trained, evaluated or logged
    again, and the result is the one the run saved. OUT's weights are published again: a crash
    may have come between the last checkpoint and their publication."""
    if world.is_main:
        publish(last, out)
    barrier(world)
    known = {f.name for f in fields(TrainResult)}
    result = TrainResult(**{k: v for k, v in saved.items() if k in known})
    # a run saved before final_loss could be null stored NaN
    result.final_loss = None if result.final_loss is None else _finite(float(result.final_loss), 5)
    return result


def _finite(x: float, digits: int) -> float | None:
    """A logged number; None (JSON null) for the loss or norm of a skipped non-finite step."""
    return round(x, digits) if math.isfinite(x) else None


def _tensorboard(stack: ExitStack, out: Path) -> Any:
    """A TensorBoard writer when `tensorboard` is installed (optional), else None."""
    from edgeclip import _deps

    if not _deps.has("tensorboard"):
        return None
    from torch.utils.tensorboard import SummaryWriter

    return stack.enter_context(SummaryWriter(str(out / "tensorboard")))


def _average_grads(params: list[torch.Tensor], world: World) -> None:
    """What DDP does, by hand: used with GradCache, whose backward runs outside DDP's forward."""
    if not world.distributed:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world.size)
