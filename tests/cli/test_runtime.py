"""`classify` and `embed` options as a user runs them: --exact-preprocess, --batch-size, folders."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclip.data.shapes import ShapesDataset
from edgeclip.runtime import ZeroShotClassifier
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def camera_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import sklearn.datasets

    path = tmp_path_factory.mktemp("cam") / "frame.jpg"
    img = Image.fromarray(sklearn.datasets.load_sample_image("china.jpg")).resize((1280, 720), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    path.write_bytes(buf.getvalue())
    return path


def test_exact_preprocess_flag_is_honoured(tiny_bundle: Path, camera_jpeg: Path, tmp_path: Path) -> None:
    lib = {d: ZeroShotClassifier.load(tiny_bundle, labels=None, exact_preprocess=d == "exact").embed_images(
        [str(camera_jpeg)])[0] for d in ("exact", "fast")}
    assert not np.array_equal(lib["exact"], lib["fast"])  # a 1280x720 JPEG takes the fast path at 32 px
    got = {}
    for name, flag in (("fast", ()), ("exact", ("--exact-preprocess",))):  # the tiny bundle records "fast"
        out = tmp_path / f"{name}.npy"
        proc = run_cli("embed", str(tiny_bundle), "--images", str(camera_jpeg), "--out", str(out), *flag)
        assert proc.returncode == 0, proc.stderr
        got[name] = np.load(out, allow_pickle=False)
        np.testing.assert_allclose(got[name], lib[name], atol=1e-6)
    proc = run_cli("classify", str(tiny_bundle), str(camera_jpeg), "--exact-preprocess")
    assert proc.returncode == 0 and "exact preprocessing" in proc.stderr


def test_classify_a_folder_in_batches_keeps_order_and_json(tiny_bundle: Path, tmp_path: Path) -> None:
    ds = ShapesDataset("heldout", 5, 32)
    for i in range(5):
        ds[i].image.save(tmp_path / f"{i:02d}.png")
    (tmp_path / "03b.jpg").write_bytes(b"not an image")  # sorts between 03 and 04
    proc = run_cli("classify", str(tiny_bundle), str(tmp_path), "--batch-size", "2", "--json", "--top-k", "1")
    assert proc.returncode == 1  # one image failed; the others still answered
    rows = [json.loads(line) for line in proc.stdout.splitlines()]  # stdout holds JSON only (no progress)
    assert [Path(r["image"]).name for r in rows] == ["00.png", "01.png", "02.png", "03.png", "03b.jpg", "04.png"]
    assert ["error" in r for r in rows] == [False] * 4 + [True, False]
    clf = ZeroShotClassifier.load(tiny_bundle)
    want = [r.label for r in clf.classify([str(tmp_path / f"{i:02d}.png") for i in range(5)], top_k=1)]
    assert [r["predictions"][0]["label"] for r in rows if "error" not in r] == want
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("classify", str(tiny_bundle), str(empty))
    assert proc.returncode == 2 and "no image files" in proc.stderr
