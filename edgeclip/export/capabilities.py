"""The capability table: target x precision x options x where it builds and runs.

One table drives argument validation (`edgeclip export`), the `--help` text, the README table
and `edgeclip bench`. Torch-free and SDK-free, so the device side may read it too.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeclip.errors import ConfigError, UnknownNameError


@dataclass(frozen=True)
class Capability:
    target: str
    precisions: tuple[str, ...]
    options: tuple[str, ...]  # target-specific CLI options it accepts
    backend: str  # runtime backend that runs its artifacts
    builds_on: str  # what exporting needs
    runs_on: str  # where its artifacts run
    numerics_here: str  # what this Linux CPU machine can check


CAPABILITIES: dict[str, Capability] = {
    c.target: c
    for c in (
        Capability(
            "onnx", ("fp32", "fp16"), (), "onnxruntime",
            builds_on="anywhere (torch, onnx)",
            runs_on="ONNX Runtime: any CPU; CUDA / TensorRT execution providers",
            numerics_here="yes: onnxruntime CPU vs torch",
        ),
        Capability(
            "openvino", ("fp32", "fp16"), ("ov_precision_hint",), "openvino",
            builds_on="anywhere (openvino)",
            runs_on="OpenVINO: x86 CPUs (Intel/AMD), Intel GPU and NPU",
            numerics_here="yes: OpenVINO CPU plugin (f32 hint) vs torch",
        ),
        Capability(
            "tensorrt", ("fp32", "fp16"), ("trt_min_batch", "trt_opt_batch", "trt_max_batch"), "tensorrt",
            builds_on="ONNX + build recipe anywhere; the engine on an NVIDIA GPU with TensorRT 10",
            runs_on="NVIDIA GPUs and Jetson (engine built on the device, cached)",
            numerics_here="TensorRT-ready ONNX in onnxruntime; engine needs TensorRT + NVIDIA GPU",
        ),
        Capability(
            "coreml", ("fp16", "fp32", "int8w", "palette6", "palette4"),
            ("coreml_target", "coreml_flexible_batch", "coreml_image_input"), "coreml",
            builds_on="anywhere (coremltools)",
            runs_on="macOS / iOS (CPU, GPU, Neural Engine)",
            numerics_here="spec only; prediction needs macOS",
        ),
    )
}


def capability(target: str) -> Capability:
    if target not in CAPABILITIES:
        raise UnknownNameError("target", target, CAPABILITIES)
    return CAPABILITIES[target]


def check_request(target: str, precision: str, options: dict[str, object] | None = None) -> Capability:
    """Refuse an unsupported precision or option for a target, naming what is supported."""
    cap = capability(target)
    if precision not in cap.precisions:
        raise ConfigError(
            f"target '{target}' does not support precision '{precision}'",
            fix=f"use one of: {', '.join(cap.precisions)}",
        )
    for opt, value in (options or {}).items():
        if value is not None and value is not False and opt not in cap.options:
            raise ConfigError(
                f"option --{opt.replace('_', '-')} does not apply to target '{target}'",
                fix=f"{target} accepts: {', '.join('--' + o.replace('_', '-') for o in cap.options) or 'no options'}",
            )
    return cap


def markdown_table() -> str:
    """The README's capability table, generated from CAPABILITIES."""
    rows = ["| target | precisions | builds on | runs on | numerics checked here |", "|---|---|---|---|---|"]
    for c in CAPABILITIES.values():
        rows.append(f"| {c.target} | {', '.join(c.precisions)} | {c.builds_on} | {c.runs_on} | {c.numerics_here} |")
    return "\n".join(rows)
