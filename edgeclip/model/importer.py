"""`import_weights`: OpenAI / open_clip / Hugging Face CLIP weights -> an edgeclip checkpoint.

The architecture is read from tensor shapes (widths, depths, patch size, grid, embed dim); heads
from the source's config (HF) or OpenAI's rule width // 64. The activation comes from what the
file says (see `edgeclip.model.sources`) or from the user (`--model NAME`, `--activation`), never
from the file name; when neither says, the import is refused: the wrong activation still loads
and runs, but every embedding is wrong. `--model NAME` pins a registered config: every shape must
agree, a different image size interpolates the positional embeddings (bicubic), and an activation
other than the file's is an error unless forced.

Text pooling: edgeclip pools at argmax(input_ids) as OpenAI does. transformers pools there
only for legacy configs (`eos_token_id == 2`) and otherwise at the first `eos_token_id`; with
OpenAI's tokenizer EOT (49407) is the highest id and appears once, so all three agree.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from edgeclip.bundle import PreprocessConfig
from edgeclip.errors import CheckpointError, ConfigError
from edgeclip.model.checkpoint import check_state_dict, load_strict, save_checkpoint
from edgeclip.model.clip import CLIP
from edgeclip.model.config import ModelConfig, TextConfig, VisionConfig, get_config, list_models
from edgeclip.model.hf_keys import short_list
from edgeclip.model.mobileclip_keys import infer_fastvit, release_preprocess
from edgeclip.model.openai_tokenizer import VOCAB_SIZE, openai_clip_tokenizer
from edgeclip.model.siglip_import import import_open_clip_siglip, import_siglip, is_siglip_dir, preprocess_from_hf
from edgeclip.model.sources import Source, read_source

TIMM_LN_EPS = 1e-6  # timm's LayerNorm default, which vit_base_mci_224 keeps
NOT_A_CLIP = "the file is not a complete CLIP state dict of one of the supported layouts"


@dataclass
class ImportResult:
    path: Path
    config: ModelConfig
    source_kind: str
    activation: str
    activation_origin: str  # where the activation came from: the file, --model or --activation
    notes: list[str] = field(default_factory=list)


def import_weights(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    model: str | None = None,
    force_activation: bool = False,
    vocab: str | os.PathLike[str] | None = None,
    activation: str | None = None,
) -> ImportResult:
    """Import CLIP weights at `src` into a new checkpoint directory `out`.

    activation: "gelu" or "quick_gelu" for weights whose file does not say and whose architecture
    has no registered config to pass as `model`.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output {out} already exists", fix="choose a new --out directory")
    if is_siglip_dir(src):  # SigLIP's activation is fixed, its tokenizer is its own
        path, cfg, notes = import_siglip(src, out, model)
        return ImportResult(path, cfg, "hugging_face_siglip", "gelu_tanh", "SigLIP (config.json)", notes)
    named = get_config(model) if model else None
    tokenizer, tok_cfg = openai_clip_tokenizer(vocab)  # fail on a missing vocabulary before heavy work
    source = read_source(src)
    if source.kind == "open_clip_siglip":
        state = {k: v.float() for k, v in source.state.items()}
        path, cfg, notes = import_open_clip_siglip(Path(src), state, out, model)
        act = f"image {cfg.vision_cfg.act}, text {cfg.text_cfg.act}"
        return ImportResult(path, cfg, source.kind, act, "open_clip's SigLIP configs and timm's definitions", notes)
    state = {k: v.float() if v.is_floating_point() else v for k, v in source.state.items()}
    inferred = infer_config(state, source)
    with torch.device("meta"):  # shapes only, no memory: a broken file is reported before anything is asked
        check_state_dict(CLIP(inferred).state_dict(), state, str(src), fix=NOT_A_CLIP)
    cfg, origin, notes = resolve_config(inferred, named, source, force_activation, _activation(activation))
    if cfg.vision_cfg.image_size != inferred.vision_cfg.image_size and not cfg.vision_cfg.fastvit:
        resize_positions(state, cfg.vision_cfg)
        notes.append(f"positional embeddings interpolated (bicubic) from {inferred.vision_cfg.image_size} px "
                     f"to {cfg.vision_cfg.image_size} px")
    if cfg.text_cfg.vocab_size != VOCAB_SIZE:
        raise ConfigError(f"the text tower has {cfg.text_cfg.vocab_size} tokens; OpenAI's BPE has {VOCAB_SIZE}",
                          fix="only CLIP models with OpenAI's tokenizer can be imported")
    preprocess = _preprocess(Path(src), source, cfg, inferred)
    clip = CLIP(cfg)
    load_strict(clip, state, str(src), fix=NOT_A_CLIP)
    notes += [f"dropped stale tensor '{k}'" for k in source.dropped]
    act = "quick_gelu" if cfg.quick_gelu else "gelu"
    with tempfile.TemporaryDirectory() as tmp:
        tok_file = Path(tmp) / "tokenizer.json"
        tokenizer.save(str(tok_file))
        meta: dict[str, Any] = {"imported_from": str(src), "source_format": source.kind, "activation": act,
                                "activation_origin": origin, "notes": notes}
        save_checkpoint(out, clip.eval(), tok_file, preprocess, dataclasses.replace(
            tok_cfg, context_length=cfg.text_cfg.context_length), meta)
    return ImportResult(out, cfg, source.kind, act, origin, notes)


