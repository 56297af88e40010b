"""TensorRT target (TensorRT 10): a TensorRT-ready ONNX per encoder plus two build recipes.

Engines are specific to a GPU and a TensorRT version, so the portable artifact is the ONNX
(fp32 graph, opset 18 with one LayerNormalization op, fixed context length, dynamic batch)
plus an explicit min/opt/max batch profile, a `build_engine.sh` (trtexec) and `build_engine`
(Python API, in `edgeclip.runtime.backends.tensorrt_engine`: the device builds engines). With
TensorRT and an NVIDIA GPU present the engine is built now, through the runtime's backend, and
listed in the artifact; otherwise the runtime builds it on first load on the device and caches it.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from edgeclip import _deps
from edgeclip.bundle import Artifact
from edgeclip.errors import ConfigError, ExportError
from edgeclip.export.encoders import EncoderSpec
from edgeclip.export.int8.onnxruntime import quantize_onnx
from edgeclip.export.onnx import add_metadata
from edgeclip.export.reference import OPSET, reference_onnx
from edgeclip.export.targets import Built, ExportContext, Fallback, Run
from edgeclip.runtime.backends.tensorrt_engine import DEFAULT_WORKSPACE, FP32_PREFIX, TIMING_CACHE, USER_PLAN, Profile

TRT_VERSIONS = ">=10.0,<11"
BUILD_NEEDS = "NVIDIA GPU + TensorRT 10; build_engine.sh or edgeclip.runtime.backends.tensorrt_engine.build_engine"
# (min, opt, max) batch. TensorRT tunes its kernels for `opt`. Images: a device classifies one
# camera frame at a time, so opt=1; max=32 is ZeroShotClassifier's default chunk. Texts: the
# on-device batches come from set_labels (classes x templates, chunked by 32), so opt=32;
# max=64 leaves room for a caller who raises max_batch. Larger batches are chunked by the backend.
PROFILE_DEFAULTS: dict[str, tuple[int, int, int]] = {"image": (1, 1, 32), "text": (1, 32, 64)}
FP32_OPS = ("LayerNormalization", "ReduceL2")  # renamed FP32_PREFIX* so both build paths pin them to fp32
ONNX_FILE, SCRIPT_FILE = "model.onnx", "build_engine.sh"


def supported_ops() -> dict[str, Any]:
    """TensorRT's ONNX operator support list (tensorrt_ops.json: version, source, opset range, ops)."""
    data: dict[str, Any] = json.loads(resources.files("edgeclip.export").joinpath("tensorrt_ops.json").read_text())
    return data


def check_ops(model: Any) -> dict[str, Any]:
    """Check an onnx.ModelProto against TensorRT's supported ONNX operators and opsets.

    Returns the record kept in the manifest; raises ExportError naming every unsupported op.
    """
    table = supported_ops()
    known = set(table["supported"])
    ops = sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in model.graph.node})
    unsupported = [op for op in ops if op not in known]  # other domains need plugins: unsupported too
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    lo, hi = table["opset_range"]
    record = {"tensorrt_version": table["tensorrt_version"], "source": table["source"], "opset": opset,
              "ops": ops, "unsupported": unsupported}
    if unsupported:
        raise ExportError(
            f"the graph uses ONNX operators TensorRT {table['tensorrt_version']} does not support: "
            f"{', '.join(unsupported)} (list from {table['source']})",
            fix="change the model so it exports without these ops, or use the onnx/openvino target",
        )
    if not lo <= opset <= hi:
        raise ExportError(f"ONNX opset {opset} is outside what every TensorRT 10.x parses ({lo}-{hi})",
                          fix=f"export with an opset between {lo} and {hi}")
    return record


def prepare_onnx(src: Path, dst: Path) -> list[str]:
    """Copy the fp32 graph, naming the ops to keep in fp32 so both build paths can pin them.

    Returns those node names (TensorRT's ONNX parser names layers after nodes).
    """
    import onnx

    model = onnx.load(str(src))
    pinned = []
    for i, node in enumerate(n for n in model.graph.node if n.op_type in FP32_OPS):
        node.name = f"{FP32_PREFIX}{node.op_type}_{i}"
        pinned.append(node.name)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return pinned


def profile_for(ctx: ExportContext, spec: EncoderSpec) -> Profile:
    """The profile from ctx.options (trt_min_batch / trt_opt_batch / trt_max_batch) or the defaults."""
    lo, opt, hi = (int(ctx.options.get(f"trt_{k}_batch") or d)
                   for k, d in zip(("min", "opt", "max"), PROFILE_DEFAULTS[spec.name], strict=True))
    if not 1 <= lo <= opt <= hi:
        raise ConfigError(f"TensorRT batch profile must satisfy 1 <= min <= opt <= max, got {lo}/{opt}/{hi}",
                          fix="adjust --trt-min-batch / --trt-opt-batch / --trt-max-batch")
    shape = tuple(int(d) for d in spec.inputs[0].shape[1:])
    return Profile(spec.input_name, shape, lo, opt, hi)


