"""One data layer (issue 14, item 3): training, calibration, `bench --eval` and export's probes read
every format with the same rules, and the built-in datasets have one held-out split.

Each test reads the same input through two or more of those users and asserts they agree; before
the data layer they did not (a byte-order mark, a tar key split at another dot, hidden files,
four held-out seeds).
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclip.bundle import Bundle, PreprocessConfig
from edgeclip.calibration.cache import load_calibration_set
from edgeclip.calibration.listing import list_source
from edgeclip.data.builtin import shapes_heldout
from edgeclip.data.images import IMAGE_SUFFIXES
from edgeclip.data.shards import WebDatasetSource, split_key
from edgeclip.data.spec import open_map_source
from edgeclip.data.tasks import retrieval_pairs, zero_shot_tasks
from edgeclip.runtime.preprocess import preprocess
from tests.conftest import write_tar

CFG = PreprocessConfig(image_size=32)


def _image_bytes(k: int, fmt: str = "PNG", size: int = 20) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size + k), (k * 37 % 256, 90, 200 - k)).save(buf, format=fmt)
    return buf.getvalue()


def test_a_csv_with_a_byte_order_mark_reads_the_same_for_training_and_calibration(tmp_path: Path) -> None:
    for k in range(5):
        (tmp_path / f"{k}.png").write_bytes(_image_bytes(k))
    rows = "".join(f"{k}.png,caption {k}\n" for k in range(5))
    (tmp_path / "list.csv").write_bytes("\ufefffilepath,caption\n".encode() + rows.encode())  # Excel's UTF-8 CSV
    train = open_map_source(str(tmp_path / "list.csv"), image_size=32)
    assert [train[k] for k in range(5)] == [(str(tmp_path / f"{k}.png"), f"caption {k}") for k in range(5)]
    calib = load_calibration_set(str(tmp_path / "list.csv"), CFG, size=100, cache=tmp_path / "cache")
    assert len(calib.images) + len(calib.heldout) == 5 and calib.skipped == 0
    assert sorted(calib.captions) == [f"caption {k}" for k in range(5)]


def test_a_tar_sample_with_several_dots_is_one_sample_for_training_and_calibration(tmp_path: Path) -> None:
    """WebDataset's key ends at the first dot: 000001.seg.png is a field of sample 000001 (its
    mask), not a second image; and a corrupt image is skipped and counted by both readers."""
    members: list[tuple[str, bytes]] = []
    for k in range(4):
        image = _image_bytes(k, "JPEG") if k != 2 else b"\xff\xd8 not a jpeg"
        members += [(f"part/{k:06d}.jpg", image), (f"part/{k:06d}.seg.png", _image_bytes(100 + k)),
                    (f"part/{k:06d}.txt", f"photo {k}".encode())]
    write_tar(tmp_path / "shard-000.tar", members)
    spec = str(tmp_path / "shard-000.tar")

    train = WebDatasetSource(spec)
    trained = list(train.samples(0))
    assert [c for _, c in trained] == ["photo 0", "photo 1", "photo 3"]
    assert [b for b, _ in trained] == [members[3 * k][1] for k in (0, 1, 3)]  # the .jpg, never the mask
    assert train.skipped == Counter({"undecodable_image": 1})

    listing = list_source(spec, size=100, image_size=32)
    assert sorted(it.read() for it in listing.items) == sorted(b for b, _ in trained)
    assert sorted(it.caption or "" for it in listing.items) == ["photo 0", "photo 1", "photo 3"]
    assert listing.skipped == 1
    calib = load_calibration_set(spec, CFG, size=100, cache=tmp_path / "cache")
    assert len(calib.images) + len(calib.heldout) == 3 and calib.skipped == 1


def test_tar_keys_split_where_the_webdataset_package_splits_them() -> None:
    base_plus_ext = pytest.importorskip("webdataset.tariterators").base_plus_ext
    names = ["000001.jpg", "dir/000001.seg.png", "a/b.c/000.tar.json", "x.y.z.TXT", "shards/s-01/k.0.jpeg"]
    for name in names:
        key, field = base_plus_ext(name)
        assert split_key(name) == (key, field.lower()), name


def test_image_folders_list_the_same_files_for_training_calibration_and_bench(tmp_path: Path) -> None:
    names = ["cat/1.jpg", "cat/2.TIF", "cat/deep/3.gif", "cat/.hidden.png", "cat/.ipynb_checkpoints/4.png",
             "cat/notes.txt", "dog/5.webp", "dog/6.bmp", "dog/7.tiff"]
    for k, name in enumerate(names):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = {".jpg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".gif": "GIF"}.get(path.suffix.lower(), "TIFF")
        path.write_bytes(_image_bytes(k, fmt) if path.suffix != ".txt" else b"not an image")
    visible = sorted(n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES and "/." not in n)
    train = open_map_source(str(tmp_path), image_size=32)
    assert sorted(Path(train[i][0]).relative_to(tmp_path).as_posix() for i in range(len(train))) == visible
    listing = list_source(str(tmp_path), size=100, image_size=32)
    assert sorted(it.name for it in listing.items) == visible


def test_shapes_has_one_heldout_split_for_every_user(tiny_bundle: Path, tmp_path: Path) -> None:
    """The trainer's zero-shot and retrieval sets, calibration's held-out images and bench --eval
    are the same images for seed 0: held-out combinations drawn with seed 0 + 1, as the trainer
    has always drawn its zero-shot set (so published figures for a seed still hold)."""
    from edgeclip.bench.evalset import load_eval_set
    from edgeclip.train.config import TrainConfig

    n, size, seed = 12, 32, TrainConfig().seed
    expected = [shapes_heldout(size, seed=seed)[i].image for i in range(n)]
    direct = [np.asarray(im) for im in expected]
    tasks = {t.name: t for t in zero_shot_tasks("builtin:shapes", image_size=size, size=n, seed=seed)}
    assert [np.asarray(im).tolist() for im in tasks["shape"].images] == [d.tolist() for d in direct]
    pairs = retrieval_pairs("builtin:shapes", image_size=size, size=n, seed=seed)
    assert pairs is not None and [np.asarray(im).tolist() for im in pairs[0]] == [d.tolist() for d in direct]

    want = np.stack([preprocess(im, CFG) for im in expected])
    calib = load_calibration_set("builtin:shapes", CFG, size=8, cache=tmp_path / "cache")
    np.testing.assert_array_equal(calib.heldout[:n], want)
    shape = tasks["shape"]
    assert calib.heldout_labels is not None
    assert calib.heldout_labels[:n] == [shape.classes[t] for t in shape.targets]

    bundle = Bundle.open(tiny_bundle)
    pre = bundle.manifest.preprocess
    evalset = load_eval_set("builtin:shapes", bundle, n)
    np.testing.assert_array_equal(evalset.pixels, np.stack([preprocess(im, pre) for im in (
        shapes_heldout(pre.image_size, seed=seed)[i].image for i in range(n))]))


def test_export_probes_are_heldout_shapes_of_the_reference_seed(tiny_checkpoint: Path) -> None:
    """The images every artifact is validated on come from the same held-out split (at an odd size,
    so the resize and crop are exercised)."""
    from edgeclip.export.driver import _probes
    from edgeclip.model.checkpoint import read_checkpoint_info
    from edgeclip.runtime.preprocess import DEFAULT_DECODE
    from edgeclip.train.config import TrainConfig

    info = read_checkpoint_info(tiny_checkpoint)
    pre = info.preprocess
    images = _probes(info, None, DEFAULT_DECODE)["image"].numpy()  # the path new bundles record
    held = shapes_heldout(pre.image_size + 13, seed=TrainConfig().seed, size=6)
    np.testing.assert_array_equal(images[:6], np.stack([preprocess(held[i].image, pre, DEFAULT_DECODE)
                                                        for i in range(6)]))
    assert len(images) > 6  # plus noise images


def test_the_data_layer_imports_only_the_base_and_the_runtime() -> None:
    """Every import in edgeclip/data, function-local ones too: a layer above (model, train,
    calibration, export, bench, cli) would make the readers depend on what reads through them."""
    import ast

    import edgeclip.data

    allowed = ("edgeclip.data", "edgeclip.runtime", "edgeclip.errors", "edgeclip._io", "edgeclip._deps",
               "edgeclip.bundle")
    root = Path(edgeclip.data.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [(path.name, n) for n in names if n.startswith("edgeclip") and not n.startswith(allowed)]
    assert len(list(root.glob("*.py"))) >= 8 and found == []


def test_bench_eval_reads_a_class_folder_as_training_evaluates_it(tiny_bundle: Path, tmp_path: Path) -> None:
    """Same class names (folder names made readable) and, with train/ and val/, the val/ images only."""
    from edgeclip.bench.evalset import load_eval_set
    from edgeclip.data.spec import heldout_items, zero_shot_eval_spec

    names = ["train/golden_retriever/0.png", "train/tabby-cat/1.png", "val/golden_retriever/2.png",
             "val/tabby-cat/3.png", "val/tabby-cat/4.png"]
    for k, name in enumerate(names):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(_image_bytes(k))
    spec = zero_shot_eval_spec(str(tmp_path))
    held = heldout_items(str(tmp_path), image_size=32)
    evalset = load_eval_set(str(tmp_path), Bundle.open(tiny_bundle), size=100)
    assert spec is not None and held is not None
    assert tuple(evalset.classes) == spec[0] == ("golden retriever", "tabby cat")
    assert evalset.targets.tolist() == [t for _, t in held] == [0, 1, 1]
