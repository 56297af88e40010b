"""The CLIP trainer. Reads top to bottom: world, model and tokenizer (fresh, --init or
--resume), data, optimiser, then the step loop with logging, evaluation and checkpoints."""

from __future__ import annotations

import itertools
import json
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeclip.bundle import PreprocessConfig, TokenizerConfig
from edgeclip.errors import CheckpointError, ConfigError, DataError, EdgeclipError
from edgeclip.model.checkpoint import load_checkpoint, save_checkpoint
from edgeclip.model.clip import CLIP
from edgeclip.model.config import get_config
from edgeclip.model.tokenizer import train_tokenizer
from edgeclip.runtime.tokenizer import TextTokenizer
from edgeclip.train import state as ckpt
from edgeclip.train.config import TrainConfig
from edgeclip.train.data import open_source, open_stream, retrieval_pairs, zero_shot_tasks
from edgeclip.train.distributed import World, barrier, init_world, shutdown
from edgeclip.train.gradcache import grad_cache_step
from edgeclip.train.loader import PositionDataset, StreamDataset, make_loader, make_stream_loader, normalize_batch
from edgeclip.train.loss import SIGLIP_LOGIT_SCALE_INIT, SigLipLoss, clip_loss
from edgeclip.train.nonfinite import NonFiniteGuard
from edgeclip.train.progress import Progress, open_log
from edgeclip.train.sources import is_webdataset
from edgeclip.train.transforms import eval_transform
from edgeclip.train.zeroshot import evaluate, retrieval

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "apply_gradients", "lr_at", "param_groups", "train"]

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP caps the temperature at 100 (Radford et al. 2021)