def _preprocess(src: Path, source: Source, cfg: ModelConfig, inferred: ModelConfig) -> PreprocessConfig:
    """A Hugging Face directory's own preprocessor_config.json (CLIPImageProcessor), unless the
    image size was changed; Apple's for MobileCLIP towers; else OpenAI's mean/std, bicubic."""
    size = cfg.vision_cfg.image_size
    if source.kind == "hugging_face" and (src / "preprocessor_config.json").is_file() and (
            size == inferred.vision_cfg.image_size):
        return preprocess_from_hf(src, size)
    return release_preprocess(cfg.vision_cfg) or PreprocessConfig(image_size=size)


def _activation(name: str | None) -> bool | None:
    """--activation -> quick_gelu flag (None: not given)."""
    if name is None:
        return None
    key = name.strip().lower().replace("-", "_")
    if key not in ("gelu", "quick_gelu", "quickgelu"):
        raise ConfigError(f"unknown activation '{name}'", fix="use --activation gelu or --activation quick_gelu")
    return key != "gelu"


def _depth(state: dict[str, torch.Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m[1] for k in state if (m := pat.match(k))})


def _tensor(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"cannot infer the architecture: tensor '{key}' is missing",
                              fix="the file must hold a whole CLIP model (image and text towers)")
    return state[key]


