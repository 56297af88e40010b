"""The `Target` protocol and the registry of export targets.

The registry holds import-path strings, so listing targets imports no SDK.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from edgeclip.bundle import Artifact
from edgeclip.errors import UnknownNameError
from edgeclip.export.encoders import EncoderSpec
from edgeclip.model.checkpoint import CheckpointInfo
from edgeclip.model.clip import CLIP


@dataclass
class ExportContext:
    """Everything a target needs to build and validate one artifact."""

    model: CLIP
    info: CheckpointInfo
    bundle_root: Path  # artifacts are written below it (a staging copy of the bundle)
    probes: dict[str, torch.Tensor]  # encoder -> fixed probe inputs for validation
    workdir: Path  # scratch space that is deleted after the export
    options: dict[str, Any] = field(default_factory=dict)  # target-specific options (capability table)
    label_embeddings: np.ndarray | None = None  # [C, D] from torch, for top-1 agreement
    label_classes: list[str] | None = None  # class names of label_embeddings' rows
    label_prompts: list[str] = field(default_factory=list)  # their prompts (calibrate an INT8 text tower)
    cache: dict[str, Any] = field(default_factory=dict)  # e.g. the fp32 ONNX graph per encoder

    def artifact_dir(self, encoder: str, target: str, precision: str) -> tuple[str, Path]:
        """(path relative to the bundle, absolute path) of an artifact's folder, created."""
        rel = f"{encoder}/{target}-{precision}"
        full = self.bundle_root / rel
        full.mkdir(parents=True, exist_ok=True)
        return rel, full


class Target(Protocol):
    name: str
    precisions: tuple[str, ...]

    def export(self, ctx: ExportContext, spec: EncoderSpec, precision: str) -> Artifact:
        """Write the artifact under ctx.bundle_root, validate it, return its manifest entry."""
        ...


TARGETS: dict[str, str] = {
    "onnx": "edgeclip.export.onnx:OnnxTarget",
    "openvino": "edgeclip.export.openvino:OpenVinoTarget",
    "tensorrt": "edgeclip.export.tensorrt:TensorRTTarget",
    "coreml": "edgeclip.export.coreml:CoreMLTarget",
}


def list_targets() -> list[str]:
    return sorted(TARGETS)


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise UnknownNameError("target", name, TARGETS)
    module, _, attr = TARGETS[name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    target: Target = cls()
    return target
