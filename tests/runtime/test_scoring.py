"""The scoring rules against their papers' formulas, written out here: CLIP's softmax over
logit_scale * cos, SigLIP's per-label sigmoid(logit_scale * cos + logit_bias) (Zhai et al. 2023, eq. 1),
and the rule read back from a manifest's model config."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeclip.errors import BundleError
from edgeclip.runtime import ZeroShotClassifier
from edgeclip.runtime.scoring import Scoring, scoring_from_manifest

COS = [0.31, 0.24, -0.05]


def _softmax(logits: list[float]) -> list[float]:
    e = [math.exp(v) for v in logits]
    return [v / sum(e) for v in e]


def test_softmax_applies_the_logit_scale() -> None:
    # at CLIP's scale 100 a 0.07 cosine gap is a confident answer; without the scale it is a near tie
    got = Scoring("softmax", 100.0).probabilities(np.array(COS, dtype=np.float32))
    np.testing.assert_allclose(got, _softmax([100.0 * float(np.float32(c)) for c in COS]), rtol=1e-9)
    assert got[0] > 0.99


def test_sigmoid_adds_the_bias_per_label() -> None:
    # SigLIP's released models: t = exp(log 10 ... ) ~ 117, b ~ -12.9; here round numbers
    got = Scoring("sigmoid", 10.0, -5.0).probabilities(np.array([1.0, 0.5, -1.0]))
    want = [1 / (1 + math.exp(-(10.0 * c - 5.0))) for c in (1.0, 0.5, -1.0)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] > 0.99 and got[1] == pytest.approx(0.5) and got[2] < 1e-6


def test_sigmoid_stays_finite_at_extreme_logits() -> None:
    got = Scoring("sigmoid", 1e4, -5.0).probabilities(np.array([1.0, -1.0]))
    assert np.isfinite(got).all() and got[0] == 1.0 and 0.0 <= got[1] < 1e-300


def test_a_batch_of_rows_is_scored_row_by_row() -> None:
    """[N, C] cosines (the documented [..., C]): each row is its own image's distribution."""
    cos = np.array([COS, [0.0, 0.4, 0.1]], dtype=np.float32)
    for s in (Scoring("softmax", 50.0), Scoring("sigmoid", 10.0, -3.0)):
        batch = s.probabilities(cos)
        np.testing.assert_allclose(batch, np.stack([s.probabilities(row) for row in cos]), rtol=1e-12)
    np.testing.assert_allclose(Scoring("softmax", 50.0).probabilities(cos).sum(axis=1), [1.0, 1.0], rtol=1e-12)


def test_the_manifest_bias_reaches_the_scores() -> None:
    s = scoring_from_manifest({"scoring": {"rule": "sigmoid", "logit_bias": -5.0}}, 10.0)
    assert (s.rule, s.logit_scale, s.logit_bias) == ("sigmoid", 10.0, -5.0)
    assert s.probabilities(np.array([0.5]))[0] == pytest.approx(0.5)
    assert s.to_dict() == {"rule": "sigmoid", "logit_bias": -5.0}


@pytest.mark.parametrize("bias", [float("inf"), float("-inf"), float("nan"), "-5", True, None])
def test_a_sigmoid_bias_that_is_not_a_finite_number_is_refused(bias: object) -> None:
    """Absent included: a bias of 0 in place of SigLIP's ~-10 would score every label near 1."""
    d: dict[str, object] = {"rule": "sigmoid"} if bias is None else {"rule": "sigmoid", "logit_bias": bias}
    with pytest.raises(BundleError, match="logit_bias"):
        scoring_from_manifest({"scoring": d}, 10.0)


def test_a_softmax_rule_ignores_a_stray_bias() -> None:
    s = scoring_from_manifest({"scoring": {"rule": "softmax", "logit_bias": "n/a"}}, 100.0)
    assert (s.rule, s.logit_bias) == ("softmax", 0.0) and s.to_dict() == {"rule": "softmax"}


def test_multi_label_threshold_is_inclusive(tiny_bundle: Path, tmp_path: Path) -> None:
    """"every label at or above it": a label scoring exactly the threshold is returned. The tiny
    bundle's manifest is given a sigmoid rule (its files, which the manifest pins, are unchanged)."""
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "b.edgeclip"))
    m = json.loads((bundle / "manifest.json").read_text())
    m["model"]["config"]["scoring"] = {"rule": "sigmoid", "logit_bias": -2.0}
    (bundle / "manifest.json").write_text(json.dumps(m))
    clf = ZeroShotClassifier.load(bundle, backend="onnxruntime")
    img = np.full((32, 32, 3), 120, dtype=np.uint8)
    p = clf.scoring.probabilities(clf.label_embeddings @ clf.embed_images([img])[0][0])
    order = np.argsort(-p, kind="stable")
    (r,) = clf.classify([img], threshold=float(p[order[1]]))
    assert [label for label, _ in r.predictions] == [clf.classes[i] for i in order[:2]]
