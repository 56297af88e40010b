"""Latency statistics that survive a noisy shared machine: warm-up, clipped outliers, medians."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Timing:
    samples_ms: list[float]
    outliers: int = 0

    @classmethod
    def from_samples(cls, samples_ms: list[float]) -> Timing:
        """Drop samples above Q3 + 3 IQR (preemption, page faults) and count them."""
        a = np.asarray(samples_ms, dtype=np.float64)
        if len(a) >= 8:
            q1, q3 = np.percentile(a, [25, 75])
            keep = a <= q3 + 3 * (q3 - q1)
            return cls([float(x) for x in a[keep]], int((~keep).sum()))
        return cls([float(x) for x in a])

    def summary(self, batch_size: int) -> dict[str, float | int]:
        a = np.asarray(self.samples_ms)
        median = float(np.median(a))
        return {
            "median_ms": round(median, 4),
            "p90_ms": round(float(np.percentile(a, 90)), 4),
            "p99_ms": round(float(np.percentile(a, 99)), 4),
            "mean_ms": round(float(a.mean()), 4),
            "std_ms": round(float(a.std()), 4),
            "runs": len(a),
            "outliers_clipped": self.outliers,
            "throughput_per_s": round(1000.0 * batch_size / median, 2) if median > 0 else 0.0,
        }


def time_call(fn: Callable[[], object], repeats: int) -> list[float]:
    """Milliseconds for each of `repeats` calls."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def interleave(
    calls: dict[str, Callable[[], object]], *, warmup: int, runs: int | None, min_time_s: float | None,
    chunk: int = 3,
) -> dict[str, Timing]:
    """Time every call in round-robin chunks so machine drift hits all rows alike.

    Stops after `runs` samples per row, or once `min_time_s` of wall time has passed (and
    each row has at least 5 samples).
    """
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in calls}
    start = time.perf_counter()
    while True:
        for key, fn in calls.items():
            samples[key] += time_call(fn, chunk)
        n = min(len(v) for v in samples.values())
        if runs is not None and n >= runs:
            break
        if runs is None and time.perf_counter() - start >= (min_time_s or 5.0) and n >= 5:
            break
    return {k: Timing.from_samples(v[: runs] if runs else v) for k, v in samples.items()}
