"""INT8 only where it is faster: after the guard, each kind of layer whose int8 kernels make the
encoder slower on this machine is left in float, judged by the whole encoder's measured latency.

Some int8 kernels are slower than the float ones they replace. On this project's AVX-512 host,
OpenVINO runs MobileCLIP2-S0's strided grouped convolutions int8 through a generic GEMM kernel
(`jit_gemm_I8`: 3 layers, 4.35 ms of an 11.20 ms image tower; benchmarks/results/
ov_layer_profile.json), and with onnxruntime's QDQ grouped and depthwise convolutions the tower ran
slower in int8 than in fp32 (benchmarks/results/int8_speed_pass.json). A layer's own kernel time
misses the reorders and (de)quantizations around it, so what is timed is the encoder: one
quantization per kind with that kind in float, timed at batch 1 in interleaved rounds against the
best so far, kept only when more than MARGIN faster and still within the accuracy budget.

A kind that holds most of the quantized layers (a ViT's MatMuls) is not tried: leaving it in float
is the float artifact in all but name, which the runtime's precision choice already weighs.
Timings are of the export host, so a bundle records them; `--no-speed-pass` turns the pass off
(reproducible across hosts).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from edgeclip.errors import ExportError
from edgeclip.export.int8.guard import Budget, GuardResult, HeldOut, Quantize, Run, evaluate, guarded_quantize, within
from edgeclip.runtime.timings import MARGIN, interleaved_ms

log = logging.getLogger(__name__)

# below this batch-1 latency a tower's time is mostly call overhead and 5 % is within its noise
# (test-sized towers run in 0.1-0.6 ms here; real ones in several ms): no kind is tried
MIN_MS = 1.0
ROUNDS = 5  # interleaved rounds of timings.interleaved_ms (each: warm-up, then the median of 5 runs)


def leave_slow_kinds_in_float(
    quantize: Quantize, guarded: Run, result: GuardResult, kinds: Mapping[str, Sequence[str]],
    held: HeldOut, budget: Budget, what: str, timing: Callable[[], Run] | None = None,
) -> GuardResult:
    """Try each kind of layer (`kinds`: name -> layer names) in float on top of the guard's result;
    keep those measured more than MARGIN faster and within `budget`. `guarded` runs the artifact the
    guard left on disk; on return the artifact on disk is again the one `result` describes.
    `timing` loads the artifact now on disk as the runtime will run it, when that differs from how
    the guard measures accuracy (OpenVINO: at its default precision hint rather than f32)."""
    x = held.inputs[:1]

    def timed(run: Run) -> Run:  # the artifact just written, as the runtime runs it
        return timing() if timing is not None else run

    best, best_run, last = list(result.excluded), timed(guarded), list(result.excluded)
    (baseline,) = interleaved_ms([(best_run, x)], ROUNDS)
    every = [n for layers in kinds.values() for n in layers]
    for kind, layers in kinds.items():
        adding = [n for n in layers if n not in best]
        trial: dict[str, Any] = {"kind": kind, "layers": len(adding)}
        result.speed.append(trial)
        if baseline < MIN_MS:
            trial["skipped"] = f"the tower runs in {baseline:.2f} ms, under {MIN_MS} ms: too fast to time 5 % apart"
            continue
        if not adding or 2 * len(adding) > len([n for n in every if n not in best]):
            trial["skipped"] = "none quantized" if not adding else "most of the quantized layers"
            continue
        run = quantize(last := [*best, *adding])
        result.attempts += 1
        trial_run = timed(run)
        trial["ms_before"], trial["ms_in_float"] = before, after = interleaved_ms(
            [(best_run, x), (trial_run, x)], ROUNDS)
        trial["kept"] = False
        if after < (1 - MARGIN) * before:
            metrics = evaluate(run, held)
            trial["within_budget"] = within(metrics, budget)
            if trial["within_budget"]:
                trial["kept"] = True
                best, best_run, result.metrics = last, trial_run, metrics
                result.excluded_for_speed += adding
                log.warning("%s: %d %s layer(s) left in float: %.2f -> %.2f ms", what, len(adding), kind,
                            before, after)
    if last != best:  # the artifact on disk is the last one tried: write the kept one again
        result.metrics = evaluate(quantize(best), held)
        result.attempts += 1
        if not within(result.metrics, budget):  # only if the quantizer does not repeat itself
            raise ExportError(f"{what}: the INT8 quantization kept by the speed pass missed the accuracy budget "
                              "when written again", fix="export again with --no-speed-pass")
    result.excluded = best
    return result


def guarded_fast_quantize(
    quantize: Quantize, candidates: Sequence[str], keep_float: Sequence[str], held: HeldOut, budget: Budget,
    what: str, kinds: Mapping[str, Sequence[str]], timing: Callable[[], Run] | None = None,
) -> GuardResult:
    """`guarded_quantize`, then `leave_slow_kinds_in_float` over `kinds` (empty: the guard alone)."""
    last: list[Run] = []

    def tracked(excluded: list[str]) -> Run:
        last[:] = [quantize(excluded)]
        return last[0]

    result = guarded_quantize(tracked, candidates, keep_float, held, budget, what)
    if not kinds:
        return result
    return leave_slow_kinds_in_float(quantize, last[0], result, kinds, held, budget, what, timing)
