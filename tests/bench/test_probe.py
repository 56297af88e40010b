"""Peak RSS is measured in a fresh process per row (issue 18 item 7): one row's allocations, or the
bench process's own, never show in another row's figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeclip.bench.probe import encoder_request, measure
from edgeclip.bundle import Bundle
from edgeclip.runtime.backends.base import BackendOptions

BALLAST_MB = 600


def test_peak_rss_is_the_probes_own_not_the_parents(tiny_bundle: Path) -> None:
    bundle = Bundle.open(tiny_bundle)
    request = encoder_request("encoder", bundle, "image/onnx-fp32", "onnxruntime", BackendOptions(threads=1))
    ballast = np.ones(BALLAST_MB * 1_000_000 // 8)  # touched pages: this process's RSS grows by 600 MB
    try:
        answer = measure(request)
    finally:
        del ballast
    assert "error" not in answer, answer
    # a tiny model in onnxruntime needs tens of MB beyond the interpreter, far below the ballast
    assert answer["rss_before_load_mb"] < answer["peak_rss_mb"] < BALLAST_MB / 2


def test_labels_probe_reports_prompts_per_second_and_peak(tiny_bundle: Path) -> None:
    request = encoder_request("labels", Bundle.open(tiny_bundle), "text/onnx-fp32", "onnxruntime",
                              BackendOptions(threads=1), classes=50, templates=7)
    answer = measure(request)
    assert answer["prompts"] == 350 and answer["classes"] == 50 and answer["templates"] == 7
    assert answer["prompts_per_s"] > 0 and answer["seconds"] > 0 and answer["peak_rss_mb"] > 0


def test_a_failed_probe_is_an_error_entry_not_a_crash(tiny_bundle: Path) -> None:
    request = encoder_request("encoder", Bundle.open(tiny_bundle), "image/no-such", "onnxruntime", BackendOptions())
    assert "has no artifact image/no-such" in measure(request)["error"]
