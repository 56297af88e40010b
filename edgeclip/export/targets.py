"""The `Target` protocol and the registry of export targets.

The registry holds import-path strings, so listing targets imports no SDK.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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
    bundle_root: Path  # artifacts are written below it
    probes: dict[str, torch.Tensor]  # encoder -> fixed probe inputs for validation


class Target(Protocol):
    name: str
    precisions: tuple[str, ...]

    def export(self, ctx: ExportContext, spec: EncoderSpec, precision: str) -> Artifact:
        """Write the artifact under ctx.bundle_root, validate it, return its manifest entry."""
        ...


TARGETS: dict[str, str] = {
    "onnx": "edgeclip.export.onnx:OnnxTarget",
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
