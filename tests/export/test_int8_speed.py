"""The speed pass after the INT8 guard (edgeclip/export/int8/speed.py), on a stand-in quantizer
whose runs take as long as their layers say: a kind that is slower in int8 is left in float, a
kind that is faster is not, a kind holding most layers is never tried, a faster kind that breaks
the budget is not kept, and the artifact on disk (the last quantization) is the one reported.

Latencies are busy-waits of several milliseconds; the two sides of every comparison differ by 1.6x
and 2 ms or more, far beyond the pass's 5 % margin, this host's drift and a preempted run or two
(each side is a median of medians). The real quantizers run the pass at the end of this file.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgeclip.bundle import Artifact, Bundle
from edgeclip.cli.export import _calibration_line
from edgeclip.errors import ExportError
from edgeclip.export.driver import export_bundle
from edgeclip.export.int8 import speed as speed_pass
from edgeclip.export.int8.common import EncoderData, calibration_record
from edgeclip.export.int8.guard import Budget, HeldOut, measure
from edgeclip.export.int8.speed import guarded_fast_quantize
from edgeclip.train.config import TrainConfig
from edgeclip.train.loop import train
from tests.conftest import run_cli
from tests.export.test_guard import CALIB, LABELS, _saved_layers

BUDGET = Budget(min_cosine=0.995)  # README, INT8: --min-cosine 0.995
GROUPED = [f"dw{i}" for i in range(4)]  # int8 slower: 2.0 ms each quantized, 0.6 ms in float
CONV = [f"conv{i}" for i in range(5)]  # int8 faster: 0.1 ms each quantized, 1.2 ms in float
MATMUL = [f"mm{i}" for i in range(12)]  # most of the layers
KINDS = {"GroupConvolution": GROUPED, "Convolution": CONV, "MatMul": MATMUL}
INT8_MS = {**dict.fromkeys(GROUPED, 2.0), **dict.fromkeys(CONV, 0.1), **dict.fromkeys(MATMUL, 0.05)}
FLOAT_MS = {**dict.fromkeys(GROUPED, 0.6), **dict.fromkeys(CONV, 1.2), **dict.fromkeys(MATMUL, 0.2)}
ROWS, DIM = 64, 8


def busy(ms: float) -> None:
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        pass


class TimedStandIn:
    """quantize(excluded) -> run: the run busy-waits for its layers' int8 or float time and returns
    the reference embeddings plus `harm(excluded)` of an orthogonal error. Records every call."""

    def __init__(self, harm: Callable[[list[str]], float] = lambda excluded: 0.0,
                 int8_ms: dict[str, float] = INT8_MS) -> None:
        rng = np.random.default_rng(0)
        ref = rng.standard_normal((ROWS, DIM))
        self.reference = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        noise = rng.standard_normal((ROWS, DIM))
        self.noise = noise - (noise * self.reference).sum(1, keepdims=True) * self.reference
        self.noise /= np.linalg.norm(self.noise, axis=1, keepdims=True)
        self.held = HeldOut(np.arange(ROWS)[:, None], self.reference.astype(np.float32))
        self.harm, self.int8_ms = harm, int8_ms
        self.calls: list[list[str]] = []

    def __call__(self, excluded: list[str]) -> Callable[[np.ndarray], np.ndarray]:
        self.calls.append(list(excluded))
        return self.run_for(excluded)

    def run_for(self, excluded: list[str]) -> Callable[[np.ndarray], np.ndarray]:
        ms = sum(FLOAT_MS[n] if n in excluded else self.int8_ms[n] for n in INT8_MS)
        error = self.harm(excluded)

        def run(x: np.ndarray) -> np.ndarray:
            busy(ms)
            rows = x[:, 0]
            return (self.reference[rows] + error * self.noise[rows]).astype(np.float32)

        return run

    def metrics(self, excluded: list[str]) -> dict[str, object]:
        return measure(self.held, self.run_for(excluded)(self.held.inputs))


def quantize(q: TimedStandIn, kinds: dict[str, list[str]] = KINDS):  # type: ignore[no-untyped-def]
    return guarded_fast_quantize(q, list(INT8_MS), [], q.held, BUDGET, what="stand-in", kinds=kinds)


def test_the_kind_slower_in_int8_is_left_in_float_and_the_faster_kinds_are_not() -> None:
    q = TimedStandIn()
    result = quantize(q)
    assert result.excluded_for_speed == GROUPED
    assert result.excluded == GROUPED
    trials = {t["kind"]: t for t in result.speed}
    assert trials["GroupConvolution"]["kept"] and trials["GroupConvolution"]["ms_in_float"] < \
        0.5 * trials["GroupConvolution"]["ms_before"]
    assert not trials["Convolution"]["kept"] and trials["Convolution"]["ms_in_float"] > \
        trials["Convolution"]["ms_before"]
    # the MatMuls are most of the layers still quantized: never quantized with them in float
    assert trials["MatMul"]["skipped"] == "most of the quantized layers"
    assert not any(set(MATMUL) & set(call) for call in q.calls)
    # the artifact on disk is the last quantization, and it is the one reported (the Conv trial
    # came after the kept one, so the kept one was written again)
    assert q.calls[-1] == result.excluded
    assert result.metrics == pytest.approx(q.metrics(result.excluded), abs=1e-6)
    # guard (one quantization, within budget) + two trials + writing the kept one again
    assert len(q.calls) == 4 and result.attempts == 4


def test_a_faster_kind_that_breaks_the_budget_stays_quantized() -> None:
    q = TimedStandIn(harm=lambda excluded: 0.5 if set(GROUPED) <= set(excluded) else 0.0)
    result = quantize(q)
    assert result.excluded_for_speed == [] and result.excluded == []
    trial = next(t for t in result.speed if t["kind"] == "GroupConvolution")
    assert trial["within_budget"] is False and not trial["kept"]
    assert q.calls[-1] == [] and result.metrics["cosine_min"] == pytest.approx(1.0)


def test_no_kinds_is_the_guard_alone() -> None:
    q = TimedStandIn()
    result = quantize(q, kinds={})
    assert q.calls == [[]] and result.speed == [] and result.excluded == []


def test_speed_is_timed_as_the_runtime_runs_the_artifact_when_that_differs() -> None:
    # accuracy runs (OpenVINO's f32 hint) find the grouped convs slow in int8; the runtime's own
    # loading of the same file (its default hint) finds them fast: the runtime's timing decides
    q = TimedStandIn()
    runtime = TimedStandIn(int8_ms={**INT8_MS, **dict.fromkeys(GROUPED, 0.05)})
    result = guarded_fast_quantize(q, list(INT8_MS), [], q.held, BUDGET, what="stand-in", kinds=KINDS,
                                   timing=lambda: runtime.run_for(q.calls[-1]))
    assert result.excluded_for_speed == [] and result.excluded == [] and q.calls[-1] == []
    assert not next(t for t in result.speed if t["kind"] == "GroupConvolution")["kept"]


def test_layers_the_guard_left_in_float_do_not_count_as_the_kind() -> None:
    # the guard keeps dw0 in float for accuracy; the kind then adds only the other three
    q = TimedStandIn(harm=lambda excluded: 0.0 if "dw0" in excluded else 0.5)
    result = guarded_fast_quantize(q, list(INT8_MS), ["dw0"], q.held, BUDGET, what="stand-in", kinds=KINDS)
    assert result.excluded[:1] == ["dw0"] and result.excluded_for_speed == GROUPED[1:]
    assert next(t for t in result.speed if t["kind"] == "GroupConvolution")["layers"] == 3
    assert q.calls[-1] == result.excluded


def test_a_kind_kept_last_reports_the_held_out_numbers_of_the_artifact_kept() -> None:
    # the grouped convs in float cost a little accuracy (within budget) and are the last kind tried:
    # nothing is written again, so the kept trial's own numbers are the artifact's
    q = TimedStandIn(harm=lambda excluded: 0.05 if set(GROUPED) <= set(excluded) else 0.0)
    result = quantize(q, kinds={"GroupConvolution": GROUPED, "MatMul": MATMUL})
    assert result.excluded_for_speed == GROUPED and q.calls == [[], GROUPED] and result.attempts == 2
    assert result.metrics == pytest.approx(q.metrics(GROUPED), abs=1e-6)
    assert result.metrics["cosine_min"] < 0.999  # not the guard's all-int8 numbers (cosine 1)


def test_a_kind_already_all_in_float_costs_no_quantization() -> None:
    # the grouped convs are float defaults the budget needs: the guard keeps them, the pass skips the kind
    q = TimedStandIn(harm=lambda excluded: 0.0 if set(GROUPED) <= set(excluded) else 0.5)
    result = guarded_fast_quantize(q, list(INT8_MS), GROUPED, q.held, BUDGET, what="stand-in",
                                   kinds={"GroupConvolution": GROUPED, "MatMul": MATMUL})
    assert result.speed[0] == {"kind": "GroupConvolution", "layers": 0, "skipped": "none quantized"}
    assert q.calls == [[], GROUPED] and result.excluded == GROUPED and result.excluded_for_speed == []

def test_a_default_measured_safe_then_left_in_float_for_speed_is_recorded_once() -> None:
    # dw0 is a float default (a stem conv) measured safe, so the guard quantized it; its kind is
    # then left in float for speed: it is in float for speed, neither by default nor "measured safe"
    q = TimedStandIn()
    result = guarded_fast_quantize(q, list(INT8_MS), ["dw0", "mm11"], q.held, BUDGET, what="stand-in", kinds=KINDS)
    assert result.defaults_quantized == ["dw0", "mm11"] and result.excluded_for_speed == GROUPED
    source = {"size": 1, "data_sha256": "0" * 64, "source": "stand-in", "inputs": "images", "skipped_images": 0}
    c = calibration_record("minmax", EncoderData([], q.held, source), result, BUDGET, ["dw0", "mm11"])
    assert c.excluded_layers == GROUPED and c.details["excluded_for_speed"] == GROUPED
    assert c.excluded_by_default == [] and c.excluded_by_guard == []
    assert c.float_defaults_measured_safe == ["mm11"]
    # and `edgeclip export` says how many of the layers kept float are there for speed
    assert _calibration_line(c).endswith("4 layer(s) kept float (4 of them for speed)")


def test_a_rewrite_that_misses_the_budget_fails_the_export() -> None:
    # the kept quantization is written again after a later kind was rejected; should the quantizer
    # not repeat itself and the rewrite miss the budget, the export fails instead of shipping it
    def harm(excluded: list[str]) -> float:
        # the kept set (GROUPED) is within budget when first measured, not when written again
        return 0.5 if excluded == GROUPED and q.calls.count(GROUPED) > 1 else 0.0

    q = TimedStandIn(harm=harm)
    with pytest.raises(ExportError, match="written again"):
        quantize(q)


# ---------------------------------------------------------------------------------------------
# The real quantizers: NNCF / OpenVINO and onnxruntime on an MCi tower (grouped + depthwise convs)


@pytest.fixture(scope="module")
def mci_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ckpt = tmp_path_factory.mktemp("mci") / "ckpt"
    train(TrainConfig(model="test-tiny-mci", out=str(ckpt), steps=2, batch_size=8, warmup_steps=1, eval_size=8,
                      tokenizer_samples=100, progress=False))
    return ckpt


def _exports(checkpoint: Path, out: Path, targets: tuple[str, ...] = ("onnx", "openvino"), **options: object) -> Bundle:
    export_bundle(checkpoint, out, targets=list(targets), precision="int8", encoders=["image"],
                  labels=LABELS, options={**CALIB, **options})
    return Bundle.open(out)


def _quantized(bundle: Bundle, a: Artifact) -> set[str]:
    """The layers whose weight the saved graph quantizes."""
    return {name for name, (_, weight) in _saved_layers(a, bundle.artifact_path(a)).items() if weight}


def _named(layers: set[str]) -> set[str]:
    """Less OpenVINO's generated names ("Multiply_5741"), which differ between two conversions."""
    return {n for n in layers if not re.fullmatch(r"[A-Za-z]+_\d+", n)}


