"""The trainer's typed configuration (every CLI flag of `edgeclip train` maps to a field)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from edgeclip.errors import ConfigError

SCHEDULES = ("cosine", "constant", "constant-cooldown")
PRECISIONS = ("fp32", "bf16", "fp16")
LOSSES = ("clip", "siglip")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_WARMUP = 100
DEFAULT_MODEL = "edge-tiny"  # a fresh run's model when --model is not given


@dataclass
class TrainConfig:
    model: str | None = None  # default: the checkpoint's with --init/--resume, else DEFAULT_MODEL
    data: list[str] = field(default_factory=lambda: ["builtin:shapes"])
    data_weights: list[float] | None = None  # sampling weight per --data source
    out: str = "checkpoints/run"
    steps: int = 1000
    batch_size: int = 128  # per process
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int | None = None  # None: DEFAULT_WARMUP, at most a tenth of the run
    schedule: str = "cosine"
    cooldown_steps: int = 0  # for constant-cooldown: linear decay to 0 over the last N steps
    grad_clip: float | None = None
    precision: str = "fp32"  # autocast dtype: bf16 on CPU/CUDA, fp16 (+GradScaler) on CUDA
    accum_steps: int = 1  # GradCache micro-batches per step (1 = off)
    loss: str = "clip"
    seed: int = 0
    threads: int | None = None
    workers: int = 0
    device: str = "auto"
    augment: bool = True
    log_every: int = 20
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 3
    eval_every: int = 0  # 0: only at the end
    eval_size: int = 480  # held-out images for zero-shot evaluation
    resume: str | None = None  # "latest" or a step directory
    overwrite: bool = False  # replace a run already in `out` (else a run there is refused)
    init: str | None = None  # start from these weights (fine-tuning)
    lock_image: bool = False  # LiT: freeze the image tower
    lock_text: bool = False
    force_activation: bool = False
    compile: bool = False  # torch.compile the model
    channels_last: bool = False  # NHWC images and conv weights (conv stems, ResNets on CUDA)
    max_bad_steps: int = 10  # consecutive non-finite steps before the run stops
    tokenizer_samples: int = 4000  # captions used to learn the BPE merges
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "accum_steps", "keep_checkpoints", "max_bad_steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        if self.batch_size < 2:
            raise ConfigError("--batch-size must be >= 2: a contrastive loss needs negatives")
        if self.batch_size % self.accum_steps:
            raise ConfigError("--batch-size must be a multiple of --accum-steps")
        for name, allowed in (("schedule", SCHEDULES), ("precision", PRECISIONS), ("loss", LOSSES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name} must be one of {', '.join(allowed)}")
        if not self.data:
            raise ConfigError("give at least one --data source")
        if self.data_weights is not None and len(self.data_weights) != len(self.data):
            raise ConfigError("--data-weights needs one weight per --data source")
        if self.lock_image and self.lock_text:
            raise ConfigError("--lock-image and --lock-text together leave nothing to train")
        if self.resume and self.overwrite:
            raise ConfigError("--resume continues the run in --out; --overwrite deletes it: pick one")
        if self.resume and self.init:
            raise ConfigError("--resume continues a run; --init starts a new one from weights: pick one")
        if self.warmup_steps is None:  # the default fits the run: never most of a short one
            self.warmup_steps = min(DEFAULT_WARMUP, self.steps // 10)
        elif self.warmup_steps > self.steps:
            raise ConfigError(
                f"--warmup-steps {self.warmup_steps} is longer than --steps {self.steps}: the learning rate "
                "would still be rising when the run ends",
                fix=f"lower --warmup-steps to at most {self.steps}, omit it (default: {DEFAULT_WARMUP}, at most a "
                    "tenth of --steps), or raise --steps",
            )
        if min(self.warmup_steps, self.save_every, self.eval_every, self.cooldown_steps) < 0:
            raise ConfigError("step counts must not be negative")


def default(name: str) -> Any:
    """TrainConfig's default for field `name`: the CLI and the quickstart take theirs from here."""
    f = next(f for f in fields(TrainConfig) if f.name == name)
    return f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default
