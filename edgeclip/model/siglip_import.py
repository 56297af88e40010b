"""Hugging Face `SiglipModel` directories (SigLIP, fixed-resolution SigLIP 2) -> an edgeclip checkpoint.

The tensors keep their names (model/siglip.py uses transformers' own); the architecture is read
from their shapes, the heads and the image size from config.json; the tokenizer's rules from
tokenizer_config.json (model/siglip_tokenizer.py) and the pixels' from preprocessor_config.json.
NaFlex (`Siglip2Model`, variable resolution) is refused: its patch embedding is a linear layer
over flattened patches and its position embeddings are resized per image, which a fixed-shape
exported encoder cannot express.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from edgeclip.bundle import PreprocessConfig
from edgeclip.errors import CheckpointError, ConfigError
from edgeclip.model.checkpoint import check_state_dict, load_strict, save_checkpoint
from edgeclip.model.config import ModelConfig, TextConfig, VisionConfig, get_config, list_models
from edgeclip.model.siglip import LN_EPS, SigLIP
from edgeclip.model.siglip_open_clip import activations, heads
from edgeclip.model.siglip_tokenizer import SiglipTokenizerRules, hf_siglip_tokenizer

ACTIVATION = "gelu_pytorch_tanh"
NOT_A_SIGLIP = "the directory must hold a whole transformers SiglipModel (save_pretrained of SiglipModel)"
# PIL resample codes, as preprocessor_config.json stores them
_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def is_siglip_dir(src: str | os.PathLike[str]) -> bool:
    """A directory whose config.json names a SigLIP model type (NaFlex included, to refuse it)."""
    cfg = Path(src) / "config.json"
    if not cfg.is_file():
        return False
    try:
        model_type = json.loads(cfg.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False
    return model_type in ("siglip", "siglip2")


def import_siglip(src: str | os.PathLike[str], out: str | os.PathLike[str],
                  model: str | None = None) -> tuple[Path, ModelConfig, list[str]]:
    """Import a SiglipModel directory into the new checkpoint directory `out`."""
    src, out = Path(src), Path(out)
    config = _read_json(src / "config.json")
    check_hf_config(config)
    tokenizer = hf_siglip_tokenizer(src)
    state = _read_weights(src)
    cfg = infer_siglip_config(state, config)
    meta = {"source_format": "hugging_face_siglip", "activation": "gelu_tanh",
            "activation_origin": f"config.json hidden_act={ACTIVATION}"}
    return save_siglip(src, out, state, _named(cfg, model), tokenizer,
                       lambda c: preprocess_from_hf(src, c.vision_cfg.image_size), meta)


def import_open_clip_siglip(src: Path, state: dict[str, torch.Tensor], out: str | os.PathLike[str],
                            model: str | None = None) -> tuple[Path, ModelConfig, list[str]]:
    """Import an open_clip SigLIP state dict, already in Hugging Face names (siglip_open_clip), whose
    tokenizer.json sits beside it (as in open_clip's timm/ViT-*-SigLIP* repositories)."""
    tokenizer = hf_siglip_tokenizer(src.parent)
    patch = _tensor(state, "vision_model.embeddings.patch_embedding.weight")
    width, p = patch.shape[0], patch.shape[-1]
    grid = math.isqrt(_tensor(state, "vision_model.embeddings.position_embedding.weight").shape[0])
    vocab, tw = _tensor(state, "text_model.embeddings.token_embedding.weight").shape
    config = {"vision_config": {"num_attention_heads": heads(width, str(src)), "image_size": grid * p},
              "text_config": {"num_attention_heads": heads(tw, str(src))}}
    cfg = infer_siglip_config(state, config)
    vision_act, text_act = activations(width, p, grid * p, vocab)
    # named anew: the shapes may be those of a registered config whose activations differ
    cfg = _registered(dataclasses.replace(cfg, name="imported-siglip",
                                          vision_cfg=dataclasses.replace(cfg.vision_cfg, act=vision_act),
                                          text_cfg=dataclasses.replace(cfg.text_cfg, act=text_act)))
    meta = {"source_format": "open_clip_siglip", "activation": f"image {vision_act}, text {text_act}",
            "activation_origin": "open_clip's model configs and timm's definitions for these shapes"}
    # open_clip's SigLIP preprocessing: squash to the square size, bicubic, mean and std 0.5
    pre = lambda c: PreprocessConfig(image_size=c.vision_cfg.image_size, resize="squash", crop="none",  # noqa: E731
                                     mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return save_siglip(src, Path(out), state, _named(cfg, model), tokenizer, pre, meta)


def _named(cfg: ModelConfig, model: str | None) -> ModelConfig:
    """`cfg`, or the registered `model` after checking it is the same architecture."""
    if model is None:
        return cfg
    named = get_config(model)
    if {**named.to_dict(), "name": cfg.name} != cfg.to_dict():
        raise ConfigError(f"the weights do not fit --model {model}: they are {cfg.to_dict()}",
                          fix="omit --model to use the architecture read from the weights")
    return named


def save_siglip(src: Path, out: Path, state: dict[str, torch.Tensor], cfg: ModelConfig,
                tokenizer: tuple[str, SiglipTokenizerRules], preprocess: Callable[[ModelConfig], PreprocessConfig],
                meta: dict[str, Any]) -> tuple[Path, ModelConfig, list[str]]:
    """Check `state` against `cfg` and the tokenizer, then write the checkpoint."""
    tok_file, tok_cfg = tokenizer
    with torch.device("meta"):
        check_state_dict(SigLIP(cfg).state_dict(), state, str(src), fix=NOT_A_SIGLIP)
    if tok_cfg.vocab_size > cfg.text_cfg.vocab_size:
        raise CheckpointError(
            f"{src}: the tokenizer has {tok_cfg.vocab_size} ids but the text tower embeds only "
            f"{cfg.text_cfg.vocab_size}", fix="pair the weights with the tokenizer they were trained with")
    siglip = SigLIP(cfg)
    load_strict(siglip, state, str(src), fix=NOT_A_SIGLIP)
    notes = [f"tokenizer: {tok_cfg.describe()}"]
    pre = preprocess(cfg)
    notes.append(f"preprocess: {pre.resize} to {pre.image_size} px, {pre.interpolation}, mean {pre.mean}")
    meta = {"imported_from": str(src), **meta, "notes": notes}
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "tokenizer.json"
        file.write_text(tok_file, encoding="utf-8")
        save_checkpoint(out, siglip.eval(), file, pre, tok_cfg.to_bundle(cfg.text_cfg.context_length), meta)
    return out, cfg, notes


def check_hf_config(config: dict[str, Any]) -> None:
    """Refuse what the native towers do not implement, naming the field."""
    archs = config.get("architectures") or []
    if config.get("model_type") == "siglip2" or "Siglip2Model" in archs:
        raise ConfigError(
            "this is a SigLIP 2 NaFlex checkpoint (Siglip2Model, variable resolution), which edgeclip does not "
            "support: its encoders take a variable number of patches and cannot be exported at a fixed shape",
            fix="use a fixed-resolution SigLIP 2 checkpoint (SiglipModel class, e.g. google/siglip2-base-patch16-224)",
        )
    for tower in ("text_config", "vision_config"):
        sub = config.get(tower) or {}
        act = sub.get("hidden_act", ACTIVATION)
        if act != ACTIVATION:
            raise ConfigError(f"{tower}.hidden_act {act!r} is not SigLIP's {ACTIVATION!r}")
        if float(sub.get("layer_norm_eps", LN_EPS)) != LN_EPS:
            raise ConfigError(f"{tower}.layer_norm_eps {sub['layer_norm_eps']} is not SigLIP's {LN_EPS}")
    vision = config.get("vision_config") or {}
    if not vision.get("vision_use_head", True) or vision.get("num_channels", 3) != 3:
        raise ConfigError("only SigLIP image towers with the attention-pooling head and 3 channels are supported")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing", fix=NOT_A_SIGLIP)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return d


def _read_weights(src: Path) -> dict[str, torch.Tensor]:
    path = src / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing", fix="save the model with save_pretrained (safetensors, one file)")
    try:
        raw = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file: {e}") from e
    state = {k: v.float() for k, v in raw.items() if not k.endswith("position_ids")}
    for key in ("logit_scale", "logit_bias"):
        if key not in state:
            raise CheckpointError(f"{path} has no '{key}': SigLIP's sigmoid scores need both the scale and the bias",
                                  fix="export the whole SiglipModel, not only its towers")
    return state


def _tensor(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"cannot read the architecture: tensor '{key}' is missing", fix=NOT_A_SIGLIP)
    return state[key]


def _depth(state: dict[str, torch.Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m[1] for k in state if (m := pat.match(k))})


def infer_siglip_config(state: dict[str, torch.Tensor], config: dict[str, Any]) -> ModelConfig:
    """Widths, depths, patch, grid and context length from the tensors; heads and the image size
    (which the grid fixes only up to the patch remainder) from config.json."""
    text_hf, vision_hf = config.get("text_config") or {}, config.get("vision_config") or {}
    patch = _tensor(state, "vision_model.embeddings.patch_embedding.weight")
    width, p = patch.shape[0], patch.shape[-1]
    grid = math.isqrt(_tensor(state, "vision_model.embeddings.position_embedding.weight").shape[0])
    size = int(vision_hf.get("image_size", grid * p))
    if size // p != grid:
        raise ConfigError(f"config.json image_size {size} with patch {p} gives a {size // p}-patch grid, "
                          f"but the position embeddings hold {grid}x{grid}")
    vision = VisionConfig(
        image_size=size, patch_size=p, width=width, layers=_depth(state, "vision_model.encoder.layers."),
        heads=int(vision_hf.get("num_attention_heads", max(1, width // 64))),
        mlp_ratio=_tensor(state, "vision_model.encoder.layers.0.mlp.fc1.weight").shape[0] / width)
    vocab, tw = _tensor(state, "text_model.embeddings.token_embedding.weight").shape
    text = TextConfig(
        context_length=_tensor(state, "text_model.embeddings.position_embedding.weight").shape[0],
        vocab_size=vocab, width=tw, heads=int(text_hf.get("num_attention_heads", max(1, tw // 64))),
        layers=_depth(state, "text_model.encoder.layers."),
        mlp_ratio=_tensor(state, "text_model.encoder.layers.0.mlp.fc1.weight").shape[0] / tw)
    embed = _tensor(state, "text_model.head.weight").shape[0]
    return _registered(ModelConfig("imported-siglip", embed, vision, text, family="siglip"))


def _registered(cfg: ModelConfig) -> ModelConfig:
    """The registered config with `cfg`'s architecture, else `cfg`."""
    for name in list_models():
        if {**get_config(name).to_dict(), "name": cfg.name} == cfg.to_dict():
            return get_config(name)
    return cfg


def _size_dict(value: Any, shortest: bool, path: Path) -> dict[str, Any]:
    """A size as transformers reads it: an int (older configs, e.g. openai/clip-vit-base-patch32's
    `"size": 224`) is the shortest side before a crop, else a square."""
    if isinstance(value, int):
        return {"shortest_edge": value} if shortest else {"height": value, "width": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: unsupported size {value!r}", fix="use an int or a dict of height/width")
    return value


def preprocess_from_hf(src: Path, image_size: int) -> PreprocessConfig:
    """preprocessor_config.json -> PreprocessConfig. SiglipImageProcessor squashes to `size`
    (height x width, no crop); a processor with a crop (CLIPImageProcessor) resizes the shortest
    side first, which edgeclip does to the crop size only."""
    path = src / "preprocessor_config.json"
    d = _read_json(path) if path.is_file() else {}
    crop = d.get("do_center_crop", False)
    size = _size_dict(d.get("size") or {"height": image_size, "width": image_size}, crop, path)
    side = size.get("shortest_edge") if crop else size.get("height")
    if (not crop and size.get("height") != size.get("width")) or side is None:
        raise ConfigError(f"{path}: unsupported resize {size}", fix="edgeclip resizes to a square")
    target = int(_size_dict(d.get("crop_size") or {}, False, path).get("height", side)) if crop else int(side)
    if crop and int(side) != target:
        raise ConfigError(f"{path} resizes the shortest side to {side} px, then crops {target} px; edgeclip "
                          "resizes the shortest side to the crop size", fix="set size.shortest_edge to the crop "
                          "size in preprocessor_config.json to accept pixels that differ from the source's")
    if target != image_size:
        raise ConfigError(f"{path} resizes to {target} px but the image tower takes {image_size} px")
    resample = _RESAMPLE.get(int(d.get("resample", 3)))
    if resample is None:
        raise ConfigError(f"{path}: resample {d.get('resample')} is not bilinear (2) or bicubic (3)")
    normalize = d.get("do_normalize", True)  # off: no mean/std step at all
    return PreprocessConfig(
        image_size=image_size, resize="shortest" if crop else "squash", crop="center" if crop else "none",
        interpolation=resample,
        mean=tuple(float(v) for v in d.get("image_mean", (0.5, 0.5, 0.5))) if normalize else (0.0, 0.0, 0.0),  # type: ignore[arg-type]
        std=tuple(float(v) for v in d.get("image_std", (0.5, 0.5, 0.5))) if normalize else (1.0, 1.0, 1.0),  # type: ignore[arg-type]
        rescale_factor=float(d.get("rescale_factor", 1 / 255)) if d.get("do_rescale", True) else 1.0,
    )