def test_a_tower_too_fast_to_time_tries_no_kind() -> None:
    # 100x faster than the other stand-ins: about 0.1 ms a run, under MIN_MS
    q = TimedStandIn(int8_ms={n: ms / 100 for n, ms in INT8_MS.items()})
    result = quantize(q)
    assert q.calls == [[]] and result.excluded == [] and result.attempts == 1
    assert [t["kind"] for t in result.speed] == list(KINDS)
    assert all(t["skipped"].startswith("the tower runs in 0.") for t in result.speed)


def test_real_exports_save_what_they_record(mci_checkpoint: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECLIP_CACHE", str(tmp_path / "cache"))
    # the tiny tower runs well under MIN_MS, where no kind is tried; here every kind is
    monkeypatch.setattr(speed_pass, "MIN_MS", 0.0)
    plain = _exports(mci_checkpoint, tmp_path / "plain.edgeclip", no_speed_pass=True)
    fast = _exports(mci_checkpoint, tmp_path / "fast.edgeclip", targets=("onnx", "openvino", "tensorrt"))
    kinds = {"onnx": "Conv (grouped)", "openvino": "GroupConvolution"}
    for a in fast.manifest.find("image"):
        if a.target == "tensorrt":  # TensorRT builds its own engine elsewhere: onnxruntime's timings say nothing
            assert a.calibration is not None and a.calibration.guard["speed"] == []
            assert a.calibration.details["excluded_for_speed"] == [] and not a.calibration.details["speed_timed_with"]
            continue
        c, before = a.calibration, next(p for p in plain.manifest.find("image") if p.key == a.key)
        assert c is not None and before.calibration is not None
        assert before.calibration.guard["speed"] == [] and before.calibration.details["excluded_for_speed"] == []
        trial = next(t for t in c.guard["speed"] if t["kind"] == kinds[a.target])
        assert trial["layers"] > 0 and "skipped" not in trial and trial["ms_before"] > 0 and trial["ms_in_float"] > 0
        # whichever way this host's timings went, the saved graph quantizes what the export without
        # the pass quantized, less exactly the layers recorded as left in float for speed
        speed = c.details["excluded_for_speed"]
        assert set(speed) <= set(c.excluded_layers) and speed == [n for n in c.excluded_layers if n in speed]
        # each layer in float for one reason: by default, by the guard or for speed
        assert sorted([*c.excluded_by_default, *c.excluded_by_guard, *speed]) == sorted(c.excluded_layers), a.key
        got, want = _quantized(fast, a), _quantized(plain, before) - set(speed)
        assert len(got) == len(want) and _named(got) == _named(want), a.key
        assert bool(speed) == any(t.get("kept") for t in c.guard["speed"])
        assert all(t["ms_in_float"] < 0.95 * t["ms_before"] for t in c.guard["speed"] if t.get("kept"))
        # and never every layer: a kind holding most of those still quantized is not tried
        assert _quantized(fast, a), a.key


def test_cli_refuses_no_speed_pass_for_a_target_the_pass_does_not_time(tmp_path: Path) -> None:
    # refused before the checkpoint is read: a plain error naming the targets it is for, exit 2
    proc = run_cli("export", str(tmp_path / "no-ckpt"), "--target", "tensorrt", "--precision", "int8",
                   "--no-speed-pass", "--out", str(tmp_path / "b.edgeclip"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "Error: option --no-speed-pass does not apply to target(s) tensorrt" in proc.stderr
    assert "onnx, openvino" in proc.stderr and not (tmp_path / "b.edgeclip").exists()
