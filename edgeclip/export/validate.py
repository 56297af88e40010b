"""Validate an exported artifact against the torch fp32 reference: on fixed probe inputs, and for
activation-quantized INT8 on the held-out inputs of the accuracy guard (its probes only recorded)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from edgeclip.bundle import PreprocessConfig, TensorSpec
from edgeclip.errors import ValidationError
from edgeclip.export.encoders import UINT8_INPUT, uint8_pixels
from edgeclip.export.int8.guard import Budget, HeldOut, measure, within
from edgeclip.runtime.similarity import cosine_rows

# minimum cosine between artifact and torch embeddings on the probes, per precision
MIN_COSINE = {"fp32": 0.99999, "fp16": 0.999}
DEFAULT_MIN_COSINE = 0.99  # weight-only precisions (CoreML int8w, palettes)
# Activation-quantized INT8 is gated by the accuracy guard's budget on held-out real inputs, measured
# again here on the saved artifact. The probes include noise images that no calibration set covers:
# on the trained edge model OpenVINO INT8 read cosine 0.948 on them while the guard measured 0.99985
# on real images. So INT8 probe numbers are recorded for information and never veto.
GUARDED = ("int8", "int8-dynamic")
PROBES_ROLE = "informational: INT8 is gated by the accuracy budget on held-out inputs (see heldout)"
HELDOUT_BATCH = 32


def compare(reference: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """Per-row cosine (min/mean), max-abs difference and the largest difference in row length
    between [N, D] embeddings."""
    ref = reference.astype(np.float64)
    act = actual.astype(np.float64)
    cos = cosine_rows(ref, act)
    return {
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "max_abs": float(np.abs(ref - act).max()),
        "norm_max_dev": float(np.abs(np.linalg.norm(act, axis=1) - np.linalg.norm(ref, axis=1)).max()),
    }


def max_norm_dev(min_cosine: float) -> float:
    """The length error allowed where the cosine must reach `min_cosine`: the distance that cosine
    allows between unit vectors, sqrt(2 (1 - c)). Cosine alone cannot see an artifact whose
    embeddings are scaled or not L2-normalised, while the runtime scores and ranks them as unit
    vectors (softmax over logit_scale * dot products, similarity across images)."""
    return math.sqrt(2 * (1 - min_cosine))


Run = Callable[[np.ndarray], np.ndarray]


def fed_as(run: Run, artifact_input: TensorSpec, cfg: PreprocessConfig) -> Run:
    """`run` taking the normalised float pixels that probes and held-out inputs are kept as. An
    artifact with uint8 input gets the very images those floats came from, as uint8, so it is
    judged on the same pixels and against the same torch reference as a float-input artifact."""
    if artifact_input.dtype != UINT8_INPUT:
        return run
    return lambda x: run(uint8_pixels(x, cfg))


def validate(
    encoder: torch.nn.Module,
    probes: torch.Tensor,
    run: Callable[[np.ndarray], np.ndarray],
    precision: str,
    what: str,
    label_embeddings: np.ndarray | None = None,
    heldout: tuple[HeldOut, Budget] | None = None,
) -> dict[str, Any]:
    """Run the probes at batch 1 and at full batch through `run` and through torch.

    Raises ValidationError when the worst cosine is below the precision's threshold. GUARDED
    precisions record the probe numbers and are judged on `heldout` against its budget instead.
    """
    with torch.no_grad():
        reference = encoder(probes).float().numpy()
    single = np.concatenate([run(probes[i : i + 1].numpy()) for i in range(len(probes))])
    batched = run(probes.numpy())
    s, b = compare(reference, single), compare(reference, batched)
    result: dict[str, Any] = {
        "probes": len(probes),
        "batch_sizes": [1, len(probes)],
        "cosine_min": min(s["cosine_min"], b["cosine_min"]),
        "cosine_mean": (s["cosine_mean"] + b["cosine_mean"]) / 2,
        "max_abs": max(s["max_abs"], b["max_abs"]),
        "norm_max_dev": max(s["norm_max_dev"], b["norm_max_dev"]),
    }
    if label_embeddings is not None and reference.shape[1] == label_embeddings.shape[1]:
        # would the artifact pick the same label as torch for each probe?
        same = (reference @ label_embeddings.T).argmax(1) == (batched @ label_embeddings.T).argmax(1)
        result["top1_agreement"] = float(same.mean())
    if precision in GUARDED:
        if heldout is None:  # a caller bug, but never let `python -O` turn it into an ungated artifact
            raise ValidationError(f"{what}: activation-quantized INT8 needs the guard's held-out inputs to be judged; "
                                  "the artifact was not registered", fix="export through export_bundle")
        _check_length(result, heldout[1].min_cosine, what)
        return {**result, "probes_role": PROBES_ROLE, **_heldout_gate(run, *heldout, what)}
    result["threshold_cosine"] = MIN_COSINE.get(precision, DEFAULT_MIN_COSINE)
    _check_length(result, result["threshold_cosine"], what)
    result["passed"] = result["cosine_min"] >= result["threshold_cosine"]
    if not result["passed"]:
        raise ValidationError(
            f"{what} disagrees with the torch reference: cosine {result['cosine_min']:.6f} "
            f"< {result['threshold_cosine']} (max abs {result['max_abs']:.3g}); the artifact was not registered",
            fix=_fix(precision),
        )
    return result


def _check_length(result: dict[str, Any], min_cosine: float, what: str) -> None:
    """Refuse embeddings whose lengths differ from torch's (its are 1: L2-normalised) by more than
    `max_norm_dev(min_cosine)`, on every probe, whatever their direction."""
    if result["norm_max_dev"] > max_norm_dev(min_cosine):
        raise ValidationError(
            f"{what} gives embeddings of another length than the torch reference (largest difference "
            f"{result['norm_max_dev']:.3g} > {max_norm_dev(min_cosine):.3g}): they are not L2-normalised as the "
            "manifest says; the artifact was not registered",
            fix="the exported graph must end in the encoder's L2 normalisation: export the encoder module "
                "(edgeclip.export.encoders.export_module), not its tower",
        )


def _heldout_gate(run: Callable[[np.ndarray], np.ndarray], held: HeldOut, budget: Budget, what: str) -> dict[str, Any]:
    """The accuracy budget measured on the saved artifact (the guard measured it while choosing
    layers; the file may have been written again since)."""
    x = held.inputs
    measured = measure(held, np.concatenate([run(x[i : i + HELDOUT_BATCH]) for i in range(0, len(x), HELDOUT_BATCH)]))
    gate = {"min_cosine": budget.min_cosine, "max_accuracy_drop": budget.max_accuracy_drop}
    if not within(measured, budget):
        drop = f", top-1 drop {measured['top1_drop']:.2f} points" if "top1_drop" in measured else ""
        raise ValidationError(
            f"{what} misses the INT8 accuracy budget on {measured['heldout_size']} held-out inputs: cosine min "
            f"{measured['cosine_min']:.5f} (>= {budget.min_cosine} needed){drop}; the artifact was not registered",
            fix="calibrate on more representative images (--calib), relax --min-cosine / --max-accuracy-drop, "
                "or export fp16/fp32",
        )
    return {"heldout": measured, "gate": gate, "passed": True}


def _fix(precision: str) -> str:
    if precision == "fp32":
        return ("the converter or runtime computes something else than torch for this model: export another "
                "--target, or upgrade its SDK (the manifest's environment names the versions used)")
    return ("this model loses too much accuracy at " + precision + ": export --precision fp32 for this target, "
            "or upgrade its SDK")
