"""Checkpoint directory: config.json + model.safetensors + tokenizer.json. No pickle anywhere."""

from __future__ import annotations

import json
import os
import shutil
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
from edgeclip.model.clip import CLIP
from edgeclip.model.config import ModelConfig

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
    model: CLIP,
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


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[CLIP, CheckpointInfo]:
    """Build the model from config.json and load the weights; mismatches name the tensor."""
    info = read_checkpoint_info(path)
    model = CLIP(info.model)
    try:
        state = load_file(str(info.path / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{info.path / WEIGHTS} is not a valid safetensors file: {e}") from e
    check_state_dict(model, state, source=str(info.path / WEIGHTS))
    model.load_state_dict(state, strict=True)
    return model.eval(), info


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError naming the first tensor that does not fit the model's config."""
    expected = model.state_dict()
    for key, ref in expected.items():
        if key not in state:
            raise CheckpointError(f"{source}: tensor '{key}' required by the config is missing")
        if tuple(state[key].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{source}: tensor '{key}' has shape {list(state[key].shape)} but the config needs {list(ref.shape)}",
                fix="the weights were saved for a different model config",
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CheckpointError(f"{source}: unexpected tensor '{extra[0]}' ({len(extra)} extra) not in the config")
