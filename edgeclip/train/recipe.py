"""What a training run is made of, built once before its first step (torchtune's recipe shape):
the model and tokenizer (`setup_model`: fresh, --init or --resume), the data (`setup_data`), the
optimiser and everything the step needs (`setup_optimizer`, which returns the run's one state
object), and the held-out evaluation sets (`setup_eval`). train/loop.py runs the steps over it."""

from __future__ import annotations

import dataclasses
import itertools
import math
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from edgeclip.bundle import PreprocessConfig, TokenizerConfig
from edgeclip.data.shards import is_webdataset
from edgeclip.data.spec import open_source, open_stream
from edgeclip.data.tasks import retrieval_pairs, zero_shot_tasks
from edgeclip.errors import CheckpointError, ConfigError
from edgeclip.model.build import Model, build_model
from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.model.config import get_config
from edgeclip.model.siglip import SigLIP
from edgeclip.model.tokenizer import train_tokenizer
from edgeclip.runtime.tokenizer import TextTokenizer
from edgeclip.train.config import DEFAULT_MODEL, TrainConfig
from edgeclip.train.distributed import World
from edgeclip.train.loader import TrainingData, training_dataset
from edgeclip.train.loss import SIGLIP_LOGIT_SCALE_INIT, SigLipLoss
from edgeclip.train.nonfinite import NonFiniteSkipper
from edgeclip.train.state import load_state, resolve_resume, set_rng_state
from edgeclip.train.transforms import eval_transform

__all__ = ["EvalSet", "ModelSetup", "RunState", "lr_at", "param_groups", "setup_data", "setup_eval",
           "setup_model", "setup_optimizer"]


@dataclass
class ModelSetup:
    """The model and tokenizer a run starts from, and where it starts."""

    model: Model
    preprocess: PreprocessConfig
    tokenizer_file: Path
    tokenizer: TokenizerConfig
    start_step: int
    state: dict[str, Any] | None  # train_state.pt of the checkpoint resumed from
    resumed_from: Path | None = None
    saved_result: dict[str, Any] | None = None  # the result a finished run saved with its last step


@dataclass
class RunState:
    """Everything the step loop reads and advances: built by `setup_optimizer`, then passed
    explicitly to each part of the loop (train/loop.py) instead of being closed over."""

    cfg: TrainConfig
    world: World
    model: Model
    preprocess: PreprocessConfig
    tokenizer_file: Path
    tokenizer: TokenizerConfig
    tokenize: TextTokenizer
    start_step: int
    resumed_from: Path | None
    siglip: SigLipLoss | None  # the SigLIP loss holds a learnt bias; None for the CLIP loss
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    forward: Any  # the model, wrapped in DDP and/or torch.compile when asked
    ddp: bool
    trainable: list[torch.Tensor]
    counters: dict[str, int]  # samples, skipped_steps, skipped_samples: saved with every checkpoint
    # the step loop's own, set as it starts
    skipper: NonFiniteSkipper
    counted: dict[str, int] = field(default_factory=dict)  # the counters as this process found them
    step: int = 0  # the step being run (the last one, after the loop)
    done_here: int = 0  # optimiser steps taken by this process (a resumed run counts from its start)
    loss_value: float = float("nan")  # the loss at the last logged step
    t0: float = 0.0
    autocast: AbstractContextManager[Any] = field(default_factory=nullcontext)
    log: TextIO | None = None  # the JSONL log, on the main rank
    tb: Any = None  # a TensorBoard writer, on the main rank when tensorboard is installed

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def device(self) -> torch.device:
        return self.world.device


@dataclass
class EvalSet:
    """Held-out data the run is evaluated on, and why there is no zero-shot task when none."""

    transform: Any
    tasks: list[Any]
    pairs: tuple[list[Any], list[str]] | None
    no_zero_shot: str | None


# --- the model and tokenizer


