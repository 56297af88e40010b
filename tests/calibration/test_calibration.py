"""Calibration sets: sources, runtime preprocessing, counted skips, the content-hashed cache."""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclip.bundle import PreprocessConfig
from edgeclip.calibration.cache import FEW_IMAGES, load_calibration_set
from edgeclip.errors import ConfigError, DataError, UnknownNameError
from edgeclip.runtime.preprocess import preprocess

CFG = PreprocessConfig(image_size=32)
SIZES = [(50, 80), (300, 20), (32, 32), (17, 23), (64, 48), (200, 200)]


def _images(folder: Path, sizes: list[tuple[int, int]] = SIZES, fmt: str = "png") -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(sizes):
        sub = folder / ("a" if i % 2 else "b/deeper")  # searched recursively
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"img{i}.{fmt}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _rows(s: object) -> np.ndarray:
    return np.concatenate([s.images, s.heldout])  # type: ignore[attr-defined]


def test_folder_any_sizes_match_runtime_preprocess(tmp_path: Path) -> None:
    paths = _images(tmp_path / "imgs")
    s = load_calibration_set(str(tmp_path / "imgs"), CFG, size=100, cache=tmp_path / "cache")
    rows = _rows(s)
    assert rows.shape == (len(SIZES), 3, 32, 32) and rows.dtype == np.float32
    assert len(s.heldout) == round(len(SIZES) * 0.2) and s.skipped == 0
    for p in paths:  # every image, whatever its size, exactly as the runtime preprocesses it
        assert any(np.array_equal(preprocess(p, CFG), r) for r in rows), p
    assert any("fewer than" in w for w in s.warnings) and len(s.images) < FEW_IMAGES


def test_corrupt_images_are_skipped_and_counted(tmp_path: Path) -> None:
    _images(tmp_path / "imgs")
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "imgs" / "empty.png").write_bytes(b"")
    s = load_calibration_set(str(tmp_path / "imgs"), CFG, size=100, cache=tmp_path / "cache")
    assert s.skipped == 2 and len(_rows(s)) == len(SIZES)
    assert s.summary()["skipped_images"] == 2 and any("2 unreadable" in w for w in s.warnings)


def test_empty_or_unreadable_sources_are_typed_errors(tmp_path: Path) -> None:
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="holds no images"):
        load_calibration_set(str(tmp_path / "none"), CFG, cache=tmp_path / "cache")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="0 readable image"):
        load_calibration_set(str(tmp_path / "bad"), CFG, cache=tmp_path / "cache")
    with pytest.raises(DataError, match="not found"):
        load_calibration_set(str(tmp_path / "missing"), CFG, cache=tmp_path / "cache")
    with pytest.raises(UnknownNameError, match="did you mean 'builtin:shapes'"):
        load_calibration_set("builtin:shape", CFG, cache=tmp_path / "cache")
    with pytest.raises(ConfigError, match="at least 2"):
        load_calibration_set("builtin:shapes", CFG, size=1, cache=tmp_path / "cache")


def test_csv_paths_are_relative_to_the_file_and_captions_kept(tmp_path: Path) -> None:
    paths = _images(tmp_path / "data" / "imgs")
    table = tmp_path / "data" / "list.tsv"
    with table.open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["filepath", "caption"])
        w.writerows([[p.relative_to(table.parent).as_posix(), f"caption {i}"] for i, p in enumerate(paths)])
        w.writerow(["imgs/missing.png", "gone"])  # a missing file is skipped like a corrupt one
    s = load_calibration_set(str(table), CFG, size=100, cache=tmp_path / "cache")
    assert len(_rows(s)) == len(paths) and s.skipped == 1
    assert sorted(s.captions) == sorted(f"caption {i}" for i in range(len(paths)))
    no_col = tmp_path / "data" / "bad.csv"
    no_col.write_text("path,caption\nx.png,a\n")
    with pytest.raises(DataError, match=r"missing column\(s\) filepath"):
        load_calibration_set(str(no_col), CFG, cache=tmp_path / "cache")


def test_webdataset_tar(tmp_path: Path) -> None:
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for i, (w, h) in enumerate(SIZES):
            buf = io.BytesIO()
            Image.new("RGB", (w, h), (i * 40, 20, 200)).save(buf, format="WEBP" if i % 2 else "JPEG")
            for name, data in ((f"{i:04d}.{'webp' if i % 2 else 'jpg'}", buf.getvalue()), (f"{i:04d}.txt", b"a blue")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    s = load_calibration_set(str(shard), CFG, size=100, cache=tmp_path / "cache")
    assert len(_rows(s)) == len(SIZES) and s.captions == ["a blue"] * len(SIZES)


def test_cache_is_keyed_by_content_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECLIP_CACHE", str(tmp_path / "env-cache"))
    paths = _images(tmp_path / "imgs")
    first = load_calibration_set(str(tmp_path / "imgs"), CFG, size=100)
    assert not first.from_cache and first.cache_file.parent == tmp_path / "env-cache"
    with np.load(first.cache_file, allow_pickle=False) as z:
        assert set(z.files) >= {"images", "heldout", "captions", "skipped"}
    again = load_calibration_set(str(tmp_path / "imgs"), CFG, size=100)
    assert again.from_cache and again.data_hash == first.data_hash
    np.testing.assert_array_equal(_rows(again), _rows(first))
    other_size = load_calibration_set(str(tmp_path / "imgs"), PreprocessConfig(image_size=40), size=100)
    assert other_size.data_hash != first.data_hash
    Image.new("RGB", (40, 40), (1, 2, 3)).save(paths[0])  # same name, new bytes: a new key
    changed = load_calibration_set(str(tmp_path / "imgs"), CFG, size=100)
    assert not changed.from_cache and changed.data_hash != first.data_hash
    changed.cache_file.write_bytes(b"truncated")  # a broken cache file is rebuilt, not trusted
    assert not load_calibration_set(str(tmp_path / "imgs"), CFG, size=100).from_cache


def test_builtin_shapes_has_a_separate_labelled_heldout_split(tmp_path: Path) -> None:
    s = load_calibration_set("builtin:shapes", CFG, size=40, cache=tmp_path / "cache")
    assert s.images.shape == (40, 3, 32, 32) and len(s.heldout) == len(s.heldout_labels or []) > 100
    assert len(s.captions) == 40 + len(s.heldout)
    assert set(s.heldout_labels or []) <= {"circle", "square", "triangle", "star", "cross", "heart"}
    assert load_calibration_set("builtin:shapes", CFG, size=40, cache=tmp_path / "cache").from_cache
