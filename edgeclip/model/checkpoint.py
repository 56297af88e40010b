"""Checkpoint directory: config.json + model.safetensors + tokenizer.json. No pickle anywhere."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from edgeclip import __version__
from edgeclip._io import atomic_path, write_json
from edgeclip.bundle import PreprocessConfig, TokenizerConfig
from edgeclip.errors import CheckpointError, ConfigError
from edgeclip.model.build import Model, build_model
from edgeclip.model.config import ModelConfig
from edgeclip.model.hf_keys import short_list

CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"


@dataclass
class CheckpointInfo:
    model: ModelConfig
    preprocess: PreprocessConfig
    tokenizer: TokenizerConfig
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER


def save_checkpoint(
    path: str | os.PathLike[str],
    model: Model,
    tokenizer_file: str | os.PathLike[str],
    preprocess: PreprocessConfig,
    tokenizer: TokenizerConfig,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write each file atomically; weights go last-but-one and config last, so a reader that
    sees a config always sees complete weights next to it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok_dst = path / TOKENIZER
    if Path(tokenizer_file).resolve() != tok_dst.resolve():
        with atomic_path(tok_dst) as tmp:
            shutil.copyfile(tokenizer_file, tmp)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "edgeclip_version": __version__})
    write_json(
        path / CONFIG,
        {
            "model": model.cfg.to_dict(),
            "preprocess": asdict(preprocess),
            "tokenizer": asdict(tokenizer),
            "edgeclip_version": __version__,
            "meta": meta or {},
        },
    )
    return path


def read_checkpoint_info(path: str | os.PathLike[str]) -> CheckpointInfo:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint not found: {path}", fix="pass a directory written by `edgeclip train` or `edgeclip import`"
        )
    for name in (CONFIG, WEIGHTS, TOKENIZER):
        if not (path / name).is_file():
            raise CheckpointError(f"{path} is not a checkpoint: {name} is missing")
    try:
        d = json.loads((path / CONFIG).read_text(encoding="utf-8"))
        return CheckpointInfo(
            model=ModelConfig.from_dict(d["model"]),
            preprocess=PreprocessConfig.from_dict(d["preprocess"]),
            tokenizer=TokenizerConfig.from_dict(d["tokenizer"]),
            path=path,
            meta=dict(d.get("meta", {})),
        )
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{path / CONFIG} is invalid: {e}") from e
    except Exception as e:  # BundleError from from_dict's unknown fields
        raise CheckpointError(f"{path / CONFIG} is invalid: {e}") from e


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[Model, CheckpointInfo]:
    """Build the model from config.json and load the weights; mismatches name the tensor."""
    info = read_checkpoint_info(path)
    model = build_model(info.model)
    try:
        state = load_file(str(info.path / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{info.path / WEIGHTS} is not a valid safetensors file: {e}") from e
    load_strict(model, state, str(info.path / WEIGHTS))
    return model.eval(), info


WRONG_CONFIG = "the weights were saved for a different model config"


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, fix: str = WRONG_CONFIG) -> None:
    """Load every tensor or fail listing all missing, extra and misshapen tensors."""
    expected = model.state_dict()
    for key, ref in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(ref)  # a BN step counter: unused in eval
    check_state_dict(expected, state, source, fix)
    model.load_state_dict(state, strict=True)


def check_state_dict(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str, fix: str = WRONG_CONFIG
) -> None:
    """The one state-dict check (checkpoints and imports): raise CheckpointError listing every
    missing, unexpected and misshapen tensor. BN step counters may be absent (load_strict adds them)."""
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    extra = [k for k in state if k not in expected]
    shapes = [f"{k} {list(state[k].shape)} (needs {list(t.shape)})" for k, t in expected.items()
              if k in state and state[k].shape != t.shape]
    problems = [f"{len(v)} {what}: {short_list(v)}" for what, v in
                (("missing", missing), ("unexpected", extra), ("with a wrong shape", shapes)) if v]
    if problems:
        raise CheckpointError(f"{source}: tensors do not fit the model config: {'; '.join(problems)}", fix=fix)