def setup_model(cfg: TrainConfig, scratch: Path) -> ModelSetup:
    """Model + tokenizer from --resume, --init, or fresh (BPE learnt from the captions)."""
    if cfg.resume:
        return _resumed(cfg, scratch)
    if cfg.init:
        return _initialised(cfg, scratch)
    model_cfg = get_config(cfg.model or DEFAULT_MODEL)
    pre = PreprocessConfig(image_size=model_cfg.vision_cfg.image_size)
    captions: Iterator[str]
    if is_webdataset(cfg.data[0]):
        stream = open_stream(cfg.data[0], cfg.seed).samples(0)
        captions = itertools.islice((c for _, c in stream), cfg.tokenizer_samples)
    else:
        first = open_source(cfg.data[0], image_size=pre.image_size, seed=cfg.seed)
        captions = (first[i][1] for i in range(min(cfg.tokenizer_samples, len(first))))
    tok, tok_cfg = train_tokenizer(captions, model_cfg.text_cfg.vocab_size, model_cfg.text_cfg.context_length)
    if model_cfg.family == "siglip":  # its text tower reads the last position of the padded ids
        tok_cfg = dataclasses.replace(tok_cfg, pooling="last")
    tok_file = scratch / "tokenizer.json"
    tok.save(str(tok_file))
    return ModelSetup(build_model(model_cfg).train(), pre, tok_file, tok_cfg, 0, None)


def _resumed(cfg: TrainConfig, scratch: Path) -> ModelSetup:
    assert cfg.resume is not None
    path = resolve_resume(cfg.resume, Path(cfg.out))
    model, info = load_checkpoint(path)
    if cfg.model and cfg.model != info.model.name:
        raise CheckpointError(f"{path} is a checkpoint of '{info.model.name}', not '{cfg.model}'",
                              fix="resume with the same --model (or omit it)")
    st = load_state(path)
    return ModelSetup(model.train(), info.preprocess, _scratch_copy(info.tokenizer_path, scratch), info.tokenizer,
                      int(st["step"]), st, resumed_from=path, saved_result=info.meta.get("result"))


def _initialised(cfg: TrainConfig, scratch: Path) -> ModelSetup:
    assert cfg.init is not None
    model, info = load_checkpoint(cfg.init)
    if cfg.model:
        wanted = get_config(cfg.model)
        if wanted.quick_gelu != info.model.quick_gelu and not cfg.force_activation:
            raise ConfigError(
                f"--init weights use {'QuickGELU' if info.model.quick_gelu else 'GELU'} but '{cfg.model}' "
                f"uses {'QuickGELU' if wanted.quick_gelu else 'GELU'}: the model would run but lose accuracy",
                fix="use the checkpoint's config (omit --model) or pass --force-activation",
            )
    return ModelSetup(model.train(), info.preprocess, _scratch_copy(info.tokenizer_path, scratch), info.tokenizer,
                      0, None)


def _scratch_copy(tokenizer_file: Path, scratch: Path) -> Path:
    """The run's own copy of a loaded tokenizer: the step directory it came from may be pruned
    (keep_checkpoints) before the run saves again."""
    dst = scratch / "tokenizer.json"
    shutil.copyfile(tokenizer_file, dst)
    return dst


# --- the data


def setup_data(cfg: TrainConfig, pre: PreprocessConfig, world: World) -> TrainingData:
    """Training samples by global position (indexed sources), this rank's share of a stream, or both mixed by weight."""
    return training_dataset(cfg.data, cfg.data_weights, cfg.seed, pre, cfg.augment, world.rank, world.size)


# --- the optimiser, and the state object the loop runs on