def infer_config(state: dict[str, torch.Tensor], source: Source) -> ModelConfig:
    """Read the architecture from tensor shapes; heads from the source, else width // 64."""
    vocab, tw = _tensor(state, "token_embedding.weight").shape
    text = TextConfig(
        context_length=_tensor(state, "positional_embedding").shape[0], vocab_size=vocab, width=tw,
        heads=source.text_heads or max(1, tw // 64), layers=_depth(state, "transformer.resblocks."),
        mlp_ratio=_tensor(state, "transformer.resblocks.0.mlp.c_fc.weight").shape[0] / tw,
    )
    embed_dim = _tensor(state, "text_projection").shape[1]
    if "visual.proj" in state:
        vision = _infer_vit(state, source)
    elif "visual.attnpool.c_proj.weight" in state:
        vision = _infer_resnet(state)
    elif "visual.stem.0.conv_kxk.0.conv.weight" in state:
        vision = infer_fastvit(state)
    else:
        visual = sorted({".".join(k.split(".")[:2]) for k in state if k.startswith("visual.")})
        raise ConfigError(f"unknown image tower architecture (visual tensors: {short_list(visual)})",
                          fix="supported: OpenAI-style ViT (visual.proj), ModifiedResNet (visual.attnpool) and "
                                  "open_clip MobileCLIP FastViT towers")
    if source.no_causal_mask is not None:
        text = dataclasses.replace(text, no_causal_mask=source.no_causal_mask)
    cfg = ModelConfig("imported", embed_dim, vision, text, quick_gelu=bool(source.quick_gelu))
    return dataclasses.replace(cfg, name=_registered_name(cfg) or "imported")


def _infer_vit(state: dict[str, torch.Tensor], source: Source) -> VisionConfig:
    conv = _tensor(state, "visual.conv1.weight")
    width, patch = conv.shape[0], conv.shape[-1]
    stem = [state[f"visual.stem.{3 * i}.weight"].shape[0] for i in range(_depth(state, "visual.stem.") // 2)]
    mci = bool(stem) and state["visual.stem.0.weight"].shape[-1] == 4  # timm's ConvStem: 4x4/4, then 2x2/2
    if mci:
        patch = 2 ** (len(stem) + 2)
    if conv.shape[1] != (stem[-1] if mci else 3) or conv.shape[-1] != conv.shape[-2]:
        raise ConfigError(f"unsupported ViT stem: visual.conv1.weight has shape {list(conv.shape)}")
    rows = _tensor(state, "visual.positional_embedding").shape[0]
    pos_embed_class = math.isqrt(rows) ** 2 != rows  # g*g + 1 rows, or g*g when the class token has none
    grid = math.isqrt(rows - int(pos_embed_class))
    ln_pre = "visual.ln_pre.weight" in state
    return VisionConfig(
        image_size=grid * patch, patch_size=patch, width=width,
        layers=_depth(state, "visual.transformer.resblocks."), heads=source.vision_heads or max(1, width // 64),
        mlp_ratio=_tensor(state, "visual.transformer.resblocks.0.mlp.c_fc.weight").shape[0] / width,
        stem="mci" if mci else "patch", stem_channels=tuple(stem) if mci else (), pos_embed_class=pos_embed_class,
        # the only ViTs without ln_pre are timm's (MobileCLIP-B), whose LayerNorms use timm's eps
        ln_pre=ln_pre, ln_eps=1e-5 if ln_pre else TIMM_LN_EPS, proj_bias="visual.proj_bias" in state,
    )


def _infer_resnet(state: dict[str, torch.Tensor]) -> VisionConfig:
    width = _tensor(state, "visual.layer1.0.conv1.weight").shape[0]
    grid = math.isqrt(_tensor(state, "visual.attnpool.positional_embedding").shape[0] - 1)
    depths = tuple(_depth(state, f"visual.layer{i}.") for i in range(1, 5))
    return VisionConfig(image_size=grid * 32, patch_size=32, width=width, layers=depths, heads=width * 32 // 64)


def _registered_name(cfg: ModelConfig) -> str | None:
    for name in list_models():
        if dataclasses.replace(get_config(name), name=cfg.name) == cfg:
            return name
    return None


def _act_name(quick_gelu: bool) -> str:
    return "QuickGELU" if quick_gelu else "GELU"


def resolve_config(
    inferred: ModelConfig, named: ModelConfig | None, source: Source, force_activation: bool,
    activation: bool | None = None,
) -> tuple[ModelConfig, str, list[str]]:
    """(config to build, where its activation came from, notes). The config is the inferred one,
    or `named` after checking it fits the weights; `activation` is --activation's quick_gelu flag."""
    if named is not None:
        diffs = _shape_differences(inferred, named)
        if diffs:
            raise ConfigError(f"the weights do not fit --model {named.name}: {'; '.join(diffs)}",
                              fix=f"omit --model to use the inferred architecture ({inferred.name})")
        if activation is not None and activation != named.quick_gelu:
            raise ConfigError(f"--activation {_act_name(activation)} contradicts --model {named.name} "
                              f"({_act_name(named.quick_gelu)})",
                              fix="pass the --model whose name says the activation (e.g. '-quickgelu'), "
                                  "without --activation")
    wanted, by = (named.quick_gelu, f"--model {named.name}") if named else (activation, "--activation")
    if source.quick_gelu is None and wanted is None:
        raise _unknown_activation(inferred, source)
    if source.quick_gelu is None or wanted is None or wanted == source.quick_gelu:
        quick = source.quick_gelu if source.quick_gelu is not None else wanted
        origin = source.activation_origin if source.quick_gelu is not None else f"from {by}"
        notes: list[str] = []
    elif not force_activation:
        raise ConfigError(
            f"activation mismatch: the weights use {_act_name(source.quick_gelu)} ({source.activation_origin}) "
            f"but {by} uses {_act_name(wanted)}",
            fix="choose the matching config (e.g. a '-quickgelu' one) or pass --force-activation",
        )
    else:
        quick, origin = wanted, f"{by} with --force-activation, over the file's {_act_name(source.quick_gelu)}"
        notes = [f"--force-activation: {_act_name(wanted)} from {by} overrides the source's "
                 f"{_act_name(source.quick_gelu)}"]
    if named is not None:
        return named, origin, notes
    cfg = dataclasses.replace(inferred, quick_gelu=bool(quick), name="imported")
    return dataclasses.replace(cfg, name=_registered_name(cfg) or "imported"), origin, notes


def _unknown_activation(inferred: ModelConfig, source: Source) -> ConfigError:
    """Refuse to guess: name the registered configs that fit the shapes, one per activation."""
    fits: dict[bool, str] = {}
    for name in list_models():
        named = get_config(name)
        if not _shape_differences(inferred, named) and named.vision_cfg.image_size == inferred.vision_cfg.image_size:
            fits.setdefault(named.quick_gelu, name)
    if len(fits) == 2:
        how = f"--model {fits[False]} (GELU) or --model {fits[True]} (QuickGELU)"
    else:
        how = "--model X (GELU) or --model X-quickgelu (QuickGELU) with the registered config X that fits"
    return ConfigError(
        f"the file does not say which activation the model uses ({source.activation_origin}); "
        "a wrong one loads but gives wrong embeddings",
        fix=f"pass {how}, or --activation gelu / --activation quick_gelu "
            "(OpenAI's weights and most of their fine-tunes are QuickGELU; open_clip's own trainings are GELU)",
    )


def _shape_differences(inferred: ModelConfig, named: ModelConfig) -> list[str]:
    diffs = [f"embed_dim {inferred.embed_dim} vs {named.embed_dim}"] if inferred.embed_dim != named.embed_dim else []
    for tower in ("vision_cfg", "text_cfg"):
        a, b = getattr(inferred, tower), getattr(named, tower)
        for f in dataclasses.fields(a):
            if f.name in ("heads", "image_size"):  # heads are not in the shapes; image size interpolates
                continue
            if getattr(a, f.name) != getattr(b, f.name):
                diffs.append(f"{tower}.{f.name} {getattr(a, f.name)} in the weights vs {getattr(b, f.name)}")
    return diffs


def resize_positions(state: dict[str, torch.Tensor], vision: VisionConfig) -> None:
    """Resample the image positional embedding ([1 + g*g, W], or [g*g, W] for a timm ViT whose
    class token has no position) to `vision`'s grid, as open_clip and timm do (bicubic,
    antialiased, align_corners False); the class/mean token's row is kept."""
    key = "visual.attnpool.positional_embedding" if vision.is_resnet else "visual.positional_embedding"
    pos = state[key]
    extra = int(vision.is_resnet or vision.pos_embed_class)
    g, n, w = math.isqrt(pos.shape[0] - extra), vision.grid, pos.shape[1]
    grid = pos[extra:].reshape(1, g, g, w).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(n, n), mode="bicubic", antialias=True, align_corners=False)
    state[key] = torch.cat([pos[:extra], grid.permute(0, 2, 3, 1).reshape(n * n, w)])
