"""The `Target` protocol and the registry of export targets.

The registry holds import-path strings, so listing targets imports no SDK.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from edgeclip._io import sha256_file
from edgeclip.bundle import Artifact, Calibration, Environment, Validation
from edgeclip.errors import UnknownNameError
from edgeclip.export.encoders import EncoderSpec
from edgeclip.export.guard import Budget, HeldOut
from edgeclip.export.validate import GUARDED, validate
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
    # the INT8 gate's data, set by the driver: (encoder, precision) -> (held-out inputs with their fp32
    # embeddings, accuracy budget); validation measures the saved INT8 artifact on them
    int8_gate: Callable[[EncoderSpec, str], tuple[HeldOut, Budget]] | None = None

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


def validated_artifact(
    ctx: ExportContext,
    spec: EncoderSpec,
    target: str,
    precision: str,
    rel_dir: str,
    files: list[str],
    run: Callable[[np.ndarray], np.ndarray] | None,
    checked_with: str,
    environment: dict[str, Any],
    calibration: dict[str, Any] | None = None,
) -> Artifact:
    """Hash the files, validate against torch through `run` (None: cannot run here), and
    return the manifest entry. Raises ValidationError before anything is registered."""
    key = f"{spec.name}/{target}-{precision}"
    artifact = Artifact(
        encoder=spec.name,
        target=target,
        precision=precision,
        path=rel_dir,
        files={rel: sha256_file(ctx.bundle_root / rel) for rel in files},
        inputs=list(spec.inputs),
        outputs=list(spec.outputs),
        environment=Environment.from_dict(environment, f"{key} environment"),
        calibration=Calibration.from_dict(calibration, f"{key} calibration") if calibration else None,
    )
    if run is None:
        artifact.validation = Validation(passed=None, checked_with=checked_with)
        return artifact
    from edgeclip.export.encoders import encoder_module

    gate = None
    if precision in GUARDED:
        assert ctx.int8_gate is not None, "the export driver sets the INT8 gate"
        gate = ctx.int8_gate(spec, precision)
    result = validate(
        encoder_module(spec.name, ctx.model),
        ctx.probes[spec.name],
        run,
        precision,
        what=f"{artifact.key} ({checked_with})",
        label_embeddings=ctx.label_embeddings if spec.name == "image" else None,
        heldout=gate,
    )
    artifact.validation = Validation.from_dict({**result, "checked_with": checked_with}, f"{key} validation")
    return artifact


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
