"""The embedding-space id: shared by exports of one checkpoint at any precision, changed by new
weights, preprocessing or tokenizer; `inspect OLD NEW` turns it into re-index or not; label sets
are refused in another space until recomputed."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from edgeclip.bundle import Bundle
from edgeclip.errors import EmbeddingSpaceError
from edgeclip.export.driver import export_bundle
from edgeclip.export.embedding_space import embedding_space
from edgeclip.model.checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from edgeclip.runtime import ZeroShotClassifier
from edgeclip.runtime.spaces import NEW_SPACE, SAME, SAME_SPACE_OTHER_ARTIFACT, compare
from tests.conftest import TINY_CLASSES, run_cli

CALIB = {"calib": "builtin:shapes", "calib_size": 64}


def spaces(info: CheckpointInfo, model: torch.nn.Module | None = None) -> tuple[str, str]:
    m = model if model is not None else load_checkpoint(info.path)[0]
    return embedding_space(m, info, "image"), embedding_space(m, info, "text")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def again_fp32_int8(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The session's checkpoint exported a second time, at fp32 and INT8."""
    out = tmp_path_factory.mktemp("space") / "again.edgeclip"
    export_bundle(tiny_checkpoint, out, targets=["onnx"], precision=["fp32", "int8"], encoders=["image"],
                  options=CALIB)
    return Bundle.open(out)


@pytest.fixture(scope="module")
def finetuned(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint after one more (small) update of both projections, as fine-tuning would make."""
    model, info = load_checkpoint(tiny_checkpoint)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in (model.visual.proj, model.text_projection):
            p.add_(1e-3 * torch.randn(p.shape, generator=gen))
    return save_checkpoint(tmp_path_factory.mktemp("ft") / "ft", model, info.tokenizer_path, info.preprocess,
                           info.tokenizer)


@pytest.fixture(scope="module")
def finetuned_bundle(finetuned: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ftb") / "ft.edgeclip"
    export_bundle(finetuned, out, targets=["onnx"], labels={"default": (TINY_CLASSES, None)})
    return out


def test_export_records_each_towers_space(tiny_bundle: Path, tiny_checkpoint: Path) -> None:
    _, info = load_checkpoint(tiny_checkpoint)
    image, text = spaces(info)
    m = Bundle.open(tiny_bundle).manifest
    assert [a.embedding_space for a in m.find("image")] == [image]
    assert [a.embedding_space for a in m.find("text")] == [text]
    assert image != text
    _, meta = Bundle.open(tiny_bundle).label_set("default")
    assert meta["embedding_space"] == text  # label vectors are text vectors


def test_same_checkpoint_twice_and_at_int8_share_the_space(tiny_bundle: Path, again_fp32_int8: Bundle) -> None:
    first = Bundle.open(tiny_bundle).manifest.find("image")[0]
    fp32, int8 = (again_fp32_int8.manifest.find("image", "onnx", p)[0] for p in ("fp32", "int8"))
    assert first.embedding_space == fp32.embedding_space == int8.embedding_space
    verdicts = {v.new: v for v in compare(Bundle.open(tiny_bundle).manifest, again_fp32_int8.manifest)}
    assert verdicts["image/onnx-fp32"].verdict == SAME  # the same files: ONNX export is deterministic
    v = verdicts["image/onnx-int8"]
    assert v.verdict == SAME_SPACE_OTHER_ARTIFACT and not v.reindex
    # the bound is below the INT8 artifact's own cosine to fp32 and above the README's INT8 budget (0.995)
    assert int8.validation.heldout is not None and v.cosine_at_least is not None
    assert 0.995 < v.cosine_at_least <= int8.validation.heldout.cosine_min


def test_new_weights_give_a_new_space(tiny_checkpoint: Path, finetuned: Path) -> None:
    _, info = load_checkpoint(tiny_checkpoint)
    _, ft_info = load_checkpoint(finetuned)
    old, new = spaces(info), spaces(ft_info)
    assert old[0] != new[0] and old[1] != new[1]


def test_only_the_towers_own_inputs_count(tiny_checkpoint: Path, tmp_path: Path) -> None:
    model, info = load_checkpoint(tiny_checkpoint)
    image, text = spaces(info, model)
    other_mean = dataclasses.replace(info, preprocess=dataclasses.replace(info.preprocess, mean=(0.5, 0.5, 0.5)))
    assert spaces(other_mean, model) == (spaces(other_mean, model)[0], text) and spaces(other_mean, model)[0] != image
    # the same tokenizer config with another vocabulary file: text vectors change, image ones do not
    tok = json.loads(info.tokenizer_path.read_text())
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[-2:]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    shutil.copytree(info.path, tmp_path / "ckpt")
    (tmp_path / "ckpt/tokenizer.json").write_text(json.dumps(tok))
    swapped = dataclasses.replace(info, path=tmp_path / "ckpt")
    assert spaces(swapped, model) == (image, spaces(swapped, model)[1]) and spaces(swapped, model)[1] != text
    lowercase = dataclasses.replace(info, tokenizer=dataclasses.replace(info.tokenizer,
                                                                       lowercase=not info.tokenizer.lowercase))
    assert spaces(lowercase, model)[1] != text


def test_inspect_old_new_says_reindex(tiny_bundle: Path, finetuned_bundle: Path, again_fp32_int8: Bundle) -> None:
    proc = run_cli("inspect", str(tiny_bundle), str(finetuned_bundle))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("new space: re-index") == 2  # image and text
    proc = run_cli("inspect", str(tiny_bundle), str(again_fp32_int8.root), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["reindex"] is False
    assert {v["new"]: v["verdict"] for v in out["verdicts"]} == {
        "image/onnx-fp32": SAME, "image/onnx-int8": SAME_SPACE_OTHER_ARTIFACT}
    assert [v.verdict for v in compare(Bundle.open(tiny_bundle).manifest,
                                       Bundle.open(finetuned_bundle).manifest)] == [NEW_SPACE, NEW_SPACE]


def test_a_label_set_from_another_space_is_refused_until_recomputed(tiny_bundle: Path, finetuned_bundle: Path,
                                                                     tmp_path: Path) -> None:
    """The old model's label set carried into the new bundle (files and manifest entry, all hashes right)."""
    new = Path(shutil.copytree(finetuned_bundle, tmp_path / "new.edgeclip"))
    for f in ("labels/default.npy", "labels/default.json"):
        shutil.copyfile(tiny_bundle / f, new / f)
    manifest = json.loads((new / "manifest.json").read_text())
    manifest["labels"]["default"] = json.loads((tiny_bundle / "manifest.json").read_text())["labels"]["default"]
    (new / "manifest.json").write_text(json.dumps(manifest))
    Bundle.open(new).verify()
    with pytest.raises(EmbeddingSpaceError, match="label set 'default' was computed in embedding space") as e:
        ZeroShotClassifier.load(new)
    assert e.value.fix and "--overwrite" in e.value.fix
    proc = run_cli("labels", str(new), "--classes", str(_classes(tmp_path)), "--name", "default", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert ZeroShotClassifier.load(new).classes == TINY_CLASSES


def _classes(tmp_path: Path) -> Path:
    path = tmp_path / "classes.txt"
    path.write_text("\n".join(TINY_CLASSES) + "\n")
    return path
