"""The data layer's readers: built-ins, caption files, class folders and WebDataset shards."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclip.data.digits import (
    _CAPTIONS,
    _LOOKS,
    DIGIT_NAMES,
    ZERO_SHOT_CLASSES,
    ZERO_SHOT_TEMPLATES,
    DigitsDataset,
    digits_split,
)
from edgeclip.data.folders import FOLDER_CAPTIONS
from edgeclip.data.shards import WebDatasetSource, is_webdataset
from edgeclip.data.spec import heldout_items, open_map_source, zero_shot_eval_spec
from edgeclip.errors import ConfigError, DataError, ImageError, UnknownNameError
from edgeclip.runtime.preprocess import load_image
from tests.conftest import write_tar


def _png(colour: tuple[int, int, int] = (200, 30, 30), size: int = 12, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format=fmt)
    return buf.getvalue()


def _write_images(root: Path, names: list[str]) -> None:
    for k, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png((k * 40 % 256, 80, 120), fmt="JPEG" if name.endswith(".jpg") else "PNG"))


# --- builtin:digits -------------------------------------------------------------------------


def test_digits_are_deterministic_sized_and_fast_enough() -> None:
    a = open_map_source("builtin:digits", image_size=64, seed=1)
    b = open_map_source("builtin:digits", image_size=64, seed=1)
    for i in (0, 5, 1437, 1438, len(a) - 1):
        (ia, ca), (ib, cb) = a[i], b[i]
        assert isinstance(ia, Image.Image) and ia.size == (64, 64) and ia.mode == "RGB" and ca == cb
        assert isinstance(ib, Image.Image) and np.array_equal(np.asarray(ia), np.asarray(ib))
    # the same digit under another index is another rendering
    assert isinstance(a, DigitsDataset) and a.source_index(0) == a.source_index(1438)
    assert not np.array_equal(np.asarray(a[0][0]), np.asarray(a[1438][0]))
    assert a[-1][1] == a[len(a) - 1][1]
    with pytest.raises(IndexError):
        a[len(a)]
    # both polarities occur: a dark or a light background
    means = [float(np.asarray(a[i][0]).mean()) for i in range(40)]
    assert min(means) < 90 < max(means)


def test_digits_split_is_disjoint_stratified_and_seeded() -> None:
    train = open_map_source("builtin:digits", image_size=32, seed=0)
    held = open_map_source("builtin:digits", image_size=32, seed=0, split="heldout")
    assert isinstance(train, DigitsDataset) and isinstance(held, DigitsDataset)
    train_ids = {train.source_index(i) for i in range(len(train))}
    held_ids = {held.source_index(i) for i in range(len(held))}
    assert not train_ids & held_ids and len(train_ids | held_ids) == 1797
    assert 0.19 < len(held_ids) / 1797 < 0.21
    per_class = Counter(held.label(i) for i in range(len(held)))
    assert set(per_class) == set(range(10)) and min(per_class.values()) >= 35 and max(per_class.values()) <= 37
    assert not np.array_equal(digits_split(0)[1], digits_split(1)[1])


def test_digits_captions_are_varied_and_differ_from_zero_shot_prompts() -> None:
    d = open_map_source("builtin:digits", image_size=16, seed=0)
    captions = {d[i][1] for i in range(600)}
    assert len(captions) > 100
    assert any("7" in c for c in captions) and any("seven" in c for c in captions)
    every_caption = {
        t.format(n=n, w=DIGIT_NAMES[n], look=look) for t in _CAPTIONS for n in range(10)
        for looks in _LOOKS.values() for look in looks
    }
    assert captions <= every_caption
    spec = zero_shot_eval_spec("builtin:digits")
    assert spec == (ZERO_SHOT_CLASSES, ZERO_SHOT_TEMPLATES) and len(spec[0]) == 10
    prompts = {t.format(c) for t in spec[1] for c in spec[0] + DIGIT_NAMES}
    assert not every_caption & prompts


def test_digits_heldout_items_match_the_heldout_split() -> None:
    items = heldout_items("builtin:digits", image_size=32, seed=2)
    held = DigitsDataset("heldout", 32, seed=2)
    assert items is not None and len(items) == len(held)
    assert [t for _, t in items] == [held.label(i) for i in range(len(held))]
    assert np.array_equal(np.asarray(items[3][0]), np.asarray(held[3][0]))


def test_shapes_source_wraps_the_builtin() -> None:
    train = open_map_source("builtin:shapes", image_size=32)
    held = open_map_source("builtin:shapes", image_size=32, split="heldout")
    assert len(train) == 1_000_000 and len(held) == 480
    image, caption = train[123]
    assert isinstance(image, Image.Image) and image.size == (32, 32) and isinstance(caption, str)
    assert zero_shot_eval_spec("builtin:shapes") is None and heldout_items("builtin:shapes", image_size=32) is None


# --- caption files and class folders ----------------------------------------------------------


def test_csv_and_tsv_resolve_paths_relative_to_the_file(tmp_path: Path) -> None:
    _write_images(tmp_path / "img", ["a.png", "b.jpg"])
    csv_text = 'id,filepath,caption\n1,img/a.png,a red square\n2,img/b.jpg,"a blue, dark one"\n'
    (tmp_path / "data.csv").write_text(csv_text)
    (tmp_path / "data.tsv").write_text("caption\tfilepath\nfirst\timg/a.png\n")
    csv_src = open_map_source(str(tmp_path / "data.csv"), image_size=32)
    assert len(csv_src) == 2 and csv_src.name == str(tmp_path / "data.csv")
    assert csv_src[1] == (str(tmp_path / "img" / "b.jpg"), "a blue, dark one")
    assert load_image(csv_src[0][0]).size == (12, 12)
    tsv_src = open_map_source(str(tmp_path / "data.tsv"), image_size=32)
    assert list(tsv_src[0]) == [str(tmp_path / "img" / "a.png"), "first"]


def test_missing_image_files_fail_per_sample_not_at_open(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("filepath,caption\nnope.png,gone\n")
    src = open_map_source(str(tmp_path / "data.csv"), image_size=32)
    with pytest.raises(ImageError, match="not found"):
        load_image(src[0][0])


def test_jsonl_accepts_both_key_spellings(tmp_path: Path) -> None:
    _write_images(tmp_path, ["x.png"])
    rows = [{"image": "x.png", "caption": "one"}, {"filepath": str(tmp_path / "x.png"), "text": "two", "extra": 1}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    src = open_map_source(str(tmp_path / "d.jsonl"), image_size=32)
    assert [src[i] for i in range(len(src))] == [(str(tmp_path / "x.png"), "one"), (str(tmp_path / "x.png"), "two")]
    (tmp_path / "bad.jsonl").write_text('{"image": "x.png", "caption": "ok"}\n{not json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        open_map_source(str(tmp_path / "bad.jsonl"), image_size=32)


def test_class_folders_give_template_captions_and_zero_shot_spec(tmp_path: Path) -> None:
    names = [f"golden_retriever/{k}.png" for k in range(6)] + ["tabby-cat/0.jpg", "tabby-cat/sub/1.png"]
    _write_images(tmp_path, names)
    (tmp_path / "tabby-cat" / "notes.txt").write_text("not an image")
    src = open_map_source(str(tmp_path), image_size=32, seed=3)
    again = open_map_source(str(tmp_path), image_size=32, seed=3)
    assert len(src) == 8
    captions = [src[i][1] for i in range(len(src))]
    assert captions == [again[i][1] for i in range(len(again))]
    assert {c for c in captions[:6]} <= {t.format("golden retriever") for t in FOLDER_CAPTIONS}
    assert len(set(captions)) > 2 and all("tabby cat" in c for c in captions[6:])
    assert zero_shot_eval_spec(str(tmp_path)) == (("golden retriever", "tabby cat"), ("a photo of a {}.",))
    assert heldout_items(str(tmp_path), image_size=32) is None
    with pytest.raises(DataError, match="no held-out split"):
        open_map_source(str(tmp_path), image_size=32, split="heldout")


def test_class_folders_with_train_and_val(tmp_path: Path) -> None:
    _write_images(tmp_path, ["train/ant/0.png", "train/bee/0.png", "train/bee/1.png", "val/bee/0.png", "val/ant/1.png"])
    assert len(open_map_source(str(tmp_path), image_size=32)) == 3
    spec = zero_shot_eval_spec(str(tmp_path))
    assert spec is not None and spec[0] == ("ant", "bee")
    assert heldout_items(str(tmp_path), image_size=32) == [
        (str(tmp_path / "val" / "ant" / "1.png"), 0), (str(tmp_path / "val" / "bee" / "0.png"), 1)
    ]


# --- typed errors ---------------------------------------------------------------------------


def test_errors_are_typed_and_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'builtin:digits'"):
        open_map_source("builtin:digit", image_size=32)
    with pytest.raises(DataError, match="not found") as e:
        open_map_source(str(tmp_path / "none.csv"), image_size=32)
    assert e.value.fix
    (tmp_path / "latin1.csv").write_bytes("filepath,caption\nx.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="cannot read"):
        open_map_source(str(tmp_path / "latin1.csv"), image_size=32)
    (tmp_path / "cols.csv").write_text("path,label\nx.png,a\n")
    with pytest.raises(DataError, match="missing column.*filepath, caption"):
        open_map_source(str(tmp_path / "cols.csv"), image_size=32)
    (tmp_path / "cols.csv").write_text("path,text\nx.png,a\n")  # 'text' is a caption column (CAPTION_KEYS)
    with pytest.raises(DataError, match=r"missing column\(s\) filepath \(found"):
        open_map_source(str(tmp_path / "cols.csv"), image_size=32)
    (tmp_path / "empty.csv").write_text("filepath,caption\n")
    with pytest.raises(DataError, match="is empty"):
        open_map_source(str(tmp_path / "empty.csv"), image_size=32)
    (tmp_path / "folder" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="is empty"):
        open_map_source(str(tmp_path / "folder"), image_size=32)
    (tmp_path / "data.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataError, match="unsupported"):
        open_map_source(str(tmp_path / "data.parquet"), image_size=32)
    with pytest.raises(DataError, match="WebDataset"):
        open_map_source(str(tmp_path / "shards-{0..3}.tar"), image_size=32)
    with pytest.raises(ConfigError):
        open_map_source("builtin:digits", image_size=32, split="val")


# --- WebDataset -----------------------------------------------------------------------------


def _good_shard(path: Path, shard: int, n: int = 2) -> list[str]:
    captions = [f"shard {shard} sample {k}" for k in range(n)]
    pairs = [((f"s{k:03d}.jpg", _png(fmt="JPEG")), (f"s{k:03d}.txt", c.encode())) for k, c in enumerate(captions)]
    write_tar(path, [m for pair in pairs for m in pair])
    return captions


def test_webdataset_yields_good_samples_and_counts_bad_ones(tmp_path: Path) -> None:
    write_tar(tmp_path / "mixed-0.tar", [
        ("a/000.png", _png()), ("a/000.txt", b"a good png"),
        ("a/001.jpg", _png(fmt="JPEG")), ("a/001.json", json.dumps({"text": "json caption"}).encode()),
        ("a/002.jpg", b"\xff\xd8 not really a jpeg"), ("a/002.txt", b"corrupt image"),
        ("a/003.png", _png()),  # no caption at all
        ("a/004.png", _png()), ("a/004.json", b"{broken"),
        ("a/005.txt", b"caption without an image"),
        ("a/006.png", _png()), ("a/006.json", b'{"url": "no caption key"}'),
    ])
    full = io.BytesIO()
    with tarfile.open(fileobj=full, mode="w") as tar:
        for name, data in [("b/000.png", _png()), ("b/000.txt", b"before the cut"), ("b/001.png", _png(size=64))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    cut = full.getvalue()[: 3 * 512 + 512 + 512 + 100]  # ends inside b/001.png's data
    (tmp_path / "mixed-1.tar").write_bytes(cut)

    wds = WebDatasetSource(str(tmp_path / "mixed-{0..1}.tar"), seed=0)
    assert wds.shards == [str(tmp_path / "mixed-0.tar"), str(tmp_path / "mixed-1.tar")]
    got = list(wds.samples(0))
    assert sorted(c for _, c in got) == ["a good png", "before the cut", "json caption"]
    assert all(Image.open(io.BytesIO(b)).size == (12, 12) for b, _ in got)
    assert wds.skipped == Counter(
        {"undecodable_image": 1, "no_caption": 2, "bad_json": 1, "no_image": 1, "truncated": 1}
    )


def test_webdataset_splits_shards_by_rank_then_worker(tmp_path: Path) -> None:
    expected = [c for k in range(8) for c in _good_shard(tmp_path / f"{k:03d}.tar", k)]
    wds = WebDatasetSource(str(tmp_path / "{000..007}.tar"), seed=5)
    assert len(wds.shards) == 8
    for epoch in (0, 1):
        parts = [wds.shards_for(epoch, rank=r, world_size=2, worker=w, num_workers=2) for r in (0, 1) for w in (0, 1)]
        assert sorted(s for p in parts for s in p) == sorted(wds.shards)
        assert all(len(p) == 2 for p in parts)
        seen = [c for r in (0, 1) for w in (0, 1) for _, c in wds.samples(epoch, rank=r, world_size=2, worker=w,
                                                                           num_workers=2)]
        assert sorted(seen) == sorted(expected)
    assert wds.shards_for(0) == WebDatasetSource(str(tmp_path / "{000..007}.tar"), seed=5).shards_for(0)
    assert wds.shards_for(0) != wds.shards_for(1) and sorted(wds.shards_for(0)) == sorted(wds.shards_for(1))
    assert not wds.skipped
    with pytest.raises(ConfigError):
        wds.shards_for(0, rank=2, world_size=2)


def test_webdataset_errors_and_detection(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        WebDatasetSource(str(tmp_path / "missing-{0..2}.tar"))
    assert is_webdataset("shards/{000..099}.tar") and is_webdataset("x.tar") and is_webdataset("x.tar.gz")
    assert not is_webdataset("data.csv") and not is_webdataset("builtin:digits")


def test_importing_sources_pulls_no_torch_sklearn_or_webdataset() -> None:
    code = ("import sys, edgeclip.data.spec, edgeclip.data.tasks, edgeclip.calibration.listing; "
            "print(sorted(m for m in ('torch', 'sklearn', 'webdataset') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
