"""Read CLIP weights from the formats they are published in, without running any pickle code.

- an OpenAI-format state dict: `.pt`/`.pth`/`.bin` (weights-only `torch.load`) or `.safetensors`;
- an open_clip training checkpoint: a dict with a `state_dict` entry, keys maybe prefixed by
  `module.` (DDP) or `_orig_mod.` (torch.compile);
- a Hugging Face `CLIPModel` directory: `config.json` + `model.safetensors`.

The activation (GELU or QuickGELU) comes only from what the file says, never from its name: HF
`config.json` `hidden_act`; safetensors metadata (`activation`, `hidden_act` or `quick_gelu`);
OpenAI's own state dicts, recognised by the non-weight keys they carry (`input_resolution`,
`context_length`, `vocab_size`), are QuickGELU. Anything else does not say (`quick_gelu` None).
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from edgeclip.errors import CheckpointError, ConfigError
from edgeclip.model.hf_keys import hf_architecture, hf_to_openai, is_hf_state_dict
from edgeclip.model.mobileclip_keys import custom_text_to_native, is_custom_text_clip
from edgeclip.model.siglip_open_clip import is_open_clip_siglip, open_clip_siglip_to_hf

# keys that OpenAI / open_clip / HF state dicts carry but that are not weights
STALE_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask", "visual.attn_mask")
PREFIXES = ("module.", "_orig_mod.")


@dataclass
class Source:
    """Weights in OpenAI names plus what the source itself says about the architecture."""

    state: dict[str, torch.Tensor]
    kind: str  # "openai" | "open_clip" | "state_dict" (OpenAI names, origin unknown) | "hugging_face"
    quick_gelu: bool | None  # None: the source does not say
    activation_origin: str
    vision_heads: int | None = None
    text_heads: int | None = None
    dropped: list[str] = field(default_factory=list)
    no_causal_mask: bool | None = None  # a bidirectional text tower, where the source's family says so


def read_source(src: str | os.PathLike[str]) -> Source:
    path = Path(src)
    if path.is_dir():
        return _read_hf(path)
    if not path.is_file():
        raise CheckpointError(f"weights not found: {path}",
                              fix="pass a .pt/.pth/.safetensors state dict or a Hugging Face CLIPModel directory")
    raw = _load_file(path)
    kind = "state_dict"
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw, kind = raw["state_dict"], "open_clip"
    state = _tensor_dict(raw, path)
    if is_hf_state_dict(state):
        raise CheckpointError(f"{path} holds Hugging Face tensor names",
                              fix="pass the whole CLIPModel directory (config.json + model.safetensors)")
    markers = [k for k in STALE_KEYS[:3] if k in state]  # only OpenAI's own files carry these
    dropped = [k for k in state if k in STALE_KEYS]
    for k in dropped:
        del state[k]
    if is_open_clip_siglip(state):  # imported by siglip_import, its tokenizer read from beside the file
        return Source(open_clip_siglip_to_hf(state, str(path)), "open_clip_siglip", False,
                      "open_clip's SigLIP configs", dropped=dropped)
    mobileclip = is_custom_text_clip(state)
    bidirectional = None
    if mobileclip:
        state, bidirectional = custom_text_to_native(state, str(path))
    declared = _metadata_activation(path)
    if declared is not None:
        return Source(state, kind, declared[0], declared[1], dropped=dropped, no_causal_mask=bidirectional)
    if mobileclip:
        return Source(state, kind, False, "open_clip's MobileCLIP configs use GELU", dropped=dropped,
                      no_causal_mask=bidirectional)
    if markers and kind == "state_dict":
        return Source(state, "openai", True, f"OpenAI weights use QuickGELU ({', '.join(markers)} keys present)",
                      dropped=dropped)
    what = "open_clip training checkpoints do not" if kind == "open_clip" else "a bare state dict does not"
    return Source(state, kind, None, f"{what} record the activation", dropped=dropped)


def _metadata_activation(path: Path) -> tuple[bool, str] | None:
    """(quick_gelu, origin) from a safetensors file's metadata, or None when it says nothing."""
    if path.suffix != ".safetensors":
        return None
    with safe_open(str(path), "pt") as f:  # the header only; already read once by _load_file
        meta = f.metadata() or {}
    for key in ("activation", "hidden_act", "quick_gelu"):
        if key not in meta:
            continue
        value = meta[key].strip().lower()
        quick = {"quick_gelu": True, "quickgelu": True, "gelu": False, "true": True, "false": False}.get(value)
        if quick is None or (key == "quick_gelu") != (value in ("true", "false")):
            raise ConfigError(f"{path}: unsupported activation in its metadata: {key}={meta[key]!r}",
                              fix="edgeclip supports gelu and quick_gelu (quick_gelu=true/false)")
        return quick, f"safetensors metadata {key}={meta[key]}"
    return None


def _load_file(path: Path) -> Any:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a valid safetensors file: {e}") from e
    if zipfile.is_zipfile(path) and _is_torchscript(path):
        raise CheckpointError(
            f"{path} is a TorchScript archive (as OpenAI's original .pt downloads are); loading it runs code",
            fix="load it once where you trust it: safetensors.torch.save_file(torch.jit.load(p, map_location='cpu')"
                ".state_dict(), 'clip.safetensors'), or use the open_clip / Hugging Face release of the weights",
        )
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the refusal below says what matters
            warnings.simplefilter("ignore")
            # weights_only: a pickle that names anything but tensors and plain containers is refused
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} was refused by weights-only loading: {first}",
                              fix="only plain state dicts (tensors in dicts) can be imported") from e
    except Exception as e:  # torch raises RuntimeError/EOFError/ValueError... for non-checkpoints
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: {type(e).__name__}: {str(e)[:200]}") from e


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def _tensor_dict(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(raw, dict) or not raw:
        raise CheckpointError(f"{path} does not hold a state dict (found {type(raw).__name__})")
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor",
                fix="pass a state dict (name -> tensor), or an open_clip checkpoint with 'state_dict'",
            )
        while key.startswith(PREFIXES):
            key = key.split(".", 1)[1]
        state[key] = value
    return state


def _read_hf(path: Path) -> Source:
    cfg_file, weights = path / "config.json", path / "model.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise CheckpointError(
            f"{path} is not a Hugging Face CLIPModel directory (needs config.json and model.safetensors)",
            fix="save it with CLIPModel.save_pretrained(dir) (safetensors is the default)",
        )
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from e
    arch = hf_architecture(config)
    state = _tensor_dict(_load_file(weights), weights)
    dropped = [k for k in state if k.endswith("position_ids")]
    act = "quick_gelu" if arch["quick_gelu"] else "gelu"
    return Source(hf_to_openai(state), "hugging_face", arch["quick_gelu"], f"config.json hidden_act={act}",
                  vision_heads=arch["vision_heads"], text_heads=arch["text_heads"], dropped=dropped)
