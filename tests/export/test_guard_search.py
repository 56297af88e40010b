"""The guard's coarse-to-fine sensitivity search, counted on a numpy stand-in for a quantizer: how
many quantizations it makes, which layers it leaves in float, and that what it reports was
measured on the exclusion set it reports (and is the last one quantized, i.e. the file on disk).

The stand-in models a quantizer, not the guard: every layer left quantized adds its planted
harm to the size of an error orthogonal to the fp32 embedding, so a held-out row's cosine is
1 / sqrt(1 + (row scale * total harm)^2). Leaving more layers in float never hurts here.
The real quantizers (onnxruntime, OpenVINO/NNCF) are exercised in test_guard.py and test_int8.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from edgeclip.errors import ExportError
from edgeclip.export.int8.guard import Budget, GuardResult, HeldOut, guarded_quantize, measure

README_MIN_COSINE = 0.995  # README, INT8: "if the cosine falls below --min-cosine (0.995)"
BUDGET = Budget(min_cosine=README_MIN_COSINE)
N = 100
MILD = 0.0004  # each harmless layer: all 100 together leave the cosine near 0.9995, well inside
HARMFUL = 0.3  # one such layer quantized puts the cosine near 0.95, far outside
DIM, ROWS = 16, 200


class StandIn:
    """quantize(excluded) -> run, recording every call."""

    def __init__(self, harms: dict[str, float], seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.harms = harms
        self.calls: list[list[str]] = []
        ref = rng.standard_normal((ROWS, DIM))
        self.reference = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        noise = rng.standard_normal((ROWS, DIM))
        noise -= (noise * self.reference).sum(1, keepdims=True) * self.reference  # orthogonal to fp32
        self.noise = noise / np.linalg.norm(noise, axis=1, keepdims=True) * rng.uniform(0.5, 1.0, (ROWS, 1))
        self.held = HeldOut(np.arange(ROWS)[:, None], self.reference.astype(np.float32))

    def run_for(self, excluded: list[str]) -> Callable[[np.ndarray], np.ndarray]:
        total = sum(h for name, h in self.harms.items() if name not in excluded)

        def run(x: np.ndarray) -> np.ndarray:
            rows = x[:, 0]
            return (self.reference[rows] + total * self.noise[rows]).astype(np.float32)

        return run

    def __call__(self, excluded: list[str]) -> Callable[[np.ndarray], np.ndarray]:
        self.calls.append(list(excluded))
        return self.run_for(excluded)

    def fresh_metrics(self, excluded: list[str]) -> dict[str, Any]:
        """The held-out numbers of `excluded`, evaluated anew in one batch, outside the guard."""
        return measure(self.held, self.run_for(excluded)(self.held.inputs))


def layers(n: int = N) -> list[str]:
    return [f"layer{i:03d}" for i in range(n)]


def planted(harmful: dict[int, float], n: int = N) -> dict[str, float]:
    names = layers(n)
    return {name: harmful.get(i, MILD) for i, name in enumerate(names)}


def check_reported_is_measured(q: StandIn, result: GuardResult) -> None:
    """The reported numbers are those of the reported exclusion set, which was quantized last."""
    assert q.calls[-1] == result.excluded
    assert result.metrics == pytest.approx(q.fresh_metrics(result.excluded), abs=1e-6)


@pytest.mark.parametrize(("n", "where"), [(N, 0), (N, 37), (N, N - 1), (97, 96)])
def test_one_harmful_layer_costs_about_two_sqrt_n_quantizations(n: int, where: int) -> None:
    harmful = f"layer{where:03d}"
    q = StandIn(planted({where: HARMFUL}, n))
    result = guarded_quantize(q, layers(n), [], q.held, BUDGET, "stand-in")
    # 1 naive + ceil(sqrt(n)) groups + one group's members + 1 with the layer in float
    assert len(q.calls) <= 2 * math.ceil(math.sqrt(n)) + 3, len(q.calls)
    assert result.attempts == len(q.calls)
    assert result.excluded_by_guard == [harmful] == result.excluded
    assert result.metrics["cosine_min"] >= README_MIN_COSINE
    check_reported_is_measured(q, result)
    # the record: every candidate in exactly one group score, in graph order; members ranked alone
    # only in the best group, which holds the harmful layer, ranked first of all
    assert [name for g in result.groups for name in g["layers"]] == layers(n)
    best_group = max(result.groups, key=lambda g: g["cosine_mean"])
    assert harmful in best_group["layers"] and set(result.sensitivity) == set(best_group["layers"])
    assert len(best_group["layers"]) <= math.ceil(n / math.ceil(math.sqrt(n)))
    assert max(result.sensitivity, key=result.sensitivity.__getitem__) == harmful


def test_two_harmful_layers_in_different_groups_both_needed() -> None:
    harms = planted({12: HARMFUL, 81: 0.8 * HARMFUL})
    q = StandIn(harms)
    # neither alone is enough
    assert q.fresh_metrics(["layer012"])["cosine_min"] < README_MIN_COSINE
    assert q.fresh_metrics(["layer081"])["cosine_min"] < README_MIN_COSINE
    result = guarded_quantize(q, layers(), [], q.held, BUDGET, "stand-in")
    assert result.excluded_by_guard == ["layer012", "layer081"]  # the worse first, and nothing else
    assert result.metrics["cosine_min"] >= README_MIN_COSINE
    check_reported_is_measured(q, result)
    assert result.attempts == len(q.calls) <= 3 * math.ceil(math.sqrt(N)) + 4


def test_leaves_in_float_what_one_quantization_per_layer_would() -> None:
    """Many harmful layers of random sizes, some sharing a group, and float-by-default layers that
    do not suffice: the layers left in float are the per-layer ranking's shortest prefix that meets
    the budget (here the ranking is by planted harm, since leaving more in float never hurts)."""
    rng = np.random.default_rng(7)
    where, size = rng.choice(N, 9, replace=False), rng.uniform(0.02, 0.1, 9)
    harmful = {int(i): float(h) for i, h in zip(where, size, strict=True)}
    defaults = ["stem", "proj"]
    harms = {**planted(harmful), "stem": 0.05, "proj": 0.01}
    q = StandIn(harms, seed=3)
    result = guarded_quantize(q, [*layers(), *defaults], defaults, q.held, BUDGET, "stand-in")
    ranking = sorted(layers(), key=lambda n: -harms[n])
    shortest = next(k for k in range(N + 1)
                    if q.fresh_metrics([*defaults, *ranking[:k]])["cosine_min"] >= README_MIN_COSINE)
    assert 1 < shortest < len(harmful)  # the case needs several, not all, harmful layers in float
    assert result.excluded_by_guard == ranking[:shortest]
    assert result.excluded == [*defaults, *ranking[:shortest]]
    check_reported_is_measured(q, result)
    assert result.attempts == len(q.calls) < N


def test_few_candidates_are_ranked_one_by_one() -> None:
    q = StandIn(planted({4: HARMFUL}, n=6))
    result = guarded_quantize(q, layers(6), [], q.held, BUDGET, "stand-in")
    assert result.groups == [] and set(result.sensitivity) == set(layers(6))
    # the miss, every candidate in float, 6 ranked alone, the one left in float
    assert result.excluded_by_guard == ["layer004"] and result.attempts == len(q.calls) == 1 + 1 + 6 + 1


def test_budget_out_of_reach_even_with_every_layer_in_float() -> None:
    """Harm outside the candidates (a layer the guard may not keep in float): a typed error with the
    best numbers reached, after trying every candidate in float."""
    q = StandIn({**planted({50: HARMFUL}), "not-a-candidate": HARMFUL})
    with pytest.raises(ExportError, match=r"with every quantizable layer in float; best reached: cosine min") as err:
        guarded_quantize(q, layers(), [], q.held, BUDGET, "stand-in")
    assert err.value.fix
    assert sorted(q.calls[-1]) == layers()
    # found out from one quantization with every candidate in float, not by searching all of them
    assert len(q.calls) == 2
