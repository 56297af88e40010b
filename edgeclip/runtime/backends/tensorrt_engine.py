"""TensorRT engine building (TensorRT 10): the device builds its own engines, so this lives on the
runtime side. The export target writes the same recipe as `build_engine.sh` and calls this when it
can build here; the runtime backend calls it on first load on the device.

Imports nothing heavy at module top (the runtime never pulls torch); TensorRT is imported by
`build_engine` itself.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeclip import _deps
from edgeclip._io import atomic_path
from edgeclip.bundle import Artifact
from edgeclip.errors import BundleError, ExportError

# bytes; enough for ViT-L/14 tactics at batch 64, and only an upper bound
DEFAULT_WORKSPACE = 2 << 30
# Nodes renamed with this prefix are pinned to fp32 in fp16 engines: LayerNorm's variance and the
# final L2 norm's sum of squares overflow or lose precision in fp16 (TensorRT warns about
# LayerNorm after attention in fp16 for the same reason).
FP32_PREFIX = "edgeclip_fp32_"
# what build_engine.sh writes next to the ONNX, and the timing cache kept next to the engines
USER_PLAN, TIMING_CACHE = "model.plan", "timing.cache"


@dataclass(frozen=True)
class Profile:
    """The optimisation profile of one input: only the batch dimension varies."""

    input: str
    shape: tuple[int, ...]  # one example, without the batch dimension
    min_batch: int
    opt_batch: int
    max_batch: int

    def dims(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.shape)

    def trtexec(self, batch: int) -> str:
        return f"{self.input}:{'x'.join(map(str, self.dims(batch)))}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input, "min_batch": self.min_batch, "opt_batch": self.opt_batch,
            "max_batch": self.max_batch, "shape": list(self.shape),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Profile:
        return cls(str(d["input"]), tuple(d["shape"]), int(d["min_batch"]), int(d["opt_batch"]), int(d["max_batch"]))


def engine_name(artifact: Artifact, tensorrt_version: str, gpu: str) -> str:
    """Cache file name of an engine: TensorRT version + GPU + precision + what the engine depends on."""
    onnx_sha = artifact.files[artifact.main_file]
    key = json.dumps([onnx_sha, artifact.environment.profile, artifact.precision], sort_keys=True)
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-") or "gpu"
    return f"{tensorrt_version}-{slug}-{artifact.precision}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.plan"


def build_artifact_engine(onnx_path: Path, plan_path: Path, artifact: Artifact) -> Path:
    """Build the engine of a `tensorrt` artifact with the profile and workspace its manifest entry
    records; the timing cache sits next to the plan, so later builds on this device start warm."""
    env = artifact.environment
    if env.profile is None:
        raise BundleError(f"artifact {artifact.key} records no TensorRT profile in its environment",
                          fix="re-export it with `edgeclip export --target tensorrt`")
    profile = Profile.from_dict(env.profile)
    return build_engine(
        onnx_path, plan_path, fp16=artifact.precision == "fp16", min_batch=profile.min_batch,
        opt_batch=profile.opt_batch, max_batch=profile.max_batch,
        workspace_bytes=DEFAULT_WORKSPACE if env.workspace_bytes is None else env.workspace_bytes,
        timing_cache=plan_path.parent / TIMING_CACHE,
    )


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    *,
    fp16: bool,
    min_batch: int,
    opt_batch: int,
    max_batch: int,
    workspace_bytes: int,
    timing_cache: str | Path | None = None,
    int8: bool | None = None,
) -> Path:
    """Build a serialized TensorRT engine (.plan) for the ONNX at `onnx_path` with TensorRT's Python API.

    Only the batch dimension may be dynamic; it gets the (min, opt, max) profile. With fp16, nodes
    named FP32_PREFIX* stay fp32. int8 (None: when the graph has Q/DQ nodes) enables the INT8 and
    FP16 flags for an explicitly quantized graph, as `trtexec --int8 --fp16`. `timing_cache` is
    loaded when present and saved after the build. The plan is written atomically. Needs TensorRT 10
    and an NVIDIA GPU.
    """
    trt: Any = _deps.require("tensorrt", extra="tensorrt", purpose="building a TensorRT engine")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT {trt.__version__} could not parse {onnx_path}: {errors}",
                          fix="check the op check in the manifest and the TensorRT version (needs 10.x)")
    config = _precision_config(trt, builder, network, fp16, int8, workspace_bytes)
    config.add_optimization_profile(_batch_profile(builder, network, min_batch, opt_batch, max_batch))
    cache_file = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file and cache_file.is_file() else b"")
    config.set_timing_cache(cache, True)  # True: a cache from another GPU/version is ignored, not fatal
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path}",
                          fix="see the TensorRT log above (e.g. raise the workspace limit)")
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(memoryview(plan))
    if cache_file:
        with atomic_path(cache_file) as tmp:
            tmp.write_bytes(memoryview(cache.serialize()))
    return Path(plan_path)


def _precision_config(trt: Any, builder: Any, network: Any, fp16: bool, int8: bool | None, workspace_bytes: int) -> Any:
    """The builder config: workspace limit and precision flags (int8 None: when the graph has Q/DQ)."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if int8 is None:
        int8 = _has_qdq(trt, network)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
    if fp16 or int8:
        config.set_flag(trt.BuilderFlag.FP16)
        _pin_fp32(trt, network, config)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 matmuls would miss the fp32 parity threshold
    return config


def _batch_profile(builder: Any, network: Any, min_batch: int, opt_batch: int, max_batch: int) -> Any:
    """One optimisation profile in which every input varies only in its batch dimension."""
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        tail = tuple(tensor.shape)[1:]
        if any(d < 0 for d in tail):
            raise ExportError(f"input {tensor.name} has a dynamic dimension besides the batch: {tuple(tensor.shape)}")
        profile.set_shape(tensor.name, (min_batch, *tail), (opt_batch, *tail), (max_batch, *tail))
    return profile


def _has_qdq(trt: Any, network: Any) -> bool:
    """Whether the parsed network is explicitly quantized (has Quantize/Dequantize layers)."""
    kinds = (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
    return any(network.get_layer(i).type in kinds for i in range(network.num_layers))


def _pin_fp32(trt: Any, network: Any, config: Any) -> list[str]:
    """Keep the FP32_PREFIX layers (and the helper layers the parser adds for them) in fp32."""
    floats = (trt.float32, trt.float16)
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if FP32_PREFIX in layer.name and all(t.dtype in floats for t in outputs):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned.append(layer.name)
    if pinned:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return pinned
