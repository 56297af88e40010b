"""A cross-target export test, written once and subclassed per target (tests/export/test_<target>.py).

A subclass sets `target`, `precisions`, and `runs_here` (can the artifact be executed on this
machine?), and may override `check_target_specific` for what only that target has.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from edgeclip.bundle import Bundle
from edgeclip.errors import BundleError
from edgeclip.export.driver import export_bundle
from edgeclip.export.encoders import ENCODERS
from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.model.clip import ImageEncoder, TextEncoder
from edgeclip.runtime.backends import backend_class
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.tokenizer import TextTokenizer
from tests.conftest import README_PARITY, TINY_CLASSES


class TargetTemplate:
    target: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]
    runs_here: ClassVar[bool] = True
    backend: ClassVar[str]
    backend_options: ClassVar[BackendOptions] = BackendOptions()

    @pytest.fixture(scope="class")
    @classmethod
    def bundle(cls, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
        out = tmp_path_factory.mktemp(f"export-{cls.target}") / "b.edgeclip"
        for precision in cls.precisions:
            export_bundle(tiny_checkpoint, out, targets=[cls.target], precision=precision,
                          labels={"default": (TINY_CLASSES, None)})
        return Bundle.open(out)

    def test_every_encoder_and_precision_is_registered_and_complete(self, bundle: Bundle) -> None:
        keys = {a.key for a in bundle.manifest.artifacts}
        assert keys == {f"{e}/{self.target}-{p}" for e in ENCODERS for p in self.precisions}
        for a in bundle.manifest.artifacts:
            assert a.files and all(len(h) == 64 for h in a.files.values())
            assert all((bundle.root / f).stat().st_size > 0 for f in a.files)
            assert [s.name for s in a.inputs] == (["pixel_values"] if a.encoder == "image" else ["input_ids"])
            assert [s.name for s in a.outputs] == (["image_embeds"] if a.encoder == "image" else ["text_embeds"])
            assert a.environment.to_dict(), "the export environment is recorded"
            assert a.validation.checked_with
            if self.runs_here:
                assert a.validation.passed is True
                assert a.validation.cosine_min is not None and a.validation.cosine_min >= README_PARITY[a.precision]
            self.check_target_specific(bundle, a)
        bundle.verify()

    def check_target_specific(self, bundle: Bundle, artifact) -> None:  # type: ignore[no-untyped-def]
        """Override for checks only this target has."""

    def test_hashes_are_verified_on_load(self, bundle: Bundle, tmp_path: Path) -> None:
        copy = Path(shutil.copytree(bundle.root, tmp_path / "copy"))
        artifact = bundle.manifest.artifacts[0]
        victim = copy / artifact.main_file
        if victim.is_dir():  # e.g. an .mlpackage: tamper with its largest file
            victim = max((p for p in victim.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        victim.write_bytes(victim.read_bytes()[:-3] + b"zzz")
        b = Bundle.open(copy)
        with pytest.raises(BundleError, match="does not match its sha256"):
            b.verify()

    def test_runtime_backend_matches_torch(self, bundle: Bundle, tiny_checkpoint: Path) -> None:
        if not self.runs_here:
            pytest.skip(f"{self.target} artifacts cannot run on this machine")
        model, info = load_checkpoint(tiny_checkpoint)
        x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
        ids = TextTokenizer(info.tokenizer_path, info.tokenizer)(["a red star", "a photo of a circle.", "x"])
        with torch.no_grad():
            ref = {"image": ImageEncoder(model)(x).numpy(), "text": TextEncoder(model)(torch.from_numpy(ids)).numpy()}
        inputs = {"image": x.numpy(), "text": ids}
        cls = backend_class(self.backend)
        for a in bundle.manifest.artifacts:
            backend = cls(bundle.artifact_path(a), a, self.backend_options)
            got = backend.infer({a.inputs[0].name: inputs[a.encoder]})[a.outputs[0].name]
            cos = (got * ref[a.encoder]).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref[a.encoder], axis=1)
            assert cos.min() >= README_PARITY[a.precision], a.key
