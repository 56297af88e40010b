"""What a target is: a pure builder. `build(ctx, spec, precision, folder) -> Built` writes an
artifact's files and says how they can be checked; the export driver (`edgeclip.export.driver`)
hashes, loads, validates and registers them. Precisions and the runtime backend of each target
come from the capability table.

The registry holds import-path strings, so listing targets imports no SDK.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from edgeclip._io import sha256_file
from edgeclip.bundle import Artifact, Calibration, Environment
from edgeclip.errors import ConfigError, UnknownNameError
from edgeclip.export.capabilities import capability
from edgeclip.export.encoders import EncoderSpec
from edgeclip.model.build import Model
from edgeclip.model.checkpoint import CheckpointInfo
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.classifier import Encoder

Run = Callable[[np.ndarray], np.ndarray]


@dataclass
class ExportContext:
    """Everything a target needs to build one artifact."""

    model: Model
    info: CheckpointInfo
    bundle_root: Path  # artifacts are written below it (a staging copy of the bundle)
    probes: dict[str, torch.Tensor]  # encoder -> fixed probe inputs for validation
    workdir: Path  # scratch space that is deleted after the export
    options: dict[str, Any] = field(default_factory=dict)  # target-specific options (capability table)
    label_embeddings: np.ndarray | None = None  # [C, D] from torch, for top-1 agreement
    label_classes: list[str] | None = None  # class names of label_embeddings' rows
    label_prompts: list[str] = field(default_factory=list)  # their prompts (calibrate an INT8 text tower)
    cache: dict[str, Any] = field(default_factory=dict)  # e.g. the fp32 ONNX graph per encoder


@dataclass(frozen=True)
class Fallback:
    """How an artifact is checked where its runtime backend cannot run (TensorRT without an NVIDIA
    GPU, CoreML off macOS): through `runner` (given the main file and the artifact's entry, it
    yields inputs -> embeddings), or, with no runner, not numerically at all ("passed" stays None)."""

    checked_with: str
    runner: Callable[[Path, Artifact], AbstractContextManager[Run]] | None = None


@dataclass
class Built:
    """What a target wrote and how the driver can check it."""

    files: list[str]  # relative to the artifact folder; the first is the one a backend opens
    environment: dict[str, Any]  # what it was built with
    calibration: Calibration | None = None  # INT8: what it was calibrated on and what the guard measured
    checked_with: str = ""  # how the check through the target's runtime backend is described
    options: BackendOptions = field(default_factory=BackendOptions)  # that backend's options for the check
    fallback: Fallback | None = None  # where that backend cannot run here
    records: dict[str, Any] = field(default_factory=dict)  # extra validation records (op_check, spec)
    interface: EncoderSpec | None = None  # the artifact's inputs/outputs when not the encoder's own
    # what loading it through the runtime adds (TensorRT: the engine built on this GPU)
    loaded: Callable[[Built, Any], None] | None = None


class Target(Protocol):
    name: str

    def build(self, ctx: ExportContext, spec: EncoderSpec, precision: str, folder: Path) -> Built:
        """Write the artifact's files into `folder` (created, empty); no validation, no manifest."""
        ...


def artifact_entry(spec: EncoderSpec, target: str, precision: str, root: Path, rel_dir: str,
                   files: list[str], environment: dict[str, Any] | None = None) -> Artifact:
    """The manifest entry of `files` (relative to `root`/`rel_dir`), hashed."""
    paths = [f"{rel_dir}/{f}" if rel_dir else f for f in files]
    key = f"{spec.name}/{target}-{precision}"
    return Artifact(spec.name, target, precision, rel_dir, {p: sha256_file(root / p) for p in paths},
                    list(spec.inputs), list(spec.outputs),
                    environment=Environment.from_dict(environment or {}, f"{key} environment"))


def load_built(root: Path, artifact: Artifact, options: BackendOptions = BackendOptions()) -> Encoder:
    """An artifact under `root` loaded through the runtime's `Encoder`, in the backend the capability
    table names for its target: the code a device runs."""
    return Encoder.open(root / artifact.main_file, artifact, capability(artifact.target).backend, options,
                        reason="export check")


def load_file(path: Path, spec: EncoderSpec, target: str, precision: str,
              options: BackendOptions = BackendOptions()) -> Encoder:
    """A single-file artifact not yet in any bundle (a graph the INT8 guard is trying), loaded as above."""
    return load_built(path.parent, artifact_entry(spec, target, precision, path.parent, "", [path.name]), options)


TARGETS: dict[str, str] = {
    "onnx": "edgeclip.export.onnx:OnnxTarget",
    "openvino": "edgeclip.export.openvino:OpenVinoTarget",
    "tensorrt": "edgeclip.export.tensorrt:TensorRTTarget",
    "coreml": "edgeclip.export.coreml:CoreMLTarget",
    "litert": "edgeclip.export.litert:LiteRTTarget",
    "rknn": "edgeclip.export.rknn:RknnTarget",
}


def register_target(name: str, path: str) -> None:
    """Add a target's builder, imported from `path` ("module:Class") when first used."""
    if name in TARGETS:
        raise ConfigError(f"target '{name}' is already registered", fix="choose another name")
    TARGETS[name] = path


def list_targets() -> list[str]:
    return sorted(TARGETS)


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise UnknownNameError("target", name, TARGETS)
    module, _, attr = TARGETS[name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    target: Target = cls()
    return target
