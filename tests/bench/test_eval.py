"""`edgeclip bench --encoders image --eval SOURCE` scores classes by name (issue 21 item 3).

The bundle's label set and the eval source may list the same classes in different orders (a class
folder is read in sorted order); top-1 must not depend on either order, and eval classes the label set
lacks are refused with a typed error instead of being scored by position.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeclip.bench.run import BenchConfig, run_bench
from edgeclip.errors import ConfigError
from tests.conftest import TINY_CLASSES, run_cli

EVAL_SIZE = 120


@pytest.fixture(scope="module")
def reversed_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle's model, with its default label set listing the classes in reverse order."""
    from edgeclip.export.driver import export_bundle

    out = tmp_path_factory.mktemp("reversed") / "reversed.edgeclip"
    export_bundle(tiny_checkpoint, out, targets=["onnx"], labels={"default": (TINY_CLASSES[::-1], None)})
    return out


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Held-out shape images saved as PNG files in one sub-folder per class (read back sorted)."""
    from edgeclip.data.shapes import ShapesDataset

    root = tmp_path_factory.mktemp("eval") / "shapes"
    ds = ShapesDataset("heldout", 60, image_size=32, seed=7)
    for i in range(len(ds)):
        s = ds[i]
        (root / s.shape).mkdir(parents=True, exist_ok=True)
        s.image.save(root / s.shape / f"{i:03d}.png")
    assert sorted(p.name for p in root.iterdir()) != list(TINY_CLASSES)  # the orders really differ
    return root


def _top1(bundle: Path, source: str) -> float:
    cfg = BenchConfig(bundle=bundle, encoders=["image"], backends=["onnxruntime"], baseline="none",
                      batch_sizes=[1], runs=1, warmup=0, end_to_end=False, eval_data=source, eval_size=EVAL_SIZE)
    rows = run_bench(cfg, log=lambda _: None)["rows"]
    return float(next(r["top1"] for r in rows if r["key"] == "image/onnxruntime-fp32/b1/model"))


def _runtime_top1(bundle: Path, folder: Path) -> float:
    """The same images classified by the runtime, whose answers are class names."""
    from edgeclip.runtime import ZeroShotClassifier

    files = sorted(folder.glob("*/*.png"))
    preds = ZeroShotClassifier.load(bundle, backend="onnxruntime").classify(files, top_k=1)
    return 100 * sum(p.label == f.parent.name for p, f in zip(preds, files, strict=True)) / len(files)


def test_label_set_order_does_not_change_top1(tiny_bundle: Path, reversed_bundle: Path) -> None:
    assert _top1(reversed_bundle, "builtin:shapes") == _top1(tiny_bundle, "builtin:shapes")


@pytest.mark.parametrize("which", ["normal", "reversed"])
def test_class_folder_top1_equals_the_runtime_classifier(
    which: str, tiny_bundle: Path, reversed_bundle: Path, class_folder: Path,
) -> None:
    bundle = tiny_bundle if which == "normal" else reversed_bundle
    assert _top1(bundle, str(class_folder)) == pytest.approx(_runtime_top1(bundle, class_folder), abs=0.01)


def test_eval_class_missing_from_the_label_set_is_refused(tiny_bundle: Path, tmp_path: Path,
                                                          class_folder: Path) -> None:
    import shutil

    folder = tmp_path / "eval"
    shutil.copytree(class_folder, folder)
    (folder / "circle").rename(folder / "Circle")  # a near miss: no silent case folding either
    shutil.copytree(class_folder / "square", folder / "hexagon")
    with pytest.raises(ConfigError, match="hexagon") as err:
        _top1(tiny_bundle, str(folder))
    assert "'Circle' (the label set has 'circle')" in str(err.value) and err.value.fix
    proc = run_cli("bench", str(tiny_bundle), "--encoders", "image", "--baseline", "none", "--runs", "1",
                   "--eval", str(folder))
    assert proc.returncode == 2, proc.stderr
    assert "Error:" in proc.stderr and "hexagon" in proc.stderr and "fix:" in proc.stderr
    assert "Traceback" not in proc.stderr
