"""RKNN target: a .rknn per encoder, precision and Rockchip platform, built from the encoder's ONNX graph
by rknn-toolkit2 in its isolated environment (runtime/backends/rknn_toolkit.py) and checked on the
toolkit's PC simulator (accuracy only: the simulator is not the NPU, and its speed means nothing).

The NPU needs static shapes: batch 1 at the model's input size. fp16 is RKNN's float type. int8 is
RKNN's w8a8 quantization calibrated on the shared calibration set through the toolkit's hybrid
quantization (step 1 measures ranges once; step 2 builds with the layers the guard chose kept in
float16), so the guard re-builds cheaply. The artifact also carries what lets the simulator rebuild
the same graph (the simulator cannot run a finished .rknn): the ONNX graph (fp16) or RKNN's
calibrated model and quantization config (int8).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.errors import ConfigError, UnknownNameError
from edgeclip.export.encoders import EncoderSpec, fixed_batch
from edgeclip.export.int8.common import Int8Options, calibration_record, encoder_data
from edgeclip.export.int8.guard import Run, guarded_quantize
from edgeclip.export.reference import reference_onnx
from edgeclip.export.targets import Built, ExportContext
from edgeclip.records import Calibration
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.backends.rknn import PLATFORMS, SIM_SOURCES, SIMULATOR
from edgeclip.runtime.backends.rknn_toolkit import TOOLKIT, ToolkitWorker, ensure_toolkit_python

ALGORITHMS = {"minmax": "normal", "entropy": "kl_divergence"}  # --calib-method -> RKNN quantized_algorithm
# RKNN's fused ops in the calibrated graph: the layers the guard may keep in float16, and those kept by
# default (exNorm: every LayerNorm and the final L2 norm; exSDPAttention: attention with its softmax)
GUARDED_OPS = ("Conv", "Gemm", "MatMul", "exSDPAttention", "exNorm", "exGelu", "Add", "Mul")
FLOAT_DEFAULT_OPS = ("exNorm", "exSDPAttention")
CHECKED_WITH = "rknn-toolkit2 PC simulator (accuracy only, not the NPU)"


def rknn_platform(options: dict[str, Any]) -> str:
    platform = str(options.get("rknn_platform") or "").lower()
    if not platform:
        raise ConfigError("--target rknn needs the board's chip: --rknn-platform",
                          fix=f"add --rknn-platform {'|'.join(PLATFORMS)}")
    if platform not in PLATFORMS:
        raise UnknownNameError("RKNN platform", platform, PLATFORMS)
    return platform


class RknnTarget:
    name = "rknn"

    def build(self, ctx: ExportContext, spec: EncoderSpec, precision: str, folder: Path) -> Built:
        platform = rknn_platform(ctx.options)
        shape = static_shape(spec)
        calibration = None
        with ToolkitWorker(ensure_toolkit_python(ctx.options.get("toolkit_python"))) as worker:
            versions = worker.call("version")
            if precision == "fp16":
                onnx = folder / SIM_SOURCES["fp16"][0]
                shutil.copyfile(reference_onnx(ctx, spec), onnx)
                worker.call("build", platform=platform, onnx=str(onnx), input=spec.input_name, shape=shape,
                            out=str(folder / "model.rknn"))
            else:
                calibration = quantize_rknn(ctx, spec, worker, platform, folder)
        environment = {**versions, "rknn_platform": platform, "input_shape": shape, "source": "onnx",
                       "batch": "static 1", "verified_on": "simulator"}
        if calibration is not None:  # the simulator's rebuild (hybrid step 2) must repeat step 1's algorithm
            environment["rknn_quantized_algorithm"] = calibration.details["rknn_algorithm"]
        # the driver checks the files through the runtime's rknn backend on the simulator, which
        # rebuilds the graph from the sources the artifact carries: what a PC user of the bundle runs
        return Built(["model.rknn", *SIM_SOURCES[precision]], environment, calibration, checked_with=CHECKED_WITH,
                     options=BackendOptions(device=SIMULATOR), interface=fixed_batch(spec, shape[0]))


def static_shape(spec: EncoderSpec) -> list[int]:
    """The encoder's input shape at batch 1 (every other dimension is already fixed)."""
    return [1, *(int(d) for d in spec.inputs[0].shape[1:])]


def with_float_layers(cfg: str, layers: list[str]) -> str:
    """The config with `layers` kept in float16 (RKNN's custom_quantize_layers)."""
    if not layers:
        return cfg
    block = "custom_quantize_layers:\n" + "".join(f"    {json.dumps(n)}: float16\n" for n in layers)
    return cfg.replace("custom_quantize_layers: {}\n", block, 1)


def _dataset(ctx: ExportContext, spec: EncoderSpec, batches: list[np.ndarray]) -> Path:
    """The calibration rows as .npy files and the list file RKNN reads them from."""
    folder = ctx.workdir / f"rknn-calib-{spec.name}"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [b[i : i + 1] for b in batches for i in range(len(b))]
    for i, row in enumerate(rows):
        np.save(folder / f"{i}.npy", row, allow_pickle=False)
    listing = folder / "dataset.txt"
    listing.write_text("".join(f"{folder / f'{i}.npy'}\n" for i in range(len(rows))))
    return listing


def quantize_rknn(ctx: ExportContext, spec: EncoderSpec, worker: ToolkitWorker, platform: str,
                  folder: Path) -> Calibration:
    """Calibrate once, then build int8 with the guard's float layers; returns the calibration record."""
    opts = Int8Options.from_options(ctx.options)
    if opts.method not in ALGORITHMS:
        raise ConfigError(f"--calib-method {opts.method} is not available for rknn",
                          fix=f"use one of: {', '.join(ALGORITHMS)}")
    data = encoder_data(ctx, spec)
    onnx = ctx.workdir / f"rknn-{spec.name}" / "model.onnx"  # named "model": step 1 names its files after it
    onnx.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(reference_onnx(ctx, spec), onnx)
    made = worker.call("prepare_int8", platform=platform, onnx=str(onnx), input=spec.input_name,
                       shape=static_shape(spec), dataset=str(_dataset(ctx, spec, data.calibration)),
                       algorithm=ALGORITHMS[opts.method], workdir=str(folder))
    cfg_path = Path(made["quantization.cfg"])
    measured = cfg_path.read_text()
    layers = worker.call("layers", model=made["model"])["layers"]
    candidates = [name for kind, name in layers if kind in GUARDED_OPS]
    defaults = [name for kind, name in layers if kind in FLOAT_DEFAULT_OPS]

    def quantize(excluded: list[str]) -> Run:
        cfg_path.write_text(with_float_layers(measured, excluded))
        worker.call("build_int8", platform=platform, model=made["model"], data=made["data"], cfg=str(cfg_path),
                    out=str(folder / "model.rknn"), algorithm=ALGORITHMS[opts.method])
        return worker.infer

    result = guarded_quantize(quantize, candidates, defaults, data.heldout, opts.budget, what=f"{spec.name}/rknn-int8")
    quantize(result.excluded)  # the files on disk are the chosen ones, whatever the guard tried last
    return calibration_record(
        opts.method, data, result, opts.budget, defaults, quantizer=TOOLKIT,
        scheme="RKNN w8a8 (int8 weights per channel, int8 activations), hybrid quantization for float layers",
        rknn_algorithm=ALGORITHMS[opts.method], measured_with=CHECKED_WITH,
    )
