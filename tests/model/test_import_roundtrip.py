"""import -> export -> torch-free runtime, against transformers, for a small ViT-B/32-shaped model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgeclip.model.hf_keys import hf_to_openai
from tests.conftest import run_cli
from tests.model.test_import_hf import make_hf_clip, save_hf

pytest.importorskip("onnxruntime")

# ViT-B/32's layout (patch 32, head width 64, mlp 4x, QuickGELU) at a width and size tests can afford
B32_SMALL = dict(v=(128, 2, 2, 32, 64, 4), t=(64, 2, 1, 4), act="quick_gelu", proj=64)
TEXTS = ["a photo of a dog.", "A RED circle, on a grey background!", "two cats 🐱 on a sofa", "x " * 100]


@pytest.fixture(scope="module")
def hf_model() -> Any:
    return make_hf_clip(**B32_SMALL, seed=3)


def images(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (70 + 9 * i, 90 - 7 * i, 3), dtype=np.uint8) for i in range(n)]


@torch.no_grad()
def reference(hf: Any, bundle: Path) -> tuple[np.ndarray, np.ndarray]:
    """transformers' embeddings for the runtime's own preprocessing and token ids."""
    from edgeclip.bundle import Bundle
    from edgeclip.runtime.preprocess import preprocess
    from edgeclip.runtime.tokenizer import TextTokenizer

    b = Bundle.open(bundle)
    pixels = torch.from_numpy(np.stack([preprocess(im, b.manifest.preprocess) for im in images()]))
    ids = torch.from_numpy(TextTokenizer(b.tokenizer_path(), b.manifest.tokenizer)(TEXTS))
    out = hf(input_ids=ids, pixel_values=pixels)
    return out.image_embeds.numpy(), out.text_embeds.numpy()


def runtime_embeddings(bundle: Path, backend: str) -> tuple[np.ndarray, np.ndarray]:
    from edgeclip.runtime.classifier import ZeroShotClassifier

    hint = "f32" if backend == "openvino" else None  # OpenVINO defaults to bf16 on this CPU
    clf = ZeroShotClassifier.load(bundle, backend=backend, labels=None, precision_hint=hint)
    img, errors = clf.embed_images(images())
    assert errors == [None] * len(errors)
    return img, clf.embed_texts(TEXTS)


def check(bundle: Path, hf: Any, backend: str) -> None:
    ref_img, ref_txt = reference(hf, bundle)
    img, txt = runtime_embeddings(bundle, backend)
    assert np.abs(img - ref_img).max() < 1e-4, np.abs(img - ref_img).max()
    assert np.abs(txt - ref_txt).max() < 1e-4, np.abs(txt - ref_txt).max()


def test_hf_directory_import_export_onnx_openvino_runtime(hf_model: Any, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    r = run_cli("import", str(save_hf(hf_model, tmp_path / "hf")), "--out", str(tmp_path / "ckpt"))
    assert r.returncode == 0, r.stderr
    assert "hugging_face" in r.stdout and "quick_gelu" in r.stdout
    r = run_cli("export", str(tmp_path / "ckpt"), "--target", "onnx,openvino", "--out", str(tmp_path / "b.edgeclip"))
    assert r.returncode == 0, r.stderr
    check(tmp_path / "b.edgeclip", hf_model, "onnxruntime")
    check(tmp_path / "b.edgeclip", hf_model, "openvino")


def test_openai_state_dict_from_own_converter_round_trips(hf_model: Any, tmp_path: Path) -> None:
    """HF -> OpenAI names (our converter) -> torch.save -> import (QuickGELU assumed) -> onnx."""
    from edgeclip.export.driver import export_bundle
    from edgeclip.model.importer import import_weights

    state = hf_to_openai({k: v.clone() for k, v in hf_model.state_dict().items()})
    state["input_resolution"] = torch.tensor(64)  # OpenAI's files carry these non-weights
    torch.save(state, tmp_path / "clip.pt")
    result = import_weights(tmp_path / "clip.pt", tmp_path / "ckpt")
    assert result.source_kind == "openai" and result.activation == "quick_gelu"
    assert any("input_resolution" in n for n in result.notes)
    export_bundle(result.path, tmp_path / "b.edgeclip", targets=["onnx"])
    check(tmp_path / "b.edgeclip", hf_model, "onnxruntime")