class TrainingError(EdgeclipError):
    """The run cannot continue (e.g. too many non-finite steps in a row)."""


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


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine to zero, constant, or constant with a linear cooldown."""
    warmup = cfg.warmup_steps or 0  # set by TrainConfig
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "constant-cooldown":
        left = cfg.steps - step
        return cfg.lr if left > cfg.cooldown_steps else cfg.lr * left / max(1, cfg.cooldown_steps)
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on gains, biases, embeddings and the logit scale (CLIP practice)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class Setup:
    model: CLIP
    preprocess: PreprocessConfig
    tokenizer_file: Path
    tokenizer: TokenizerConfig
    start_step: int
    state: dict[str, Any] | None
    resumed_from: Path | None = None
    saved_result: dict[str, Any] | None = None  # the result a finished run saved with its last step


def _scratch_copy(tokenizer_file: Path, scratch: Path) -> Path:
    """The run's own copy of a loaded tokenizer: the step directory it came from may be pruned
    (keep_checkpoints) before the run saves again."""
    dst = scratch / "tokenizer.json"
    shutil.copyfile(tokenizer_file, dst)
    return dst


def _setup_model(cfg: TrainConfig, scratch: Path) -> Setup:
    """Model + tokenizer from --resume, --init, or fresh (BPE learnt from the captions)."""
    if cfg.resume:
        path = ckpt.resolve_resume(cfg.resume, Path(cfg.out))
        model, info = load_checkpoint(path)
        if cfg.model and cfg.model != info.model.name:
            raise CheckpointError(f"{path} is a checkpoint of '{info.model.name}', not '{cfg.model}'",
                                  fix="resume with the same --model (or omit it)")
        st = ckpt.load_state(path)
        return Setup(model.train(), info.preprocess, _scratch_copy(info.tokenizer_path, scratch), info.tokenizer,
                     int(st["step"]), st, resumed_from=path, saved_result=info.meta.get("result"))
    if cfg.init:
        model, info = load_checkpoint(cfg.init)
        if cfg.model:
            wanted = get_config(cfg.model)
            if wanted.quick_gelu != info.model.quick_gelu and not cfg.force_activation:
                raise ConfigError(
                    f"--init weights use {'QuickGELU' if info.model.quick_gelu else 'GELU'} but '{cfg.model}' "
                    f"uses {'QuickGELU' if wanted.quick_gelu else 'GELU'}: the model would run but lose accuracy",
                    fix="use the checkpoint's config (omit --model) or pass --force-activation",
                )
        return Setup(model.train(), info.preprocess, _scratch_copy(info.tokenizer_path, scratch), info.tokenizer, 0,
                     None)
    model_cfg = get_config(cfg.model or "edge-tiny")
    pre = PreprocessConfig(image_size=model_cfg.vision_cfg.image_size)
    captions: Iterator[str]
    if is_webdataset(cfg.data[0]):
        stream = open_stream(cfg.data[0], cfg.seed).samples(0)
        captions = itertools.islice((c for _, c in stream), cfg.tokenizer_samples)
    else:
        first = open_source(cfg.data[0], image_size=pre.image_size, seed=cfg.seed)
        captions = (first[i][1] for i in range(min(cfg.tokenizer_samples, len(first))))
    tok, tok_cfg = train_tokenizer(captions, model_cfg.text_cfg.vocab_size, model_cfg.text_cfg.context_length)
    tok_file = scratch / "tokenizer.json"
    tok.save(str(tok_file))
    return Setup(CLIP(model_cfg).train(), pre, tok_file, tok_cfg, 0, None)


def _open_data(cfg: TrainConfig, pre: PreprocessConfig, world: World) -> PositionDataset | StreamDataset:
    if len(cfg.data) == 1 and is_webdataset(cfg.data[0]):
        return StreamDataset(open_stream(cfg.data[0], cfg.seed), cfg.seed, pre, cfg.augment, world.rank, world.size)
    sources = [open_source(s, image_size=pre.image_size, seed=cfg.seed) for s in cfg.data]
    for spec, src in zip(cfg.data, sources, strict=True):
        if len(src) == 0:
            raise DataError(f"data source '{spec}' is empty", fix="check the path and its contents")
    return PositionDataset(sources, cfg.data_weights, cfg.seed, pre, cfg.augment)


def _autocast(cfg: TrainConfig, device: torch.device) -> AbstractContextManager[Any]:
    if cfg.precision == "fp32":
        return nullcontext()
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs CUDA (GradScaler); use bf16 on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.precision == "bf16" else torch.float16)


def train(cfg: TrainConfig) -> TrainResult:
    ckpt.check_out(Path(cfg.out), cfg.resume, cfg.overwrite, cfg.init)
    world = init_world(cfg.device)
    try:
        if cfg.overwrite and world.is_main and ckpt.holds_run(Path(cfg.out)):
            ckpt.remove_run(Path(cfg.out))
        barrier(world)
        with tempfile.TemporaryDirectory() as scratch:
            return _train(cfg, world, Path(scratch))
    finally:
        shutdown(world)


def _train(cfg: TrainConfig, world: World, scratch: Path) -> TrainResult:
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out, dev = Path(cfg.out), world.device
    s = _setup_model(cfg, scratch)
    if s.start_step > cfg.steps:
        raise ConfigError(f"{s.resumed_from} is at step {s.start_step}, past --steps {cfg.steps}",
                          fix=f"pass --steps {s.start_step} or more to continue the run")
    if s.saved_result is not None and s.start_step == cfg.steps and s.resumed_from is not None \
            and s.resumed_from.resolve() == ckpt.step_dir(out, cfg.steps).resolve():
        return _finished_run(s.resumed_from, s.saved_result, out, world)
    model, pre = s.model, s.preprocess
    tokenize = TextTokenizer(s.tokenizer_file, s.tokenizer)
    data = _open_data(cfg, pre, world)

    # --- towers to train; LiT keeps a locked tower in eval mode (frozen BatchNorm statistics)
    for locked, tower in ((cfg.lock_image, model.visual), (cfg.lock_text, model.transformer)):
        if locked:
            tower.requires_grad_(False)
    if cfg.lock_text:
        for p in (model.token_embedding.weight, model.positional_embedding, model.text_projection):
            p.requires_grad_(False)
        model.ln_final.requires_grad_(False)
    siglip = SigLipLoss() if cfg.loss == "siglip" else None
    if siglip is not None and s.state is None and not cfg.init:
        with torch.no_grad():
            model.logit_scale.fill_(SIGLIP_LOGIT_SCALE_INIT)
    model.to(dev)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # the 4-D conv weights
    if siglip is not None:
        siglip.to(dev)
    groups = param_groups(model, cfg.weight_decay)
    if siglip is not None:
        groups[1]["params"] = [*groups[1]["params"], siglip.logit_bias]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, fused=dev.type in ("cuda", "cpu"))
    scaler = torch.amp.GradScaler(dev.type, enabled=cfg.precision == "fp16")
    counters = {"samples": 0, "skipped_steps": 0, "skipped_samples": 0}
    if s.state is not None:
        _load_optimizer_state(opt, s.state["optimizer"])
        scaler.load_state_dict(s.state["scaler"])
        ckpt.set_rng_state(s.state["rng"])
        counters.update({k: int(s.state[k]) for k in counters})
        if siglip is not None and "siglip" in s.state:
            siglip.load_state_dict(s.state["siglip"])

    ddp: nn.Module | None = None
    if world.distributed and cfg.accum_steps == 1:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    forward: Any = ddp or model
    if cfg.compile:
        forward = torch.compile(forward)
    trainable = [p for g in groups for p in g["params"]]

    def loss_fn(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        # a rank whose batch lost undecodable images holds fewer rows: every rank pads to the batch size
        if siglip is not None:
            return siglip(img, txt, scale, world, rows=cfg.batch_size)
        return clip_loss(img, txt, scale, world, rows=cfg.batch_size)

    def save(step: int, meta_extra: dict[str, Any]) -> Path | None:
        barrier(world)
        path = None
        if world.is_main:
            meta = {"train": asdict(cfg), **meta_extra}
            state = {"step": step, "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                     "rng": ckpt.rng_state(), **counters}
            if siglip is not None:
                state["siglip"] = siglip.state_dict()
            here = ckpt.step_dir(out, step)
            if s.resumed_from is not None and step == s.start_step and s.resumed_from.resolve() == here.resolve():
                path = here  # a finished run resumed: its last step is on disk already
            else:
                path = ckpt.save_step(out, step, lambda d: save_checkpoint(d, model, s.tokenizer_file, pre,
                                                                              s.tokenizer, meta),
                                      state, cfg.keep_checkpoints)
            ckpt.publish(path, out)  # again if it was: a crash may have come between save and publish
        barrier(world)
        return path

    transform = eval_transform(pre)
    tasks = zero_shot_tasks(cfg.data[0], image_size=pre.image_size, size=cfg.eval_size, seed=cfg.seed)
    pairs = None if is_webdataset(cfg.data[0]) else retrieval_pairs(
        cfg.data[0], image_size=pre.image_size, size=cfg.eval_size, seed=cfg.seed)
    no_zero_shot = None if tasks else _no_zero_shot_reason(cfg.data[0], bool(pairs))

    def run_eval() -> dict[str, float]:
        barrier(world)
        res: dict[str, float] = {}
        if world.is_main:
            res = evaluate(model, tokenize, transform, tasks) if tasks else {}
            if pairs:
                res.update(retrieval(model, tokenize, transform, *pairs))
        barrier(world)
        return res

    # --- the step loop
    out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        log = stack.enter_context(open_log(out)) if world.is_main else None
        if log and s.resumed_from is not None:  # marks where this process's lines begin
            log.write(json.dumps({"resume": {"from_step": s.start_step, "checkpoint": str(s.resumed_from)}}) + "\n")
        tb = _tensorboard(stack, out) if world.is_main else None
        pin = dev.type == "cuda"  # page-locked batches: the copy to the GPU overlaps compute
        loader: Any = (
            make_loader(data, s.start_step, cfg.steps, cfg.batch_size, world.rank, world.size, cfg.workers,
                        pin_memory=pin)
            if isinstance(data, PositionDataset)
            else make_stream_loader(data, s.start_step, cfg.steps, cfg.batch_size, cfg.workers, pin_memory=pin)
        )
        autocast = _autocast(cfg, dev)
        t0, loss_value, step = time.perf_counter(), float("nan"), s.start_step
        done_here = 0
        guard, counted = NonFiniteGuard(dev), dict(counters)

        def check_guard(step: int) -> None:
            skipped, streak = guard.check()
            counters["skipped_steps"] = counted["skipped_steps"] + skipped
            counters["samples"] = counted["samples"] + (done_here - skipped) * cfg.batch_size * world.size
            if streak >= cfg.max_bad_steps:
                last = ckpt.list_checkpoints(out)
                raise TrainingError(
                    f"{streak} non-finite steps in a row by step {step + 1}; stopping",
                    fix=f"lower --lr or use --grad-clip; last good checkpoint: {last[-1][1] if last else 'none'}",
                )

        with Progress(cfg.progress and world.is_main, cfg.steps, s.start_step) as bar:
            for step, batch in zip(range(s.start_step, cfg.steps), loader, strict=False):
                counters["skipped_samples"] += batch["skipped"]
                if batch["images"] is None or len(batch["captions"]) < 2:
                    continue  # every image of this batch failed to decode (counted above)
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, cfg)
                pixels = normalize_batch(batch["images"].to(dev, non_blocking=True), pre)  # uint8 over the bus
                if cfg.channels_last:
                    pixels = pixels.contiguous(memory_format=torch.channels_last)
                ids_np = tokenize(batch["captions"])
                ids = torch.from_numpy(np.ascontiguousarray(ids_np[:, : int(ids_np.argmax(1).max()) + 1]))  # no padding
                # from pageable memory a copy to the GPU waits for the queued work: pin it first
                ids = (ids.pin_memory() if pin else ids).to(dev, non_blocking=True)
                if cfg.lock_image:
                    model.visual.eval()
                if cfg.accum_steps == 1:
                    with autocast:
                        img_f, txt_f, scale = forward(pixels, ids)
                    loss = loss_fn(img_f, txt_f, scale)
                    scaler.scale(loss).backward()
                    if ddp is not None and siglip is not None:  # DDP averages only the model's gradients
                        _average_grads([siglip.logit_bias], world)
                else:
                    loss = grad_cache_step(model, loss_fn, pixels, ids, cfg.accum_steps,
                                           lambda: model.logit_scale.exp(), autocast=lambda: _autocast(cfg, dev),
                                           scale_loss=scaler.scale)  # fp16: apply_gradients unscales
                    _average_grads(trainable, world)
                norm = apply_gradients(model, opt, scaler, guard, loss, trainable, cfg.grad_clip)
                done_here += 1
                logging_step = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps
                eval_step = bool(cfg.eval_every) and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps
                save_step = bool(cfg.save_every) and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps
                if dev.type != "cuda" or logging_step or eval_step or save_step:
                    check_guard(step)  # the only host sync of a CUDA step, and not on every step

                if logging_step:
                    loss_value = float(loss.detach())
                    elapsed = time.perf_counter() - t0
                    rec = {"step": step + 1, "loss": _finite(loss_value, 5), "lr": lr_at(step, cfg),
                           "logit_scale": round(float(model.logit_scale.detach().exp()), 3),
                           "grad_norm": _finite(float(norm), 4),
                           "samples_per_s": round(done_here * cfg.batch_size * world.size / elapsed, 1),
                           "elapsed_s": round(elapsed, 2), **counters}
                    if log:
                        log.write(json.dumps(rec) + "\n")
                        log.flush()
                    if tb is not None:
                        for key in ("loss", "lr", "logit_scale", "grad_norm", "samples_per_s"):
                            if rec[key] is not None:
                                tb.add_scalar(f"train/{key}", rec[key], step + 1)
                    bar.update(step + 1, rec)
                if eval_step:
                    ev = run_eval()
                    if log and (ev or no_zero_shot):
                        log.write(json.dumps(_eval_record(step + 1, ev, no_zero_shot)) + "\n")
                    if tb is not None:
                        for key, value in ev.items():
                            tb.add_scalar(f"eval/{key}", value, step + 1)
                if save_step:
                    save(step + 1, {})
        check_guard(step)
        seconds = time.perf_counter() - t0

        zs = run_eval()
        if log and not zs and no_zero_shot:
            log.write(json.dumps(_eval_record(cfg.steps, zs, no_zero_shot)) + "\n")
        result = TrainResult(
            checkpoint=str(out), steps=cfg.steps, samples=counters["samples"], seconds=round(seconds, 2),
            samples_per_s=round(done_here * cfg.batch_size * world.size / max(seconds, 1e-9), 1),
            final_loss=_finite(loss_value, 5), skipped_steps=counters["skipped_steps"],
            skipped_samples=counters["skipped_samples"], zero_shot={k: round(v, 4) for k, v in zs.items()},
            eval_skipped=no_zero_shot,
        )
        save(cfg.steps, {"result": asdict(result)})
        if log:
            log.write(json.dumps({"final": asdict(result)}) + "\n")
        return result


def _no_zero_shot_reason(spec: str, retrieval: bool) -> str:
    kind = ("is WebDataset shards, streamed without a held-out split" if is_webdataset(spec)
            else "has no held-out images with class names")
    also = "; image-text retrieval is reported" if retrieval else ""
    return (f"no zero-shot evaluation: the first --data source '{spec}' {kind}. Sources that evaluate: "
            f"builtin:shapes, builtin:digits, or a class folder with train/ and val/ sub-folders{also}")


def _eval_record(step: int, ev: dict[str, float], skipped: str | None) -> dict[str, Any]:
    """A log line for an evaluation point; `eval: null` with the reason when nothing was evaluated."""
    return {"step": step, "eval": ev} if ev else {"step": step, "eval": None, "eval_skipped": skipped}


def _finished_run(last: Path, saved: dict[str, Any], out: Path, world: World) -> TrainResult:
    """--resume of a run that already reached --steps: nothing is trained, evaluated or logged
    again, and the result is the one the run saved. OUT's weights are published again: a crash
    may have come between the last checkpoint and their publication."""
    if world.is_main:
        ckpt.publish(last, out)
    barrier(world)
    known = {f.name for f in fields(TrainResult)}
    result = TrainResult(**{k: v for k, v in saved.items() if k in known})
    # a run saved before final_loss could be null stored NaN
    result.final_loss = None if result.final_loss is None else _finite(float(result.final_loss), 5)
    return result


def _load_optimizer_state(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """load_state_dict, keeping this run's implementation and memory layout: the saved groups'
    `fused`/`foreach` flags (a checkpoint from an unfused run) would otherwise override them, and
    moments saved in another layout (--channels-last toggled) would be paired element by element
    with the wrong weights by the fused kernel."""
    flags = [{k: g.get(k) for k in ("fused", "foreach")} for g in opt.param_groups]
    opt.load_state_dict(state)
    for group, kept in zip(opt.param_groups, flags, strict=True):
        group.update(kept)
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    opt.state[p][key] = torch.empty_like(p).copy_(value)


def apply_gradients(
    model: CLIP, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, guard: NonFiniteGuard,
    loss: torch.Tensor, params: list[torch.Tensor], grad_clip: float | None,
) -> torch.Tensor:
    """The second half of a training step, after backward: unscale, clip, step unless the loss or
    gradient norm is not finite (decided on the device), clear the gradients, clamp the logit
    scale. Returns the gradient norm. No host synchronisation."""
    scaler.unscale_(opt)
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
    guard.step(opt, scaler, loss, norm)
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return norm


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

