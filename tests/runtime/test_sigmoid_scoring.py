"""SigLIP bundles score labels with independent sigmoids, as the manifest records; CLIP's stay softmax."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeclip.bundle import Bundle
from edgeclip.errors import BundleError, ConfigError
from edgeclip.export.driver import export_bundle
from edgeclip.model.checkpoint import load_checkpoint, save_checkpoint
from edgeclip.model.importer import import_weights
from edgeclip.runtime import ZeroShotClassifier
from edgeclip.runtime.preprocess import preprocess
from edgeclip.runtime.scoring import Scoring, scoring_from_manifest
from tests.conftest import run_cli
from tests.model.siglip_fixtures import make_hf_dir

pytest.importorskip("onnxruntime")
CLASSES = ["red circle", "blue square", "green triangle"]


@pytest.fixture(scope="module")
def siglip_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sigmoid")
    _, src = make_hf_dir(root / "hf", "p8-w32")
    import_weights(src, root / "imported")
    model, info = load_checkpoint(root / "imported")
    with torch.no_grad():  # a scale and bias under which cos 1 scores ~1 and cos -1 ~0
        model.logit_scale.fill_(float(np.log(10.0)))
        model.logit_bias.fill_(-5.0)
    save_checkpoint(root / "ckpt", model, info.tokenizer_path, info.preprocess, info.tokenizer)
    export_bundle(root / "ckpt", root / "b.edgeclip", targets=("onnx",), precision="fp32",
                  labels={"default": (CLASSES, None)})
    return root / "b.edgeclip"


def test_manifest_records_sigmoid_and_bias(siglip_bundle: Path) -> None:
    m = Bundle.open(siglip_bundle).manifest
    assert m.model_config["scoring"] == {"rule": "sigmoid", "logit_bias": -5.0}
    assert m.model_config["family"] == "siglip" and m.logit_scale == pytest.approx(10.0)


def test_classify_returns_independent_sigmoids(siglip_bundle: Path, tmp_path: Path) -> None:
    clf = ZeroShotClassifier.load(siglip_bundle, backend="onnxruntime")
    img = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    (result,) = clf.classify([img], top_k=3)
    cos = clf.label_embeddings @ clf.embed_images([img])[0][0]
    expected = 1 / (1 + np.exp(-(10.0 * cos - 5.0)))
    got = dict(result.predictions)
    assert result.scoring == "sigmoid" and result.to_dict()["scoring"] == "sigmoid"
    np.testing.assert_allclose([got[c] for c in CLASSES], expected, rtol=1e-5)
    assert abs(sum(got.values()) - 1.0) > 1e-3  # not a softmax: the scores need not sum to 1
    assert preprocess(img, clf.preprocess_cfg).shape == (3, 32, 32)


def test_multi_label_returns_every_label_above_the_threshold(siglip_bundle: Path) -> None:
    """Labels placed at cos 1, 0.98 and -1 from the image: the first two pass 0.5, the third does not."""
    clf = ZeroShotClassifier.load(siglip_bundle, backend="onnxruntime", labels=None)
    img = np.full((32, 32, 3), 200, dtype=np.uint8)
    e = clf.embed_images([img])[0][0]
    other = np.random.default_rng(1).normal(size=e.shape).astype(np.float32)
    other -= (other @ e) * e
    near = 0.98 * e + np.sqrt(1 - 0.98**2) * other / np.linalg.norm(other)
    from edgeclip.runtime.labels import Labels

    clf._labels = Labels("two", ["same", "near", "opposite"], np.stack([e, near, -e]).astype(np.float32))
    (r,) = clf.classify([img], threshold=0.5)
    assert [label for label, _ in r.predictions] == ["same", "near"]


def test_multi_label_cli_json_names_the_rule(siglip_bundle: Path, tmp_path: Path) -> None:
    img = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.full((20, 30, 3), 90, dtype=np.uint8)).save(img)
    proc = run_cli("classify", str(siglip_bundle), str(img), "--multi-label", "--threshold", "0", "--json")
    row = json.loads(proc.stdout)
    assert proc.returncode == 0 and row["scoring"] == "sigmoid" and len(row["predictions"]) == 3


def test_multi_label_on_a_softmax_bundle_is_refused(tiny_bundle: Path) -> None:
    clf = ZeroShotClassifier.load(tiny_bundle, backend="onnxruntime")
    assert clf.scoring.rule == "softmax"
    with pytest.raises(ConfigError, match="multi-label"):
        clf.classify([np.zeros((8, 8, 3), dtype=np.uint8)], threshold=0.5)


def test_softmax_rule_sums_to_one_and_unknown_rule_is_refused() -> None:
    p = Scoring("softmax", 100.0).probabilities(np.array([0.2, 0.25, -0.1], dtype=np.float32))
    assert abs(float(p.sum()) - 1.0) < 1e-6
    with pytest.raises(BundleError, match="unknown"):
        scoring_from_manifest({"scoring": {"rule": "tanh"}}, 10.0)
    with pytest.raises(BundleError, match="logit_bias"):
        scoring_from_manifest({"scoring": {"rule": "sigmoid"} | {"logit_bias": float("nan")}}, 10.0)
    assert scoring_from_manifest({}, 10.0).rule == "softmax"  # bundles written before the rule was recorded
