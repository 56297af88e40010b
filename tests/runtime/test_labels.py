"""Label sets at scale (issue 18 item 4): batched prompt encoding with bounded memory, progress, and a
Ctrl-C that leaves the bundle as it was. Real text tower: the tiny bundle's ONNX graph in onnxruntime."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from edgeclip.bundle import Bundle
from edgeclip.runtime import ZeroShotClassifier
from edgeclip.runtime.labels import label_embeddings
from tests.conftest import REPO, run_cli

TEMPLATES = ["a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a drawing of a {}.",
             "a close-up of a {}.", "a {} in the wild.", "a blurry photo of a {}."]  # 7, as the issue asks


def generated_classes(n: int) -> list[str]:
    return [f"object kind {i}" for i in range(n)]


@pytest.fixture(scope="module")
def clf(tiny_bundle: Path) -> ZeroShotClassifier:
    return ZeroShotClassifier.load(tiny_bundle, labels=None, threads=1)


def test_batched_embeddings_equal_encoding_every_prompt_at_once(clf: ZeroShotClassifier) -> None:
    classes, templates = generated_classes(23), TEMPLATES[:3]
    # batches of 16 straddle class boundaries (3 prompts per class), so per-class sums must add up
    got = label_embeddings(classes, templates, clf.embed_texts, batch_size=16)
    every = clf.embed_texts([t.format(c) for c in classes for t in templates]).reshape(23, 3, -1)
    every = every / np.linalg.norm(every, axis=-1, keepdims=True)
    want = every.mean(axis=1)
    want /= np.linalg.norm(want, axis=-1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got.shape == (23, clf.bundle.manifest.embed_dim) and got.dtype == np.float32


def test_memory_stays_bounded_by_one_batch_for_1000_classes_x_7_templates(clf: ZeroShotClassifier) -> None:
    classes, batch = generated_classes(1000), 256
    seen: list[int] = []

    def encode(texts: list[str]) -> np.ndarray:
        seen.append(len(texts))
        return clf.embed_texts(texts)

    context = clf.bundle.manifest.tokenizer.context_length
    dim = clf.bundle.manifest.embed_dim
    n = len(classes) * len(TEMPLATES)
    # what holding every prompt at once costs at the least: its token ids and its embeddings
    all_at_once = n * (context * 8 + dim * 4)
    tracemalloc.start()
    try:
        label_embeddings(classes, TEMPLATES, encode, batch_size=batch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert max(seen) == batch and sum(seen) == n and len(seen) == -(-n // batch)
    # the [C, D] result, its running sums and one batch's prompts, ids and embeddings
    bound = 2 * len(classes) * dim * 4 + 4 * batch * (context * 8 + dim * 4 + 200)
    assert bound < all_at_once / 2  # the bound tells the two apart at this size
    assert peak < bound, f"peak {peak / 1e6:.2f} MB traced, bound {bound / 1e6:.2f} MB"


def test_set_labels_reports_progress_to_the_end(clf: ZeroShotClassifier) -> None:
    calls: list[tuple[int, int]] = []
    clf.set_labels(generated_classes(300), TEMPLATES, name="many", progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (2100, 2100) and len(calls) == -(-2100 // 256)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert clf.classes == generated_classes(300) and clf.label_embeddings.shape[0] == 300


def test_cli_labels_shows_progress_on_stderr(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b.edgeclip"
    shutil.copytree(tiny_bundle, bundle)
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(generated_classes(400)) + "\n")
    proc = run_cli("labels", str(bundle), "--classes", str(classes), "--name", "big")
    assert proc.returncode == 0, proc.stderr
    assert "400 classes x 3 templates = 1200 prompts" in proc.stderr
    assert "encoding prompts: 1200/1200 (100 %)" in proc.stderr
    assert "encoding prompts: " in proc.stderr.splitlines()[1]  # progress while it runs, not only at the end
    assert Bundle.open(bundle).label_set("big")[0].shape[0] == 400


def test_ctrl_c_leaves_the_bundle_unchanged(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b.edgeclip"
    shutil.copytree(tiny_bundle, bundle)
    before = {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(generated_classes(40000)) + "\n")  # 120k prompts: long enough to interrupt
    cmd = [sys.executable, "-m", "edgeclip", "labels", str(bundle), "--classes", str(classes), "--name", "big"]
    with subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True, env=dict(os.environ)) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:  # interrupt once encoding has started
            if line.startswith("encoding prompts:"):
                break
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 130, rest
    assert "is unchanged" in rest and "Traceback" not in rest
    after = {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    assert after == before
    Bundle.open(bundle).verify()
