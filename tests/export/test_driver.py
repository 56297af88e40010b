"""`export --out EXISTING`: one bundle holds one model (issue 21, item 2).

Adding artifacts is allowed only from the same weights (and configuration); anything else is a
typed error offering `--overwrite` or a new `--out`, and the old bundle keeps working.
`--overwrite` replaces the bundle whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch

from edgeclip.bundle import MANIFEST, Bundle
from edgeclip.data.shapes import ShapesDataset
from edgeclip.errors import ExportError
from edgeclip.export.driver import export_bundle
from edgeclip.model.checkpoint import load_checkpoint, save_checkpoint
from edgeclip.model.clip import CLIP
from edgeclip.runtime import ZeroShotClassifier
from tests.conftest import TINY_CLASSES, run_cli

LABELS = {"default": (TINY_CLASSES, None)}


def _resave(src: Path, dst: Path, *, noise: float = 0.0, image_size: int | None = None,
            embed_dim: int | None = None, quick_gelu: bool | None = None) -> Path:
    """A checkpoint derived from `src`: perturbed weights, another architecture (fresh weights),
    or the same weights under another config."""
    model, info = load_checkpoint(src)
    cfg, pre = info.model, info.preprocess
    if image_size or embed_dim:
        cfg = dataclasses.replace(cfg, name="test-tiny-other", embed_dim=embed_dim or cfg.embed_dim,
                                  vision_cfg=dataclasses.replace(cfg.vision_cfg, image_size=image_size or 32))
        pre = dataclasses.replace(pre, image_size=image_size or pre.image_size)
        torch.manual_seed(0)
        model = CLIP(cfg).eval()
    elif quick_gelu is not None:
        cfg = dataclasses.replace(cfg, quick_gelu=quick_gelu)
        state = model.state_dict()
        model = CLIP(cfg).eval()
        model.load_state_dict(state)
    if noise:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(noise * torch.randn(p.shape, generator=g))
    return save_checkpoint(dst, model, info.tokenizer_path, pre, info.tokenizer)


@pytest.fixture(scope="module")
def variants(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("variants")
    return {
        "other_arch": _resave(tiny_checkpoint, root / "other_arch", image_size=48, embed_dim=24),
        "other_weights": _resave(tiny_checkpoint, root / "other_weights", noise=0.05),
        "other_activation": _resave(tiny_checkpoint, root / "other_activation", quick_gelu=True),
        "same_weights": _resave(tiny_checkpoint, root / "same_weights"),
    }


@pytest.fixture
def bundle(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out" / "b.edgeclip"
    export_bundle(tiny_checkpoint, out, encoders=["image"], labels=LABELS)
    return out


def _snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _classify(out: Path) -> list[tuple[str, float]]:
    images = [ShapesDataset("heldout", 6, 40)[i].image for i in range(6)]
    results = ZeroShotClassifier.load(out, threads=1).classify(images, top_k=1)
    assert all(r.ok for r in results)
    return [(r.label, round(r.predictions[0][1], 5)) for r in results]


@pytest.mark.parametrize("variant,reason", [
    ("other_arch", "other weights"),  # today: exit 0, and no command can load the bundle
    ("other_weights", "other weights"),  # today: two models silently mixed in one bundle
    ("other_activation", "model config"),  # the same bytes run as QuickGELU are another model
])
def test_other_model_is_refused_and_the_old_bundle_keeps_working(
    variant: str, reason: str, variants: dict[str, Path], bundle: Path
) -> None:
    before, predictions = _snapshot(bundle), _classify(bundle)
    with pytest.raises(ExportError, match=f"cannot add artifacts to .*{reason}") as e:
        export_bundle(variants[variant], bundle, encoders=["image", "text"], labels=LABELS)
    assert e.value.fix and "--overwrite" in e.value.fix and "--out" in e.value.fix
    assert _snapshot(bundle) == before  # not one byte changed
    b = Bundle.open(bundle)
    b.verify()
    assert [a.key for a in b.manifest.artifacts] == ["image/onnx-fp32"]
    assert _classify(bundle) == predictions
    assert [p.name for p in bundle.parent.iterdir()] == ["b.edgeclip"]  # no staging left behind


def test_the_weights_hash_is_recorded_and_identifies_the_weights(
    tiny_checkpoint: Path, variants: dict[str, Path], bundle: Path
) -> None:
    recorded = Bundle.open(bundle).manifest.source_weights_sha256
    assert recorded and len(recorded) == 64
    assert json.loads((bundle / MANIFEST).read_text())["source_weights_sha256"] == recorded
    # the same tensors saved again elsewhere are the same weights: adding is allowed
    export_bundle(variants["same_weights"], bundle, targets=["onnx"], precision="fp16", encoders=["image"])
    b = Bundle.open(bundle)
    assert sorted(a.key for a in b.manifest.artifacts) == ["image/onnx-fp16", "image/onnx-fp32"]
    assert b.manifest.source_weights_sha256 == recorded and list(b.manifest.labels) == ["default"]
    b.verify()
    other = bundle.parent / "other.edgeclip"
    export_bundle(variants["other_weights"], other, encoders=["image"])
    assert Bundle.open(other).manifest.source_weights_sha256 != recorded


def test_a_bundle_without_a_weights_hash_is_refused_unless_overwritten(tiny_checkpoint: Path, bundle: Path) -> None:
    # bundles written before the hash was recorded: their weights are unknown
    manifest = json.loads((bundle / MANIFEST).read_text())
    del manifest["source_weights_sha256"]
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    assert Bundle.open(bundle).manifest.source_weights_sha256 is None  # still loads
    before = _snapshot(bundle)
    with pytest.raises(ExportError, match="does not record which weights") as e:
        export_bundle(tiny_checkpoint, bundle, encoders=["text"])
    assert e.value.fix and "--overwrite" in e.value.fix
    assert _snapshot(bundle) == before
    export_bundle(tiny_checkpoint, bundle, encoders=["text"], overwrite=True)
    b = Bundle.open(bundle)
    assert [a.key for a in b.manifest.artifacts] == ["text/onnx-fp32"] and not b.manifest.labels
    assert b.manifest.source_weights_sha256


def test_overwrite_replaces_the_bundle_whole(variants: dict[str, Path], bundle: Path) -> None:
    export_bundle(variants["other_arch"], bundle, encoders=["image"], labels={"default": (["a", "b"], None)},
                  overwrite=True)
    b = Bundle.open(bundle)
    b.verify()
    assert b.manifest.model_name == "test-tiny-other" and b.manifest.preprocess.image_size == 48
    assert [a.key for a in b.manifest.artifacts] == ["image/onnx-fp32"]
    assert sorted(_snapshot(bundle)) == sorted(
        [MANIFEST, "tokenizer.json", "labels/default.npy", "labels/default.json", *b.manifest.artifacts[0].files])
    assert {label for label, _ in _classify(bundle)} <= {"a", "b"}
    assert [p.name for p in bundle.parent.iterdir()] == ["b.edgeclip"]  # the old bundle is gone, no leftovers


def test_an_unreadable_bundle_is_not_added_to(tiny_checkpoint: Path, bundle: Path) -> None:
    # what today's bug left behind: artifacts whose shapes do not fit the manifest's model
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["embed_dim"] = 128
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="cannot be read") as e:
        export_bundle(tiny_checkpoint, bundle, encoders=["text"])
    assert e.value.fix and "--overwrite" in e.value.fix
    export_bundle(tiny_checkpoint, bundle, encoders=["image"], labels=LABELS, overwrite=True)
    assert len(_classify(bundle)) == 6


def test_cli_refuses_then_overwrites(variants: dict[str, Path], bundle: Path) -> None:
    refused = run_cli("export", str(variants["other_arch"]), "--encoders", "image", "--out", str(bundle))
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.startswith("Error: cannot add artifacts") and "Traceback" not in refused.stderr
    assert "--overwrite" in refused.stderr and Bundle.open(bundle).manifest.model_name == "test-tiny"
    done = run_cli("export", str(variants["other_arch"]), "--encoders", "image", "--out", str(bundle), "--overwrite")
    assert done.returncode == 0, done.stderr
    assert Bundle.open(bundle).manifest.model_name == "test-tiny-other"
