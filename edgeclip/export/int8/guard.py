"""The INT8 accuracy guard: measure a quantized encoder against fp32 on held-out inputs and, when
it breaks the budget, keep the most sensitive layers in float until it does not.

Target-agnostic: a target passes `quantize(excluded) -> run` (it writes the artifact with those
layers left in float and returns a callable inputs -> embeddings) and the candidate layer names,
in graph order. The artifact on disk is always the last one quantized, so the guard's final
quantization is of the exclusion set it reports.

Each quantization is a full NNCF / onnxruntime / LiteRT / RKNN run, so the sensitivity ranking
is searched coarse to fine rather than paid once per layer: the candidates are split into about
sqrt(N) groups of neighbouring layers, one quantization per group (the group left in float)
ranks the groups, and only a group that comes first is ranked member by member. Layers are left
in float best first: the next one is the most helpful layer measured alone unless an unranked
group scored higher, in which case that group is ranked first. When leaving more layers in float
never hurts, a group scores at least as well as its best member, so layers are left in float in
the order one quantization per layer would give, at about 2*sqrt(N) quantizations (plus sqrt(N)
for each further group a harmful layer sits in) instead of N. With few candidates (where groups
cannot save anything) every layer is ranked alone.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeclip.errors import ExportError
from edgeclip.runtime.similarity import cosine_rows

log = logging.getLogger(__name__)

Run = Callable[[np.ndarray], np.ndarray]
Quantize = Callable[[list[str]], Run]
SENSITIVITY_PROBES = 64  # held-out inputs used to rank layers (the final check uses all of them)


@dataclass(frozen=True)
class Budget:
    max_accuracy_drop: float = 1.0  # zero-shot top-1 points (or disagreement when no true labels)
    min_cosine: float = 0.995  # worst held-out embedding cosine against fp32


@dataclass
class HeldOut:
    """Held-out inputs, their fp32 embeddings, and what top-1 is measured against (image tower)."""

    inputs: np.ndarray
    reference: np.ndarray  # fp32 embeddings [N, D]
    label_embeddings: np.ndarray | None = None  # [C, D]
    truth: np.ndarray | None = None  # true class index per input, when known


@dataclass
class GuardResult:
    metrics: dict[str, Any]
    excluded: list[str]  # every layer left in float (defaults + guard)
    excluded_by_guard: list[str] = field(default_factory=list)
    sensitivity: dict[str, float] = field(default_factory=dict)  # layer -> probe mean cosine with it in float
    # groups of neighbouring layers ranked together: {"layers": [...], "cosine_mean": probe mean cosine
    # with the group in float}; a member absent from `sensitivity` was ranked only by its group
    groups: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 1
    defaults_quantized: list[str] = field(default_factory=list)  # float-by-default layers measured safe
    # left in float because their kind ran slower in int8 here (speed.py), and each kind's trial
    excluded_for_speed: list[str] = field(default_factory=list)
    speed: list[dict[str, Any]] = field(default_factory=list)


def measure(held: HeldOut, got: np.ndarray) -> dict[str, Any]:
    """Embedding cosine (min / p1 / mean) and, with label embeddings, top-1 agreement and drop."""
    cos = cosine_rows(held.reference, got)
    m: dict[str, Any] = {
        "heldout_size": len(cos), "cosine_min": float(cos.min()),
        "cosine_p1": float(np.percentile(cos, 1)), "cosine_mean": float(cos.mean()),
    }
    if held.label_embeddings is not None:
        ref_top = (held.reference @ held.label_embeddings.T).argmax(1)
        got_top = (got @ held.label_embeddings.T).argmax(1)
        m["top1_agreement"] = float((ref_top == got_top).mean())
        if held.truth is not None:
            m["top1_fp32"] = float((ref_top == held.truth).mean())
            m["top1_int8"] = float((got_top == held.truth).mean())
            m["top1_drop"] = round(100 * (m["top1_fp32"] - m["top1_int8"]), 4)
            m["top1_drop_measured_as"] = "accuracy against true labels (points)"
        else:
            m["top1_drop"] = round(100 * (1 - m["top1_agreement"]), 4)
            m["top1_drop_measured_as"] = "disagreement with fp32 top-1 (points; no true labels)"
    return m


def within(m: dict[str, Any], budget: Budget) -> bool:
    ok = m["cosine_min"] >= budget.min_cosine
    return ok and ("top1_drop" not in m or m["top1_drop"] <= budget.max_accuracy_drop)


def evaluate(run: Run, held: HeldOut, batch: int = 32) -> dict[str, Any]:
    got = np.concatenate([run(held.inputs[i : i + batch]) for i in range(0, len(held.inputs), batch)])
    return measure(held, got)


def guarded_quantize(
    quantize: Quantize, candidates: Sequence[str], keep_float: Sequence[str], held: HeldOut, budget: Budget, what: str
) -> GuardResult:
    """Quantize with `keep_float` left in float; if the held-out numbers break `budget`, leave the
    `candidates` (graph order) in float one by one, most harmful first as the coarse-to-fine search
    ranks them, until the budget holds. Raises ExportError with the best numbers reached when even
    every candidate in float (measured once, before the search) misses the budget."""
    if keep_float:
        # CLIP-aware defaults stay float "unless measured safe": measure that first, since every
        # float island costs speed (on ViT-B/32, 2.9x -> 2.0x for onnxruntime in our probe)
        metrics = evaluate(quantize([]), held)
        if within(metrics, budget):
            return GuardResult(metrics, [], attempts=1, defaults_quantized=list(keep_float))
    excluded = list(keep_float)
    metrics = evaluate(quantize(excluded), held)
    result = GuardResult(metrics, list(excluded), attempts=2 if keep_float else 1)
    if within(metrics, budget):
        return result
    log.warning("%s: INT8 misses the budget (%s); running the sensitivity search", what, _fmt(metrics))
    probe = HeldOut(held.inputs[:SENSITIVITY_PROBES], held.reference[:SENSITIVITY_PROBES])
    remaining = [c for c in candidates if c not in excluded]
    best = (metrics, list(excluded))
    if len(remaining) > 1:
        # every candidate in float first (one quantization): when even that misses the budget, no
        # search can meet it, and finding that out by searching costs N + sqrt(N) quantizations
        everything = [*excluded, *remaining]
        reach = evaluate(quantize(everything), held)
        result.attempts += 1
        if not within(reach, budget):
            raise _out_of_reach(what, budget, max(best, (reach, everything), key=lambda b: _score(b[0], budget)))
    for name in _most_harmful_first(quantize, remaining, list(excluded), probe, result):
        excluded.append(name)
        metrics = evaluate(quantize(excluded), held)
        result.attempts += 1
        if _score(metrics, budget) > _score(best[0], budget):
            best = (metrics, list(excluded))
        if within(metrics, budget):
            result.metrics, result.excluded = metrics, list(excluded)
            result.excluded_by_guard = [n for n in excluded if n not in keep_float]
            log.warning("%s: within budget after leaving %d layer(s) in float (%d quantizations): %s", what,
                        len(result.excluded_by_guard), result.attempts, ", ".join(result.excluded_by_guard))
            return result
    raise _out_of_reach(what, budget, best)


def _out_of_reach(what: str, budget: Budget, best: tuple[dict[str, Any], list[str]]) -> ExportError:
    return ExportError(
        f"{what}: INT8 cannot meet the accuracy budget (min cosine >= {budget.min_cosine}, top-1 drop <= "
        f"{budget.max_accuracy_drop} points) even with every quantizable layer in float; best reached: "
        f"{_fmt(best[0])} with {len(best[1])} layer(s) in float",
        fix="relax --min-cosine / --max-accuracy-drop, calibrate on more representative images (--calib), "
            "try --calib-method percentile, or export fp16/fp32",
    )


def _groups(layers: list[str]) -> list[list[str]]:
    """About sqrt(N) runs of neighbouring layers, sizes within one of each other; single layers
    when grouping cannot beat one quantization per layer (N <= 2 * ceil(sqrt(N)))."""
    n = len(layers)
    k = math.ceil(math.sqrt(n))
    k = n if n <= 2 * k else k
    return [layers[i * n // k : (i + 1) * n // k] for i in range(k)]


def _most_harmful_first(
    quantize: Quantize, layers: list[str], base: list[str], probe: HeldOut, result: GuardResult
) -> Iterator[str]:
    """Yield `layers` most harmful first: best first over groups and layers alike, by the probe
    mean cosine with `base` plus the group or layer left in float. A group is ranked member by
    member only when it comes first, so a group that never does costs one quantization."""

    def score(names: list[str]) -> float:
        result.attempts += 1
        return float(evaluate(quantize([*base, *names]), probe)["cosine_mean"])

    place = {name: i for i, name in enumerate(layers)}  # ties go in graph order
    queue: list[tuple[float, int, list[str]]] = []  # (-score, place of its first layer, group or layer)
    for group in _groups(layers):
        s = score(group)
        if len(group) == 1:
            result.sensitivity[group[0]] = s
        else:
            result.groups.append({"layers": group, "cosine_mean": s})
        heapq.heappush(queue, (-s, place[group[0]], group))
    while queue:
        group = heapq.heappop(queue)[2]
        if len(group) == 1:
            yield group[0]
            continue
        for name in group:
            result.sensitivity[name] = s = score([name])
            heapq.heappush(queue, (-s, place[name], [name]))


def _score(m: dict[str, Any], budget: Budget) -> float:
    """Larger is better: how far inside (or outside) the budget, in units of the budget."""
    cos = (m["cosine_min"] - budget.min_cosine) / max(1e-9, 1 - budget.min_cosine)
    drop = (budget.max_accuracy_drop - m.get("top1_drop", 0.0)) / max(1e-9, budget.max_accuracy_drop)
    return min(cos, drop)


def _fmt(m: dict[str, Any]) -> str:
    s = f"cosine min {m['cosine_min']:.5f} p1 {m['cosine_p1']:.5f} mean {m['cosine_mean']:.5f}"
    return s + (f", top-1 drop {m['top1_drop']:.2f} points" if "top1_drop" in m else "")
