"""The row cosine between two embedding matrices: the one definition that export validation, the
INT8 accuracy guard and bench all measure with, so their numbers are comparable."""

from __future__ import annotations

import numpy as np


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, D] x [N, D] -> [N] float64 cosine of each row pair, computed in float64 so fp16/int8
    embeddings are not judged with fp16 rounding. A zero row scores 0 rather than NaN."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return np.asarray((a64 * b64).sum(1) / (norms + 1e-12))
