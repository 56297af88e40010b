"""ONNX target: one graph per encoder, opset 18, dynamic `batch_size`, single file."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from edgeclip import _deps
from edgeclip.bundle import Artifact, file_entry
from edgeclip.errors import ExportError
from edgeclip.export.encoders import BATCH, EncoderSpec, encoder_module, example_input
from edgeclip.export.targets import ExportContext
from edgeclip.export.validate import validate
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.backends.onnxruntime import OnnxRuntimeBackend

OPSET = 18  # >= 17 gives one LayerNormalization op instead of a decomposed mean/var chain
MAX_BATCH = 4096


def export_onnx(module: torch.nn.Module, example: torch.Tensor, spec: EncoderSpec, path: Path) -> None:
    """torch.onnx.export (dynamo) to a single file with a symbolic batch dimension."""
    _deps.require("onnxscript", purpose="torch.onnx.export(dynamo=True)")
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim(BATCH, min=1, max=MAX_BATCH)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        # torch's exporter emits deprecation noise from its own internals
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[spec.input_name],
                output_names=[spec.output_name],
                dynamic_shapes=({0: batch},),
                opset_version=OPSET,
                dynamo=True,
                external_data=False,  # one self-contained file (models here are < 2 GB)
                verbose=False,
            )
        except Exception as e:  # the exporter raises many internal types
            raise ExportError(f"torch.onnx.export failed for the {spec.name} encoder: {e}") from e


def onnx_environment() -> dict[str, Any]:
    import onnx

    return {"opset": OPSET, "onnx": onnx.__version__, "torch": torch.__version__}


class OnnxTarget:
    name = "onnx"
    precisions: tuple[str, ...] = ("fp32",)

    def export(self, ctx: ExportContext, spec: EncoderSpec, precision: str) -> Artifact:
        rel_dir = f"{spec.name}/{self.name}-{precision}"
        rel = f"{rel_dir}/model.onnx"
        module = encoder_module(spec.name, ctx.model)
        export_onnx(module, example_input(spec.name, ctx.info), spec, ctx.bundle_root / rel)
        artifact = Artifact(
            encoder=spec.name,
            target=self.name,
            precision=precision,
            path=rel_dir,
            files=file_entry(ctx.bundle_root, rel),
            inputs=list(spec.inputs),
            outputs=list(spec.outputs),
            environment=onnx_environment(),
        )
        backend = OnnxRuntimeBackend(ctx.bundle_root / rel, artifact, BackendOptions())
        artifact.validation = validate(
            module,
            ctx.probes[spec.name],
            lambda x: backend.infer({spec.input_name: x})[spec.output_name],
            precision,
            what=f"{artifact.key} (onnxruntime)",
        )
        artifact.validation["checked_with"] = "onnxruntime"
        return artifact
