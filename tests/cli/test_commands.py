"""The CLI as a user runs it: real subprocesses, exit codes, no tracebacks on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgeclip.data.shapes import ShapesDataset
from tests.conftest import TINY_CLASSES, run_cli


def _no_traceback(proc) -> None:  # type: ignore[no-untyped-def]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("imgs")
    ds = ShapesDataset("heldout", 2, 32)
    paths = []
    for i in range(2):
        p = root / f"img{i}.png"
        ds[i].image.save(p)
        paths.append(p)
    return paths


def test_help_lists_commands() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for cmd in ("train", "export", "classify", "inspect", "quickstart"):
        assert cmd in proc.stdout


def test_classify_json_and_inspect(tiny_bundle: Path, images: list[Path]) -> None:
    proc = run_cli("classify", str(tiny_bundle), *map(str, images), "--top-k", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 2 and all(len(r["predictions"]) == 3 for r in rows)
    assert all(p["label"] in TINY_CLASSES for r in rows for p in r["predictions"])
    proc = run_cli("inspect", str(tiny_bundle))
    assert proc.returncode == 0, proc.stderr
    assert "image/onnx-fp32" in proc.stdout and "text/onnx-fp32" in proc.stdout and "verified" in proc.stdout


def test_classify_bad_image_reports_and_exits_nonzero(tiny_bundle: Path, images: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    proc = run_cli("classify", str(tiny_bundle), str(images[0]), str(bad), str(tmp_path / "missing.png"), "--json")
    assert proc.returncode == 1
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert "predictions" in rows[0] and "error" in rows[1] and "not found" in rows[2]["error"]
    _no_traceback(proc)


def test_tampered_bundle_and_unknown_schema(tiny_bundle: Path, images: list[Path], tmp_path: Path) -> None:
    b = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    f = b / "image/onnx-fp32/model.onnx"
    f.write_bytes(f.read_bytes()[:-5] + b"xxxxx")
    proc = run_cli("classify", str(b), str(images[0]))
    assert proc.returncode == 1 and "Error: bundle file 'image/onnx-fp32/model.onnx' does not match" in proc.stderr
    _no_traceback(proc)
    m = json.loads((b / "manifest.json").read_text())
    m["schema_version"] = 7
    (b / "manifest.json").write_text(json.dumps(m))
    proc = run_cli("inspect", str(b))
    assert proc.returncode == 1 and "schema_version 7 is not supported" in proc.stderr
    _no_traceback(proc)


def test_export_errors(tiny_checkpoint: Path, tmp_path: Path) -> None:
    proc = run_cli("export", str(tiny_checkpoint), "--target", "onnxx", "--out", str(tmp_path / "b"))
    assert proc.returncode != 0 and "did you mean 'onnx'" in proc.stderr
    _no_traceback(proc)
    proc = run_cli("export", str(tmp_path / "nope"), "--out", str(tmp_path / "b"))
    assert proc.returncode == 1 and "checkpoint not found" in proc.stderr
    _no_traceback(proc)
    empty = tmp_path / "classes.txt"
    empty.write_text("\n# nothing\n")
    proc = run_cli("export", str(tiny_checkpoint), "--labels", str(empty), "--out", str(tmp_path / "b"))
    assert proc.returncode != 0 and "no class names" in proc.stderr
    _no_traceback(proc)
    assert not (tmp_path / "b").exists()


def test_checkpoint_that_does_not_fit_its_config(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ck = Path(shutil.copytree(tiny_checkpoint, tmp_path / "ck"))
    cfg = json.loads((ck / "config.json").read_text())
    cfg["model"]["embed_dim"] = 48
    (ck / "config.json").write_text(json.dumps(cfg))
    proc = run_cli("export", str(ck), "--out", str(tmp_path / "b"))
    assert proc.returncode == 1 and "do not fit the model" in proc.stderr and "Error:" in proc.stderr
    assert "fix:" in proc.stderr and "Traceback" not in proc.stderr
    _no_traceback(proc)


def test_train_export_classify_end_to_end(tmp_path: Path, images: list[Path]) -> None:
    ck, bundle = tmp_path / "ck", tmp_path / "b.edgeclip"
    proc = run_cli("train", "--model", "test-tiny", "--steps", "4", "--batch-size", "8", "--out", str(ck),
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["steps"] == 4
    assert len((ck / "train_log.jsonl").read_text().splitlines()) >= 2
    classes = tmp_path / "classes.txt"
    classes.write_text("circle\nsquare\n")
    proc = run_cli("export", str(ck), "--target", "onnx", "--labels", str(classes), "--out", str(bundle))
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("classify", str(bundle), str(images[0]), "--top-k", "1")
    assert proc.returncode == 0 and proc.stdout.split(":")[1].split()[0] in ("circle", "square")


def test_train_rejects_bad_arguments(tmp_path: Path) -> None:
    proc = run_cli("train", "--model", "edge-tiniest", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "did you mean 'edge-tiny'" in proc.stderr
    _no_traceback(proc)
    proc = run_cli("train", "--data", "builtin:shape", "--steps", "1", "--out", str(tmp_path / "x"))
    assert proc.returncode != 0 and "builtin:shapes" in proc.stderr
    _no_traceback(proc)


def test_embed_and_labels_commands(tiny_bundle: Path, images: list[Path], tmp_path: Path) -> None:
    import numpy as np

    b = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    out = tmp_path / "img.npy"
    proc = run_cli("embed", str(b), "--images", str(images[0]), "--images", str(images[1]), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    emb = np.load(out, allow_pickle=False)
    assert emb.shape == (2, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    proc = run_cli("embed", str(b), "--text", "a red circle", "--out", str(tmp_path / "t.npy"))
    assert proc.returncode == 0 and np.load(tmp_path / "t.npy").shape == (1, 32)
    proc = run_cli("embed", str(b), "--out", str(tmp_path / "x.npy"))
    assert proc.returncode == 2 and "either --images or --text" in proc.stderr
    classes = tmp_path / "classes.txt"
    classes.write_text("red thing\nblue thing\n")
    proc = run_cli("labels", str(b), "--classes", str(classes), "--name", "colours")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("classify", str(b), str(images[0]), "--labels", "colours", "--json")
    assert {p["label"] for p in json.loads(proc.stdout)["predictions"]} == {"red thing", "blue thing"}
    proc = run_cli("classify", str(b), str(images[0]), "--labels", "nope")
    assert proc.returncode != 0 and "unknown label set 'nope'" in proc.stderr
    _no_traceback(proc)


def test_embed_takes_several_values_after_one_flag_or_repeated_flags(tiny_bundle: Path, images: list[Path],
                                                                     tmp_path: Path) -> None:
    import numpy as np

    from edgeclip.runtime import ZeroShotClassifier

    a, b = map(str, images)
    clf = ZeroShotClassifier.load(tiny_bundle, labels=None)
    want = clf.embed_images([b, a])[0]
    for i, args in enumerate((["--images", b, a], ["--images", b, "--images", a])):
        out = tmp_path / f"img{i}.npy"
        proc = run_cli("embed", str(tiny_bundle), *args, "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_allclose(np.load(out, allow_pickle=False), want, atol=1e-6)  # rows in input order
        assert json.loads((tmp_path / f"img{i}.npy.sources.json").read_text()) == {
            "rows": [b, a], "failed": [], "embedding_space": clf.image.artifact.embedding_space}
    texts = ["a red circle", "a blue star"]
    want = clf.embed_texts(texts)
    for i, args in enumerate((["--text", *texts], ["--text", texts[0], "--text", texts[1]])):
        out = tmp_path / f"txt{i}.npy"
        proc = run_cli("embed", str(tiny_bundle), *args, "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_allclose(np.load(out, allow_pickle=False), want, atol=1e-6)
    proc = run_cli("embed", str(tiny_bundle), "--images", a, "--text", "x", "--out", str(tmp_path / "x.npy"))
    assert proc.returncode == 2 and "either --images or --text" in proc.stderr


def test_embed_and_classify_share_one_rule_for_failed_inputs(tiny_bundle: Path, images: list[Path],
                                                             tmp_path: Path) -> None:
    """Good inputs get their result, each failed input is reported on stderr, the exit code is 1;
    embed writes no row (never a NaN row) for a failed input, and says which row is which."""
    import numpy as np

    missing = str(tmp_path / "missing.png")
    a, b = map(str, images)
    proc = run_cli("classify", str(tiny_bundle), a, missing, b)
    assert proc.returncode == 1 and f"{missing}: Error: image not found" in proc.stderr
    assert len(proc.stdout.splitlines()) == 2
    out = tmp_path / "e.npy"
    proc = run_cli("embed", str(tiny_bundle), "--images", a, missing, b, "--out", str(out))
    assert proc.returncode == 1 and f"{missing}: Error: image not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    emb = np.load(out, allow_pickle=False)
    assert emb.shape == (2, 32) and np.isfinite(emb).all()
    sources = json.loads((tmp_path / "e.npy.sources.json").read_text())
    assert sources["rows"] == [a, b] and [f["input"] for f in sources["failed"]] == [missing]
    alone = tmp_path / "b.npy"
    assert run_cli("embed", str(tiny_bundle), "--images", b, "--out", str(alone)).returncode == 0
    np.testing.assert_allclose(emb[1], np.load(alone)[0], atol=1e-6)  # row 1 is b, not the missing image
    proc = run_cli("embed", str(tiny_bundle), "--images", missing, "--out", str(tmp_path / "none.npy"))
    assert proc.returncode == 1 and "no input could be embedded" in proc.stderr
    assert not (tmp_path / "none.npy").exists()


def test_labels_does_not_overwrite_a_label_set_without_overwrite(tiny_bundle: Path, images: list[Path],
                                                                  tmp_path: Path) -> None:
    b = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    before = (b / "manifest.json").read_bytes()
    classes = tmp_path / "classes.txt"
    classes.write_text("red thing\nblue thing\n")
    proc = run_cli("labels", str(b), "--classes", str(classes), "--name", "default")
    assert proc.returncode == 2 and "already has a label set 'default' (6 classes)" in proc.stderr
    assert "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert (b / "manifest.json").read_bytes() == before
    proc = run_cli("labels", str(b), "--classes", str(classes), "--name", "default", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("classify", str(b), str(images[0]), "--json")
    assert {p["label"] for p in json.loads(proc.stdout)["predictions"]} == {"red thing", "blue thing"}
