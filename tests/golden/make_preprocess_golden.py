"""Regenerate tests/golden/preprocess.npz: the runtime's preprocessing of fixed inputs.

    .venv/bin/python tests/golden/make_preprocess_golden.py

Inputs: scikit-learn's two photographs (china.jpg, flower.jpg) and one generated RGBA image of an
odd size; 48 px, OpenAI mean/std. Regenerate only when preprocessing changes on purpose, and say
why in the commit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SIZE = 48


def inputs() -> dict[str, object]:
    import sklearn.datasets

    root = Path(sklearn.datasets.__file__).parent / "images"
    rng = np.random.default_rng(123)
    rgba = Image.fromarray(rng.integers(0, 256, (61, 143, 4), dtype=np.uint8), "RGBA")
    return {"china": root / "china.jpg", "flower": root / "flower.jpg", "rgba_61x143": rgba}


def main() -> None:
    from edgeclip.bundle import PreprocessConfig
    from edgeclip.runtime.preprocess import preprocess

    cfg = PreprocessConfig(image_size=SIZE)
    arrays = {name: preprocess(src, cfg) for name, src in inputs().items()}  # type: ignore[arg-type]
    np.savez_compressed(HERE / "preprocess.npz", **arrays)
    print(f"wrote {HERE / 'preprocess.npz'}: {sorted(arrays)}")


if __name__ == "__main__":
    main()
