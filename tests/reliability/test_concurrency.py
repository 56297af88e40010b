"""One ZeroShotClassifier shared by 16 threads gives the sequential results; memory stays flat."""

from __future__ import annotations

import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edgeclip.runtime import ZeroShotClassifier
from edgeclip.runtime.classifier import Classification


def _no_address(msg: str | None) -> str | None:
    return re.sub(r"0x[0-9a-f]+", "0x?", msg) if msg else msg


def _images(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (24 + i, 40, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def test_sixteen_threads_get_the_sequential_results(tiny_bundle: Path, record_property: Any) -> None:
    clf = ZeroShotClassifier.load(tiny_bundle, threads=1)
    images = [*_images(8), b"broken"]
    expected = [clf.classify([img], top_k=3)[0] for img in images]  # one image per call: same batch shape
    jobs = [i % len(images) for i in range(16 * 25)]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda i: clf.classify([images[i]], top_k=3)[0], jobs))
    def same(a: Classification, b: Classification) -> bool:  # PIL's message names the BytesIO's address
        return a.predictions == b.predictions and _no_address(a.error) == _no_address(b.error)

    mismatches = sum(not same(g, expected[i]) for g, i in zip(got, jobs, strict=True))
    record_property("inputs", len(images))  # distinct inputs; every call repeats one of them
    record_property("calls", len(jobs))
    record_property("mismatches", mismatches)
    assert mismatches == 0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_rss_stays_flat_over_ten_thousand_calls(tiny_bundle: Path, record_property: Any) -> None:
    clf = ZeroShotClassifier.load(tiny_bundle, threads=1)
    images = [*_images(4), b"broken"]
    for i in range(500):  # warm-up: allocator pools, onnxruntime arenas
        clf.classify([images[i % len(images)]])
    warm = _rss_bytes()
    for i in range(10_000):
        clf.classify([images[i % len(images)]])
    end = _rss_bytes()
    record_property("inputs", len(images))
    record_property("calls", 10_000)
    record_property("rss_warm_mb", round(warm / 2**20, 1))
    record_property("rss_end_mb", round(end / 2**20, 1))
    record_property("rss_growth_pct", round(100 * (end - warm) / warm, 2))
    assert end <= 1.10 * warm, (warm, end)
