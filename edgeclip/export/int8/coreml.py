"""CoreML weight-only compression: int8 weights (`int8w`) and k-means palettes (`palette6`,
`palette4`) on a converted ML Program. Compute stays fp16; no calibration data is needed."""

from __future__ import annotations

from typing import Any

PALETTE_BITS = {"palette6": 6, "palette4": 4}
WEIGHT_ONLY = ("int8w", *PALETTE_BITS)


def compress_weights(model: Any, precision: str) -> Any:
    """The compressed model (or `model` itself for fp16/fp32). Weights under coremltools' default
    threshold (2048 elements: biases, norms, small matrices) stay fp16 because compressing them
    saves nothing."""
    if precision not in WEIGHT_ONLY:
        return model
    import coremltools.optimize.coreml as cto

    if precision == "int8w":
        op: Any = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
        return cto.linear_quantize_weights(model, config=cto.OptimizationConfig(global_config=op))
    op = cto.OpPalettizerConfig(mode="kmeans", nbits=PALETTE_BITS[precision], granularity="per_tensor")
    return cto.palettize_weights(model, config=cto.OptimizationConfig(global_config=op))


def compression_name(precision: str) -> str | None:
    """The manifest's environment["compression"]: how the weights are stored, None when uncompressed."""
    if precision == "int8w":
        return "int8 linear symmetric per-channel (weights only)"
    if precision in PALETTE_BITS:
        return f"{PALETTE_BITS[precision]}-bit k-means palettization, per tensor (weights only)"
    return None