def trtexec_script(
    profile: Profile, fp16: bool, fp32_layers: list[str], workspace_bytes: int, int8: bool = False
) -> str:
    """build_engine.sh: the same build as `build_engine`, through trtexec.

    int8: the ONNX carries Q/DQ nodes (explicit quantization); `--int8 --fp16` lets TensorRT run the
    quantized MatMul/Conv in int8 and the float rest in fp16, with the FP32_PREFIX layers pinned to fp32.
    """
    args = [
        f"--onnx={ONNX_FILE}", '--saveEngine="$PLAN"',
        f"--minShapes={profile.trtexec(profile.min_batch)}",
        f"--optShapes={profile.trtexec(profile.opt_batch)}",
        f"--maxShapes={profile.trtexec(profile.max_batch)}",
        f"--memPoolSize=workspace:${{WORKSPACE_MIB:-{workspace_bytes >> 20}}}M",
        f"--timingCacheFile={TIMING_CACHE}",
    ]
    if int8:
        args.append("--int8")  # with Q/DQ in the graph, int8 is where the graph says, never implicit
    if fp16 or int8:
        # explicit names, not wildcards: trtexec before 10.x-late only accepts "*" as a whole name
        spec = ",".join(f"{name}:fp32" for name in fp32_layers)
        args += ["--fp16", "--precisionConstraints=obey", f"--layerPrecisions={spec}", f"--layerOutputTypes={spec}"]
    else:
        args.append("--noTF32")  # fp32 means fp32: TensorRT enables TF32 matmuls by default on Ampere+
    lines = " \\\n  ".join(['"$TRTEXEC"', *args, '"$@"'])
    return (
        "#!/bin/sh\n"
        "# Build this encoder's TensorRT 10 engine on the device that will run it (engines are GPU-specific).\n"
        "# Same build in Python: edgeclip.runtime.backends.tensorrt_engine.build_engine. The edgeclip\n"
        "# runtime uses $PLAN when it deserializes on this device, else it builds and caches its own engine.\n"
        "set -eu\n"
        'cd "$(dirname "$0")"\n'
        'TRTEXEC="${TRTEXEC:-trtexec}"\n'
        f'PLAN="${{PLAN:-{USER_PLAN}}}"\n'
        f"{lines}\n"
    )


class TensorRTTarget:
    name = "tensorrt"

    def build(self, ctx: ExportContext, spec: EncoderSpec, precision: str, folder: Path) -> Built:
        onnx: Any = _deps.require("onnx", extra="export", purpose="the tensorrt export target")
        onnx_file = folder / ONNX_FILE
        calibration = None
        if precision == "int8":  # Q/DQ on the prepared graph: the pinned names survive quantization
            prepared = ctx.workdir / f"tensorrt-{spec.name}-prepared.onnx"
            fp32_layers = prepare_onnx(reference_onnx(ctx, spec), prepared)
            calibration = quantize_onnx(ctx, spec, prepared, onnx_file, precision, flavour=self.name)
        else:
            fp32_layers = prepare_onnx(reference_onnx(ctx, spec), onnx_file)
        add_metadata(onnx_file, ctx, spec, precision)
        op_check = check_ops(onnx.load(str(onnx_file)))
        profile = profile_for(ctx, spec)
        script = folder / SCRIPT_FILE
        script.write_text(trtexec_script(profile, precision == "fp16", fp32_layers, DEFAULT_WORKSPACE,
                                         int8=precision == "int8"))
        script.chmod(0o755)
        env: dict[str, Any] = {
            "tensorrt": TRT_VERSIONS, "opset": OPSET, "onnx": onnx.__version__, "profile": profile.to_dict(),
            "workspace_bytes": DEFAULT_WORKSPACE, "fp32_layers": fp32_layers if precision in ("fp16", "int8") else [],
            "build": BUILD_NEEDS, "engine_built": False,
        }
        fallback = Fallback("polygraphy onnxruntime backend (TensorRT-ready ONNX); engine not built here",
                            _polygraphy_runner)
        return Built([ONNX_FILE, SCRIPT_FILE], env, calibration, fallback=fallback, records={"op_check": op_check},
                     loaded=partial(_engine_built, root=ctx.bundle_root, folder=folder))


def _engine_built(built: Built, backend: Any, *, root: Path, folder: Path) -> None:
    """With TensorRT and an NVIDIA GPU here, loading built the engine on this GPU (backend: the
    runtime's TensorRTBackend): list it, and say the engine itself is what was validated."""
    plan = Path(backend.plan_path)
    built.files.append(plan.relative_to(folder).as_posix())
    built.environment.update(engine_built=True, engine={
        "tensorrt_version": backend.tensorrt_version, "gpu": backend.gpu, "file": plan.relative_to(root).as_posix()})
    built.checked_with = f"TensorRT {backend.tensorrt_version} engine on {backend.gpu} (TensorRTBackend)"


@contextmanager
def _polygraphy_runner(path: Path, artifact: Artifact) -> Iterator[Run]:
    """The ONNX through polygraphy's OnnxrtRunner on CPU (not a runtime backend: the TensorRT check
    where no engine can be built), with its info log lines silenced."""
    _deps.require("polygraphy", extra="export", purpose="checking the TensorRT-ready ONNX")
    logger = importlib.import_module("polygraphy.logger").G_LOGGER
    onnxrt = importlib.import_module("polygraphy.backend.onnxrt")
    # it logs "[I] Creating ONNX-Runtime Inference Session..." (and a hint about `colored`) otherwise
    with logger.verbosity(logger.ERROR):
        runner = onnxrt.OnnxrtRunner(onnxrt.SessionFromOnnx(str(path), providers=["cpu"]))
        with runner:
            yield lambda x: runner.infer({artifact.inputs[0].name: x})[artifact.outputs[0].name]