def setup_optimizer(cfg: TrainConfig, world: World, m: ModelSetup) -> RunState:
    """Freeze what is locked, move to the device, build AdamW (+ GradScaler), restore a resumed
    run's optimiser, RNG and counters, and wrap the model for DDP / torch.compile."""
    model, dev = m.model, world.device
    _freeze_locked_towers(cfg, model)
    siglip = SigLipLoss() if cfg.loss == "siglip" else None
    own_bias = siglip is not None and isinstance(model, SigLIP)
    if own_bias:  # a SigLIP model holds its bias: the loss learns that one, and the export records it
        siglip.logit_bias = model.logit_bias  # type: ignore[union-attr]
    if siglip is not None and m.state is None and not cfg.init:
        with torch.no_grad():
            model.logit_scale.fill_(SIGLIP_LOGIT_SCALE_INIT)
    model.to(dev)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # the 4-D conv weights
    if siglip is not None:
        siglip.to(dev)
    groups = param_groups(model, cfg.weight_decay)
    if siglip is not None and not own_bias:
        groups[1]["params"] = [*groups[1]["params"], siglip.logit_bias]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, fused=dev.type in ("cuda", "cpu"))
    scaler = torch.amp.GradScaler(dev.type, enabled=cfg.precision == "fp16")
    counters = {"samples": 0, "skipped_steps": 0, "skipped_samples": 0}
    if m.state is not None:
        _restore(m.state, opt, scaler, siglip, counters)
    # GradCache runs its backward outside DDP's forward, so with --accum-steps > 1 the loop
    # averages the gradients itself
    ddp = world.distributed and cfg.accum_steps == 1
    forward: Any = (nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
                    if ddp else model)
    if cfg.compile:
        forward = torch.compile(forward)
    return RunState(
        cfg=cfg, world=world, model=model, preprocess=m.preprocess, tokenizer_file=m.tokenizer_file,
        tokenizer=m.tokenizer, tokenize=TextTokenizer(m.tokenizer_file, m.tokenizer), start_step=m.start_step,
        resumed_from=m.resumed_from, siglip=siglip, opt=opt, scaler=scaler, forward=forward, ddp=ddp,
        trainable=[p for g in groups for p in g["params"]], counters=counters, skipper=NonFiniteSkipper(dev),
    )


def _freeze_locked_towers(cfg: TrainConfig, model: Model) -> None:
    """LiT: a locked tower gets no gradient (the loop also keeps a locked image tower in eval
    mode, so its BatchNorm statistics stay frozen)."""
    if isinstance(model, SigLIP):  # each tower is one module there
        for locked, half in ((cfg.lock_image, model.vision_model), (cfg.lock_text, model.text_model)):
            if locked:
                half.requires_grad_(False)
        return
    for locked, tower in ((cfg.lock_image, model.visual), (cfg.lock_text, model.transformer)):
        if locked:
            tower.requires_grad_(False)
    if cfg.lock_text:
        for p in (model.token_embedding.weight, model.positional_embedding, model.text_projection):
            p.requires_grad_(False)
        model.ln_final.requires_grad_(False)


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


def _restore(state: dict[str, Any], opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
             siglip: SigLipLoss | None, counters: dict[str, int]) -> None:
    """A resumed run continues exactly: optimiser moments, loss scale, RNG and counters."""
    _load_optimizer_state(opt, state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    counters.update({k: int(state[k]) for k in counters})
    if siglip is not None and "siglip" in state:
        siglip.load_state_dict(state["siglip"])


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


def autocast(cfg: TrainConfig, device: torch.device) -> AbstractContextManager[Any]:
    """The forward's mixed precision; fp16 needs CUDA's GradScaler."""
    if cfg.precision == "fp32":
        return nullcontext()
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs CUDA (GradScaler); use bf16 on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.precision == "bf16" else torch.float16)


# --- the held-out evaluation


def setup_eval(cfg: TrainConfig, pre: PreprocessConfig) -> EvalSet:
    """Zero-shot tasks and retrieval pairs from the first source's held-out split, when it has one."""
    spec = cfg.data[0]
    tasks = zero_shot_tasks(spec, image_size=pre.image_size, size=cfg.eval_size, seed=cfg.seed)
    pairs = None if is_webdataset(spec) else retrieval_pairs(spec, image_size=pre.image_size, size=cfg.eval_size,
                                                             seed=cfg.seed)
    return EvalSet(eval_transform(pre), tasks, pairs, None if tasks else _no_zero_shot_reason(spec, bool(pairs)))


def _no_zero_shot_reason(spec: str, retrieval: bool) -> str:
    kind = ("is WebDataset shards, streamed without a held-out split" if is_webdataset(spec)
            else "has no held-out images with class names")
    also = "; image-text retrieval is reported" if retrieval else ""
    return (f"no zero-shot evaluation: the first --data source '{spec}' {kind}. Sources that evaluate: "
            f"builtin:shapes, builtin:digits, or a class folder with train/ and val/ sub-folders{also}")
