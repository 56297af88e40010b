"""Bench rows for artifacts that run on this machine only through a simulator (RKNN's .rknn on
rknn-toolkit2's PC simulator, when no Rockchip board SDK is installed): accuracy only, never timed.

A simulator's speed says nothing about the device's (it emulates the NPU on the CPU), so these
artifacts are kept out of the timed, interleaved rows. Each gets an accuracy row (embedding cosine
against the run's reference on the probes; zero-shot top-1 on the eval set when one is given) and a
`skipped` line that says why it has no timing, which the markdown and console reports print.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from edgeclip import _deps
from edgeclip.bench.evalset import load_eval_set
from edgeclip.bundle import Artifact, Bundle
from edgeclip.export.capabilities import CAPABILITIES
from edgeclip.runtime.backends import backend_class
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.classifier import Encoder
from edgeclip.runtime.similarity import cosine_rows

# backend -> (the board SDK whose absence means "simulated here", what runs it instead)
SIMULATED = {"rknn": ("rknnlite", "rknn-toolkit2's PC simulator")}
SPEED_NOTE = "accuracy only, not timed: the simulator's speed is not the device's"

Run = Callable[[np.ndarray], np.ndarray]


def runs_simulated(backend: str) -> bool:
    """True when `backend` runs here only on its simulator (its board SDK is not installed)."""
    return backend in SIMULATED and not _deps.has(SIMULATED[backend][0])


def _wanted(bundle: Bundle, encoders: list[str], backends: list[str] | None,
            precisions: list[str] | None) -> list[tuple[Artifact, str]]:
    out = []
    for a in bundle.manifest.artifacts:
        backend = CAPABILITIES[a.target].backend if a.target in CAPABILITIES else a.target
        if a.encoder in encoders and runs_simulated(backend) and (not backends or backend in backends) \
                and (not precisions or a.precision in precisions):
            out.append((a, backend))
    return out


def simulated_rows(cfg: Any, bundle: Bundle, probes: dict[str, np.ndarray], refs: dict[str, tuple[Run, str]],
                   labels: np.ndarray | None) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(accuracy rows, skipped lines) for the simulated artifacts `cfg` (a BenchConfig) selects.
    refs: encoder -> (reference runner, its label); labels: the eval classes' embeddings, if any."""
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    chosen = _wanted(bundle, cfg.encoders, cfg.backends, cfg.precisions)
    evalset = load_eval_set(cfg.eval_data, bundle, cfg.eval_size) if cfg.eval_data and chosen else None
    for artifact, backend in chosen:
        name = f"{artifact.key} on {backend}"
        if not backend_class(backend).available():
            skipped.append({"row": name, "reason": f"{backend} is not usable on this machine"})
            continue
        row = _accuracy(bundle, artifact, backend, probes, refs.get(artifact.encoder), labels, evalset)
        rows.append(row)
        figures = "".join(f", {k} {row[k]}" for k in ("cosine_min", "top1", "eval_images") if k in row)
        skipped.append({"row": name, "reason": f"ran on {SIMULATED[backend][1]}, {SPEED_NOTE}{figures}"})
    return rows, skipped


def _accuracy(bundle: Bundle, artifact: Artifact, backend: str, probes: dict[str, np.ndarray],
              ref: tuple[Run, str] | None, labels: np.ndarray | None, evalset: Any) -> dict[str, Any]:
    enc = Encoder(backend_class(backend)(bundle.artifact_path(artifact), artifact, BackendOptions(device="SIM")),
                  artifact, "bench (simulator)")
    try:
        row: dict[str, Any] = {"key": f"{artifact.encoder}/{backend}-{artifact.precision}", "encoder": artifact.encoder,
                               "backend": backend, "precision": artifact.precision, "ran_on": SIMULATED[backend][1],
                               "timing": SPEED_NOTE, "environment": dict(artifact.environment.details)}
        x = probes[artifact.encoder]
        if ref is not None:
            cos = cosine_rows(enc(x), ref[0](x))
            row.update(cosine_min=round(float(cos.min()), 6), cosine_mean=round(float(cos.mean()), 6),
                       cosine_ref=ref[1])
        if evalset is not None and labels is not None and artifact.encoder == "image":
            emb = enc(evalset.pixels)  # the backend runs the rows one at a time (static batch 1)
            row.update(top1=round(float(((emb @ labels.T).argmax(1) == evalset.targets).mean() * 100), 2),
                       eval_images=len(evalset.targets))
        return row
    finally:
        close = getattr(enc.backend, "close", None)  # the simulator is a worker process
        if close is not None:
            close()
