"""Embedding-space verdicts between two manifests, built here record by record: what re-indexes,
what counts as the very same artifact, and the cosine bound from the triangle inequality for angles
(the angle between two unit vectors is a metric on the sphere)."""

from __future__ import annotations

import math

import pytest

from edgeclip.bundle import Artifact, Manifest, PreprocessConfig, TensorSpec, TokenizerConfig
from edgeclip.records import Measured, Validation
from edgeclip.runtime.spaces import NEW_SPACE, SAME, SAME_SPACE_OTHER_ARTIFACT, UNKNOWN, compare, cosine_bound


def art(precision: str, space: str | None, sha: str = "a" * 64, cos: float | None = 0.99999,
        heldout: float | None = None) -> Artifact:
    held = None if heldout is None else Measured(heldout_size=64, cosine_min=heldout, cosine_p1=heldout,
                                                  cosine_mean=heldout)
    return Artifact("image", "onnx", precision, f"image/onnx-{precision}", {f"image/onnx-{precision}/m.onnx": sha},
                    [TensorSpec("pixel_values", "float32", ("batch_size", 3, 32, 32))],
                    [TensorSpec("image_embeds", "float32", ("batch_size", 16))],
                    validation=Validation(cosine_min=cos, heldout=held), embedding_space=space)


def manifest(*artifacts: Artifact) -> Manifest:
    return Manifest("m", {}, 16, 100.0, PreprocessConfig(image_size=32), TokenizerConfig(), "0" * 64,
                    artifacts=list(artifacts))


def test_the_same_key_with_other_files_is_not_the_same_artifact() -> None:
    (v,) = compare(manifest(art("fp32", "s1", "a" * 64)), manifest(art("fp32", "s1", "b" * 64)))
    assert v.verdict == SAME_SPACE_OTHER_ARTIFACT and not v.reindex
    assert "rebuilt artifact" in v.describe()
    (v,) = compare(manifest(art("fp32", "s1")), manifest(art("fp32", "s1")))
    assert v.verdict == SAME and not v.reindex


@pytest.mark.parametrize(("old", "new", "verdict"), [("s1", "s2", NEW_SPACE), (None, "s1", UNKNOWN),
                                                     ("s1", None, UNKNOWN), (None, None, UNKNOWN)])
def test_another_or_an_unrecorded_space_means_reindex(old: str | None, new: str | None, verdict: str) -> None:
    (v,) = compare(manifest(art("fp32", old)), manifest(art("fp32", new)))
    assert v.verdict == verdict and v.reindex and v.to_dict()["reindex"] is True
    assert v.cosine_at_least is None


def test_every_old_artifact_is_judged_against_every_new_one() -> None:
    old = manifest(art("fp32", "s1"), art("int8", "s1", "c" * 64, heldout=0.996))
    new = manifest(art("fp32", "s1"), art("fp16", "s1", "d" * 64, cos=0.9995))
    pairs = {(v.old, v.new): v.verdict for v in compare(old, new)}
    assert pairs == {("image/onnx-fp32", "image/onnx-fp32"): SAME,
                     ("image/onnx-fp32", "image/onnx-fp16"): SAME_SPACE_OTHER_ARTIFACT,
                     ("image/onnx-int8", "image/onnx-fp32"): SAME_SPACE_OTHER_ARTIFACT,
                     ("image/onnx-int8", "image/onnx-fp16"): SAME_SPACE_OTHER_ARTIFACT}


def test_cosine_bound_adds_the_angles_and_prefers_heldout_figures() -> None:
    # INT8 is judged on held-out inputs (0.996), not on its probes (0.9999); fp16 on its probes
    int8, fp16 = art("int8", "s1", heldout=0.996, cos=0.9999), art("fp16", "s1", cos=0.9995)
    want = math.cos(math.acos(0.996) + math.acos(0.9995))
    assert cosine_bound(int8, fp16) == pytest.approx(want, abs=1e-12)
    assert want < min(0.996, 0.9995)  # two errors can point opposite ways
    assert cosine_bound(fp16, art("fp32", "s1", cos=None)) is None  # only spec-checked: no bound
    assert cosine_bound(art("a", "s", cos=-1.0), art("b", "s", cos=-1.0)) == pytest.approx(-1.0)  # capped at pi
