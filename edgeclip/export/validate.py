"""Validate an exported artifact against the torch fp32 reference on fixed probe inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from edgeclip.errors import ValidationError

# minimum cosine between artifact and torch embeddings, per precision
# (INT8 on the fixed probes, which include noise images no calibration set covers; the accuracy
# guard's held-out numbers are INT8's real gate)
MIN_COSINE = {"fp32": 0.99999, "fp16": 0.999, "int8": 0.99, "int8-dynamic": 0.99}


def compare(reference: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """Per-row cosine (min/mean) and max-abs difference between [N, D] embeddings."""
    ref = reference.astype(np.float64)
    act = actual.astype(np.float64)
    cos = (ref * act).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(act, axis=1) + 1e-12)
    return {
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "max_abs": float(np.abs(ref - act).max()),
    }


def validate(
    encoder: torch.nn.Module,
    probes: torch.Tensor,
    run: Callable[[np.ndarray], np.ndarray],
    precision: str,
    what: str,
    label_embeddings: np.ndarray | None = None,
) -> dict[str, Any]:
    """Run the probes at batch 1 and at full batch through `run` and through torch.

    Raises ValidationError when the worst cosine is below the precision's threshold.
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
        "threshold_cosine": MIN_COSINE.get(precision, 0.99),
    }
    if label_embeddings is not None and reference.shape[1] == label_embeddings.shape[1]:
        # would the artifact pick the same label as torch for each probe?
        same = (reference @ label_embeddings.T).argmax(1) == (batched @ label_embeddings.T).argmax(1)
        result["top1_agreement"] = float(same.mean())
    result["passed"] = result["cosine_min"] >= result["threshold_cosine"]
    if not result["passed"]:
        raise ValidationError(
            f"{what} disagrees with the torch reference: cosine {result['cosine_min']:.6f} "
            f"< {result['threshold_cosine']} (max abs {result['max_abs']:.3g}); the artifact was not registered"
        )
    return result
