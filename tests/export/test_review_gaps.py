"""What the export driver owns after a builder returns, each checked where a real bug would slip
past the other tests: files a backend adds on load are hashed and listed, the builder's backend
options reach the check, and a failed export leaves neither its staging copy nor its scratch space.

A small target of its own ("gapcheck") keeps these tests independent of any SDK: it saves the fp32
ONNX graph and runs it with onnxruntime, like the toy target of docs/adding-a-target.md.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import onnx
import pytest

from edgeclip._io import sha256_file
from edgeclip.bundle import Artifact, Bundle
from edgeclip.errors import ExportError
from edgeclip.export.capabilities import CAPABILITIES, Capability, register_capability
from edgeclip.export.driver import export_bundle
from edgeclip.export.encoders import EncoderSpec
from edgeclip.export.reference import reference_onnx
from edgeclip.export.targets import TARGETS, Built, ExportContext, register_target
from edgeclip.model.checkpoint import load_checkpoint, save_checkpoint
from edgeclip.runtime.backends import BACKENDS, register_backend
from edgeclip.runtime.backends.base import BackendOptions
from tests.conftest import TINY_CLASSES
from tests.export.onnx_file_backend import OnnxFileBackend

NAME = "gapcheck"
HERE = "tests.export.test_review_gaps"
ENGINE = b"an engine built on this machine"
OPTIONS = BackendOptions(threads=1, precision_hint="f32")


def _add_engine(built: Built, backend: Any) -> None:
    """What TensorRT's `loaded` does: the backend leaves a file beside the artifact when it loads."""
    engine = backend.path.parent / "engine.plan"
    engine.write_bytes(ENGINE)
    built.files.append(engine.name)


class GapTarget:
    name = NAME
    fail = False  # a builder that fails after it wrote files and scratch data

    def build(self, ctx: ExportContext, spec: EncoderSpec, precision: str, folder: Path) -> Built:
        onnx.save(onnx.load(str(reference_onnx(ctx, spec))), str(folder / "model.gap"))
        if self.fail:
            raise ExportError("the builder failed", fix="none")
        return Built(["model.gap"], {"onnx": onnx.__version__}, checked_with="gap backend", options=OPTIONS,
                     loaded=_add_engine)


class GapBackend(OnnxFileBackend):
    name: ClassVar[str] = NAME
    opened: ClassVar[list[tuple[Path, BackendOptions]]] = []

    def __init__(self, path: Path, artifact: Artifact, options: BackendOptions = BackendOptions()) -> None:
        GapBackend.opened.append((Path(path), options))
        super().__init__(path, artifact, options)


@pytest.fixture(scope="module", autouse=True)
def registered() -> Iterator[None]:
    register_target(NAME, f"{HERE}:GapTarget")
    register_backend(NAME, NAME, f"{HERE}:GapBackend")
    register_capability(Capability(NAME, ("fp32",), (), builds_on="anywhere", runs_on="onnxruntime",
                                   numerics_here="yes"))
    yield
    for registry in (TARGETS, BACKENDS, CAPABILITIES):
        registry.pop(NAME)


@pytest.fixture(scope="module")
def gap_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    GapBackend.opened.clear()
    out = tmp_path_factory.mktemp("gap") / "b.edgeclip"
    export_bundle(tiny_checkpoint, out, targets=[NAME], encoders=["image"], labels={"default": (TINY_CLASSES, None)})
    return Bundle.open(out)


def test_files_a_backend_adds_on_load_are_hashed_and_listed(gap_bundle: Bundle) -> None:
    (artifact,) = gap_bundle.manifest.artifacts
    engine = f"{artifact.path}/engine.plan"
    assert list(artifact.files) == [f"{artifact.path}/model.gap", engine]
    assert artifact.files[engine] == sha256_file(gap_bundle.root / engine)
    assert (gap_bundle.root / engine).read_bytes() == ENGINE
    gap_bundle.verify()


def test_an_image_artifact_records_top1_agreement_with_torch_on_the_label_set(gap_bundle: Bundle) -> None:
    (artifact,) = gap_bundle.manifest.artifacts
    assert artifact.validation.top1_agreement == 1.0  # fp32: the same label as torch on every probe


def test_the_check_loads_with_the_builders_backend_options(gap_bundle: Bundle) -> None:
    staged = [(p, o) for p, o in GapBackend.opened if p.parents[2].name.endswith(".partial")]
    assert [p.name for p, _ in staged] == ["model.gap"]
    assert all(o == OPTIONS for _, o in staged), staged


def test_a_failed_export_leaves_no_staging_and_no_scratch(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(GapTarget, "fail", True)
    out = tmp_path / "out" / "b.edgeclip"
    with pytest.raises(ExportError, match="the builder failed"):
        export_bundle(tiny_checkpoint, out, targets=[NAME], encoders=["image"])
    assert not out.exists() and not list(out.parent.iterdir()), "nothing staged is left behind"
    assert not list(scratch.glob("edgeclip-export-*")), "the export's scratch space is removed"


def test_the_calibration_record_splits_exactly_the_layers_left_in_float(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every layer kept in float is there by default, by the guard or for speed (one of them), and a
    default measured safe (so quantized) is not also recorded as kept in float."""
    monkeypatch.setenv("EDGECLIP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "b.edgeclip"
    export_bundle(tiny_checkpoint, out, targets=["onnx"], precision="int8", encoders=["image"],
                  options={"calib": "builtin:shapes", "calib_size": 64})
    (artifact,) = Bundle.open(out).manifest.artifacts
    c = artifact.calibration
    assert c is not None
    reasons = [c.excluded_by_default, c.excluded_by_guard, c.details["excluded_for_speed"]]
    assert sorted(n for r in reasons for n in r) == sorted(c.excluded_layers)
    assert not set(c.float_defaults_measured_safe or []) & set(c.excluded_layers)


@pytest.mark.parametrize("changed", ["tokenizer", "preprocessing"])
def test_the_same_weights_under_another_tokenizer_or_preprocessing_are_not_added(
    tiny_checkpoint: Path, tmp_path: Path, changed: str
) -> None:
    model, info = load_checkpoint(tiny_checkpoint)
    tok, pre = info.tokenizer, info.preprocess
    if changed == "tokenizer":
        tok = dataclasses.replace(tok, lowercase=not tok.lowercase)
    else:
        pre = dataclasses.replace(pre, mean=(0.5, 0.5, 0.5))
    other = save_checkpoint(tmp_path / "other", model, info.tokenizer_path, pre, tok)
    out = tmp_path / "b.edgeclip"
    export_bundle(tiny_checkpoint, out, encoders=["image"])
    with pytest.raises(ExportError, match=f"cannot add artifacts to .*its {changed} differ"):
        export_bundle(other, out, encoders=["text"])
    assert [a.key for a in Bundle.open(out).manifest.artifacts] == ["image/onnx-fp32"]
