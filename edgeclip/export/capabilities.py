"""The capability table: target x precision x options x where it builds and runs.

One table drives argument validation (`edgeclip export`), the `--help` text, the README table
and `edgeclip bench`. Torch-free and SDK-free. Which backend runs a target's artifacts is the
runtime's fact (the device picks artifacts by it): `backend` reads it from the runtime's registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeclip.errors import ConfigError, UnknownNameError
from edgeclip.runtime.backends import target_backend

# options of every INT8-capable target: calibration source and method, and the accuracy guard's budget
INT8_OPTIONS = ("calib", "calib_size", "calib_method", "max_accuracy_drop", "min_cosine")
# INT8 targets timed on the backend that will run them here: their export keeps int8 only where faster
TIMED_INT8_OPTIONS = (*INT8_OPTIONS, "no_speed_pass")


@dataclass(frozen=True)
class Capability:
    target: str
    precisions: tuple[str, ...]
    options: tuple[str, ...]  # target-specific CLI options it accepts
    builds_on: str  # what exporting needs
    runs_on: str  # where its artifacts run
    numerics_here: str  # what this Linux CPU machine can check
    # part of `--target all`: False for targets that need an environment of their own (litert-torch,
    # rknn-toolkit2's venv) or a required option (--rknn-platform); they are exported by name
    in_all: bool = True

    @property
    def backend(self) -> str:
        """The runtime backend that runs this target's artifacts."""
        return target_backend(self.target)


CAPABILITIES: dict[str, Capability] = {
    c.target: c
    for c in (
        Capability(
            "onnx", ("fp32", "fp16", "int8", "int8-dynamic"), ("image_input", *TIMED_INT8_OPTIONS),
            builds_on="anywhere (torch, onnx)",
            runs_on="ONNX Runtime: any CPU; CUDA / TensorRT execution providers",
            numerics_here="yes: onnxruntime CPU vs torch",
        ),
        Capability(
            "openvino", ("fp32", "fp16", "int8"), ("image_input", *TIMED_INT8_OPTIONS),
            builds_on="anywhere (openvino)",
            runs_on="OpenVINO: x86 CPUs (Intel/AMD), Intel GPU and NPU",
            numerics_here="yes: OpenVINO CPU plugin (f32 hint) vs torch",
        ),
        Capability(
            "tensorrt", ("fp32", "fp16", "int8"), ("trt_min_batch", "trt_opt_batch", "trt_max_batch", *INT8_OPTIONS),
            builds_on="ONNX + build recipe anywhere; the engine on an NVIDIA GPU with TensorRT 10",
            runs_on="NVIDIA GPUs and Jetson (engine built on the device, cached)",
            numerics_here="TensorRT-ready ONNX in onnxruntime; engine needs TensorRT + NVIDIA GPU",
        ),
        Capability(
            "coreml", ("fp16", "fp32", "int8w", "palette6", "palette4"),
            ("coreml_target", "coreml_flexible_batch", "coreml_image_input"),
            builds_on="anywhere (coremltools)",
            runs_on="macOS / iOS (CPU, GPU, Neural Engine)",
            numerics_here="spec only; prediction needs macOS",
        ),
        Capability(
            "litert", ("fp32", "fp16", "int8-dynamic", "int8"), INT8_OPTIONS,
            builds_on="anywhere (litert-torch, ai-edge-quantizer)",
            runs_on="LiteRT: Android, ARM Linux boards (XNNPACK), any CPU; static batch 1 for NNAPI/GPU delegates",
            numerics_here="yes: LiteRT Interpreter (XNNPACK) vs torch",
            in_all=False,
        ),
        Capability(
            "rknn", ("fp16", "int8"), ("rknn_platform", "toolkit_python", *INT8_OPTIONS),
            builds_on="anywhere x86 (rknn-toolkit2 in its own environment); one .rknn per --rknn-platform",
            runs_on="Rockchip NPUs: rk3588, rk3576, rk3568, rk3566, rk3562 (rknn-toolkit-lite2 on the board)",
            numerics_here="simulator only: rknn-toolkit2's PC simulator vs torch (accuracy, not NPU speed)",
            in_all=False,
        ),
    )
}


def all_targets() -> list[str]:
    """What `--target all` exports."""
    return [c.target for c in CAPABILITIES.values() if c.in_all]


def register_capability(cap: Capability) -> None:
    """Add a target's row (its builder and backend are registered with their own registries)."""
    if cap.target in CAPABILITIES:
        raise ConfigError(f"target '{cap.target}' already has a capability row", fix="choose another name")
    CAPABILITIES[cap.target] = cap


def capability(target: str) -> Capability:
    if target not in CAPABILITIES:
        raise UnknownNameError("target", target, CAPABILITIES)
    return CAPABILITIES[target]


def plan_exports(
    targets: list[str], precisions: list[str] | None, options: dict[str, object] | None = None
) -> list[tuple[str, str]]:
    """(target, precision) pairs to export, after refusing anything unsupported.

    No precision: each target's default (its first). Named targets: every precision must be
    supported by each of them. `all` (the targets marked `in_all`): each gets the requested
    precisions it supports (its default if none), and every requested precision must fit at least one.
    Nothing is ever silently rewritten into something the user did not ask for.
    """
    every = targets == ["all"]
    names = all_targets() if every else targets
    caps = [capability(t) for t in names]  # unknown names fail first, with a suggestion
    plan: list[tuple[str, str]] = []
    for cap in caps:
        if not precisions:
            chosen = [cap.precisions[0]]
        elif every:
            chosen = [p for p in precisions if p in cap.precisions] or [cap.precisions[0]]
        else:
            bad = [p for p in precisions if p not in cap.precisions]
            if bad:
                raise ConfigError(
                    f"target '{cap.target}' does not support precision '{bad[0]}'",
                    fix=f"use one of: {', '.join(cap.precisions)}",
                )
            chosen = list(precisions)
        plan += [(cap.target, p) for p in chosen]
    for p in precisions or []:
        if not any(p in cap.precisions for cap in caps):
            raise ConfigError(f"no requested target supports precision '{p}'",
                              fix="; ".join(f"{c.target}: {', '.join(c.precisions)}" for c in caps))
    _check_options(caps, options or {})
    return plan


def _check_options(caps: list[Capability], options: dict[str, object]) -> None:
    targets = [c.target for c in caps]
    for opt, value in options.items():
        if value is None or value is False:
            continue
        if not any(opt in cap.options for cap in caps):
            owners = [c.target for c in CAPABILITIES.values() if opt in c.options]
            raise ConfigError(
                f"option --{opt.replace('_', '-')} does not apply to target(s) {', '.join(targets)}",
                fix=f"it is an option of: {', '.join(owners) or 'no target'}",
            )


def markdown_table() -> str:
    """The README's capability table, generated from CAPABILITIES."""
    rows = ["| target | precisions | builds on | runs on | numerics checked here |", "|---|---|---|---|---|"]
    for c in CAPABILITIES.values():
        rows.append(f"| {c.target} | {', '.join(c.precisions)} | {c.builds_on} | {c.runs_on} | {c.numerics_here} |")
    return "\n".join(rows)
