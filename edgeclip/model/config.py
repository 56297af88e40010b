"""Model configurations: named JSON files validated by dataclasses (no torch here).

Field names follow open_clip's model configs (`embed_dim`, `vision_cfg`, `text_cfg`,
`quick_gelu`) so that a user can read one knowing the other.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from edgeclip.errors import ConfigError, UnknownNameError
from edgeclip.model.fastvit_config import FastViTConfig

FAMILIES = ("clip", "siglip")
STEMS = ("patch", "conv", "mci")
# a SigLIP tower's MLP activation: open_clip's timm SigLIP towers use either (see siglip_open_clip)
SIGLIP_ACTS = (None, "gelu_tanh", "gelu")
# VisionConfig fields written to configs and manifests only when they differ from these defaults,
# so that those of the models that do not use them stay as they were
TIMM_VIT_DEFAULTS: dict[str, Any] = {"pos_embed_class": True, "ln_pre": True, "ln_eps": 1e-5, "proj_bias": False,
                                     "act": None}


@dataclass(frozen=True)
class VisionConfig:
    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    # an int: a ViT with that many blocks. A list of four ints (e.g. [3, 4, 6, 3]): OpenAI's
    # ModifiedResNet with that many bottlenecks per stage (as in open_clip); `width` is then the
    # stem width, `heads` those of the attention pool, and the image is downsampled 32x.
    layers: int | tuple[int, ...] = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    # "patch": one strided conv (OpenAI ViT). "conv": stride-2 3x3 conv+BN+GELU layers with
    # `stem_channels`, then a stride-2 3x3 conv to `width`. On builtin:shapes a 4-conv stem +
    # 2 blocks reached 98.8 % zero-shot shape in 1000 steps where a patch-16 ViT reached 54.9 %.
    # "mci": MobileCLIP-B's ConvStem (timm `vit_base_mci_224`): a 4x4/4 then 2x2/2 conv+BN+GELU
    # layers with `stem_channels`, then a 2x2/2 conv with bias to `width` (patch_size 2**(n+2)).
    stem: str = "patch"
    stem_channels: tuple[int, ...] = ()
    # timm ViTs as open_clip's MobileCLIP-B / MobileCLIP2-L-14 use them (OpenAI's ViT is the default):
    pos_embed_class: bool = True  # False: the class token gets no positional embedding (196 rows, not 197)
    ln_pre: bool = True  # a LayerNorm before the blocks (timm's norm_pre)
    ln_eps: float = 1e-5  # eps of every LayerNorm of the tower (timm's default is 1e-6)
    proj_bias: bool = False  # the projection to embed_dim has a bias (timm's head)
    # a FastViT MCi tower (MobileCLIP): its layout; patch_size, width, layers, heads do not apply
    fastvit: FastViTConfig | None = None
    act: str | None = None  # SigLIP only: "gelu_tanh" (None: the family's default) or exact "gelu"

    def __post_init__(self) -> None:
        if self.act not in SIGLIP_ACTS:
            raise ConfigError(f"unknown vision_cfg.act {self.act!r}", fix=f"use one of {SIGLIP_ACTS[1:]}")
        if self.fastvit is not None:
            if self.image_size % self.fastvit.stride:
                raise ConfigError(f"image_size {self.image_size} is not a multiple of the FastViT stride "
                                  f"{self.fastvit.stride}")
            return
        if isinstance(self.layers, tuple):
            self._check_resnet(self.layers)
            return
        if self.stem not in STEMS:
            raise ConfigError(f"vision_cfg.stem must be one of {list(STEMS)}, got {self.stem!r}")
        if self.stem != "patch":
            if not self.stem_channels:
                raise ConfigError(f"vision_cfg.stem {self.stem!r} needs stem_channels, e.g. [32, 64, 128]")
            n = len(self.stem_channels)
            if self.stem == "conv" and self.patch_size != 2 ** (n + 1):
                raise ConfigError("a conv stem with n stem_channels has n + 1 stride-2 convs: patch_size 2**(n+1)")
            if self.stem == "mci" and self.patch_size != 2 ** (n + 2):
                raise ConfigError("an mci stem with n stem_channels downsamples 4 * 2**n: patch_size 2**(n+2)")
        # checked per family in ModelConfig: SigLIP's patch conv drops a remainder (So400m/14 at 384 px)
        if self.image_size < self.patch_size:
            raise ConfigError(f"image_size {self.image_size} is smaller than patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ConfigError(f"vision width {self.width} is not divisible by heads {self.heads}")

    def _check_resnet(self, depths: tuple[int, ...]) -> None:
        if len(depths) != 4 or min(depths) < 1:
            raise ConfigError(f"a ResNet vision_cfg.layers needs four stage depths >= 1, got {list(depths)}")
        if self.patch_size != 32 or self.stem != "patch":
            raise ConfigError("a ResNet image tower downsamples 32x: leave patch_size at 32 and stem at 'patch'")
        if self.image_size % 32:
            raise ConfigError(f"ResNet image_size {self.image_size} is not a multiple of 32")
        if (self.width * 32) % self.heads:
            raise ConfigError(f"ResNet feature width {self.width * 32} is not divisible by heads {self.heads}")

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.layers, tuple) and self.fastvit is None

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    no_causal_mask: bool = False  # bidirectional attention over all tokens, padding included (MobileCLIP)
    act: str | None = None  # SigLIP only: "gelu_tanh" (None: the family's default) or exact "gelu"

    def __post_init__(self) -> None:
        if self.act not in SIGLIP_ACTS:
            raise ConfigError(f"unknown text_cfg.act {self.act!r}", fix=f"use one of {SIGLIP_ACTS[1:]}")
        if self.width % self.heads:
            raise ConfigError(f"text width {self.width} is not divisible by heads {self.heads}")


@dataclass(frozen=True)
class ModelConfig:
    name: str
    embed_dim: int
    vision_cfg: VisionConfig = field(default_factory=VisionConfig)
    text_cfg: TextConfig = field(default_factory=TextConfig)
    quick_gelu: bool = False  # OpenAI's original weights were trained with QuickGELU
    # "clip": OpenAI's architecture (model/clip.py); "siglip": SigLIP / fixed-resolution SigLIP 2
    # (model/siglip.py: MAP head, bidirectional text pooled at its last position, logit bias)
    family: str = "clip"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"unknown model family {self.family!r}", fix=f"use one of {list(FAMILIES)}")
        if self.family != "siglip" and (self.vision_cfg.act or self.text_cfg.act):
            raise ConfigError("vision_cfg.act / text_cfg.act apply to SigLIP towers",
                              fix="a CLIP config picks its activation with quick_gelu")
        v = self.vision_cfg
        # SigLIP's patch conv drops a remainder, as So400m/14 at 384 px does (27 patches, 6 px unused)
        if not v.is_resnet and v.image_size % v.patch_size and self.family != "siglip":
            raise ConfigError(f"image_size {v.image_size} is not a multiple of patch_size {v.patch_size}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["vision_cfg"]["stem_channels"] = list(self.vision_cfg.stem_channels)
        if isinstance(self.vision_cfg.layers, tuple):
            d["vision_cfg"]["layers"] = list(self.vision_cfg.layers)
        if self.vision_cfg.fastvit is not None:
            d["vision_cfg"]["fastvit"] = self.vision_cfg.fastvit.to_dict()
        else:  # written only where used: configs and manifests of other models stay as they were
            del d["vision_cfg"]["fastvit"]
        for key, default in TIMM_VIT_DEFAULTS.items():
            if d["vision_cfg"][key] == default:
                del d["vision_cfg"][key]
        if not self.text_cfg.no_causal_mask:
            del d["text_cfg"]["no_causal_mask"]
        if self.text_cfg.act is None:
            del d["text_cfg"]["act"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str | None = None) -> ModelConfig:
        try:
            v = dict(d.get("vision_cfg", {}))
            if "stem_channels" in v:
                v["stem_channels"] = tuple(int(c) for c in v["stem_channels"])
            if isinstance(v.get("layers"), list):
                v["layers"] = tuple(int(n) for n in v["layers"])
            if v.get("fastvit") is not None:
                v["fastvit"] = FastViTConfig.from_dict(dict(v["fastvit"]))
            return cls(
                name=str(name or d["name"]),
                embed_dim=int(d["embed_dim"]),
                vision_cfg=VisionConfig(**v),
                text_cfg=TextConfig(**d.get("text_cfg", {})),
                quick_gelu=bool(d.get("quick_gelu", False)),
                family=str(d.get("family", "clip")),
            )
        except (KeyError, TypeError) as e:
            raise ConfigError(f"invalid model config: {type(e).__name__}: {e}") from e


def _config_files() -> dict[str, Any]:
    root = resources.files("edgeclip.model") / "configs"
    return {p.name[: -len(".json")]: p for p in root.iterdir() if p.name.endswith(".json")}


def list_models() -> list[str]:
    """Names of the built-in model configs."""
    return sorted(_config_files())


def get_config(name: str) -> ModelConfig:
    files = _config_files()
    if name not in files:
        raise UnknownNameError("model", name, files)
    return ModelConfig.from_dict(json.loads(files[name].read_text()), name=name)
