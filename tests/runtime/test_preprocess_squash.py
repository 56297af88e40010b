"""SigLIP's preprocessing from the manifest: squash resize, interpolation, rescale, mean/std 0.5.

Reference: transformers' SiglipImageProcessor (its PIL backend, as torchvision is not installed
here) on real photos (scikit-learn's sample JPEGs) cropped to several aspect ratios.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from edgeclip.bundle import PreprocessConfig
from edgeclip.errors import BundleError
from edgeclip.runtime.preprocess import preprocess
from edgeclip.train.transforms import eval_transform

transformers = pytest.importorskip("transformers")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

# the issue's bound against transformers' processor
TOL = 1e-5
ASPECTS = {"4:3": (640, 427), "3:4": (320, 427), "16:9": (640, 360), "1:3": (142, 427), "square": (427, 427),
           "tiny": (37, 23)}
SQUASH = PreprocessConfig(image_size=64, resize="squash", crop="none", interpolation="bicubic",
                          mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def photos() -> dict[str, bytes]:
    """JPEG bytes of real photos at each aspect ratio (a crop of the 640x427 sample)."""
    out = {}
    for k, (name, (w, h)) in enumerate(ASPECTS.items()):
        img = Image.fromarray(sklearn_datasets.load_sample_images().images[k % 2]).crop((0, 0, w, h))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out[name] = buf.getvalue()
    return out


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return photos()


@pytest.mark.parametrize("interpolation,resample", [("bicubic", 3), ("bilinear", 2)])
def test_squash_equals_siglip_image_processor(images: dict[str, bytes], interpolation: str, resample: int) -> None:
    cfg = PreprocessConfig(**{**vars(SQUASH), "interpolation": interpolation})
    proc = transformers.SiglipImageProcessorPil(size={"height": 64, "width": 64}, resample=resample)
    for name, data in images.items():
        ref = proc(images=Image.open(io.BytesIO(data)).convert("RGB"), return_tensors="np")["pixel_values"][0]
        ours = preprocess(data, cfg)
        assert ours.shape == ref.shape == (3, 64, 64)
        assert np.abs(ours - ref).max() <= TOL, name


def test_squash_and_crop_differ_on_a_4_3_photo(images: dict[str, bytes]) -> None:
    """The bug users hit: shortest-side + crop in place of squash."""
    crop = PreprocessConfig(**{**vars(SQUASH), "resize": "shortest", "crop": "center"})
    assert np.abs(preprocess(images["4:3"], SQUASH) - preprocess(images["4:3"], crop)).max() > 0.5


def test_trainer_eval_transform_equals_runtime(images: dict[str, bytes]) -> None:
    transform = eval_transform(SQUASH)
    for data in images.values():
        np.testing.assert_allclose(transform(data).numpy(), preprocess(data, SQUASH), atol=1e-6)
    assert isinstance(transform(images["1:3"]), torch.Tensor)


def test_rescale_factor_is_applied(images: dict[str, bytes]) -> None:
    """rescale_factor 1 (a processor with do_rescale off) leaves 0..255 before mean/std."""
    raw = PreprocessConfig(**{**vars(SQUASH), "rescale_factor": 1.0, "mean": (0.0,) * 3, "std": (1.0,) * 3})
    x = preprocess(images["square"], raw)
    assert x.max() > 100 and np.allclose(x, np.round(x))


@pytest.mark.parametrize("bad", [dict(resize="squash", crop="center"), dict(resize="stretch"), dict(rescale_factor=0)])
def test_unknown_modes_are_refused_when_the_manifest_is_read(bad: dict[str, object]) -> None:
    d = {**vars(SQUASH), **bad}
    d["mean"], d["std"] = list(d["mean"]), list(d["std"])  # type: ignore[call-overload]
    with pytest.raises(BundleError):
        PreprocessConfig.from_dict(d)
