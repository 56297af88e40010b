"""Retrieval recall@k (train/zeroshot.py) on hand-built cases whose answers are known by construction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeclip.bundle import PreprocessConfig
from edgeclip.data.tasks import retrieval_pairs
from edgeclip.model.clip import create_model
from edgeclip.model.tokenizer import train_tokenizer
from edgeclip.runtime.tokenizer import TextTokenizer
from edgeclip.train.transforms import eval_transform
from edgeclip.train.zeroshot import recall_at_k, retrieval

N = 12


def _embeddings(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image embeddings whose dot product with one-hot caption embeddings is `scores`."""
    return scores.astype(np.float32), np.eye(len(scores), dtype=np.float32)


def test_recall_at_k_when_the_positive_of_query_i_has_i_candidates_above_it() -> None:
    # image i scores 0.9 against captions j < i, 0.5 against its own, 0.1 against j > i: its
    # caption ranks i-th (0 = first). Caption j is beaten by images i > j: it ranks (N-1-j)-th.
    lower = np.tril(np.full((N, N), 0.9), k=-1)
    upper = np.triu(np.full((N, N), 0.1), k=1)
    img, txt = _embeddings(lower + upper + 0.5 * np.eye(N))
    got = recall_at_k(img @ txt.T)
    # ranks 0..11 in both directions: recall@k = k/12
    want = {f"{d}_r{k}": k / N for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
    assert got == pytest.approx(want, abs=1e-12)


def test_recall_at_k_directions_are_not_swapped() -> None:
    # every image finds its caption first, except image 0, which scores every other caption
    # higher than its own (rank 11). Seen from the captions: caption 0 still ranks first, and
    # every other caption j has image 0 above its own image (rank 1).
    scores = np.full((N, N), 0.1) + 0.4 * np.eye(N)
    scores[0, 1:] = 0.9
    img, txt = _embeddings(scores)
    got = recall_at_k(img @ txt.T)
    assert got == pytest.approx({
        "image_to_text_r1": 11 / N, "image_to_text_r5": 11 / N, "image_to_text_r10": 11 / N,
        "text_to_image_r1": 1 / N, "text_to_image_r5": 1.0, "text_to_image_r10": 1.0,
    }, abs=1e-12)


def test_perfect_and_reversed_retrieval() -> None:
    assert set(recall_at_k(np.eye(N)).values()) == {1.0}
    # the positive scored lowest everywhere: rank N-1 = 11, outside the top 10
    assert set(recall_at_k(1.0 - np.eye(N)).values()) == {0.0}


def test_retrieval_scores_images_against_captions_through_the_model(tmp_path: Path) -> None:
    """retrieval() wires the model's embeddings into recall_at_k the right way round."""
    pairs = retrieval_pairs("builtin:shapes", image_size=32, size=40, seed=0)
    assert pairs is not None
    images, captions = pairs
    tok, tok_cfg = train_tokenizer(captions, 512, 16)
    tok.save(str(tmp_path / "tokenizer.json"))
    tokenize = TextTokenizer(tmp_path / "tokenizer.json", tok_cfg)
    transform = eval_transform(PreprocessConfig(image_size=32))
    torch.manual_seed(0)
    model = create_model("test-tiny").train()

    got = retrieval(model, tokenize, transform, images, captions)
    assert model.training  # restored after the eval-mode pass
    with torch.no_grad():
        model.eval()
        img = F.normalize(model.encode_image(torch.stack([transform(im) for im in images])), dim=-1)
        txt = F.normalize(model.encode_text(torch.from_numpy(tokenize(captions))), dim=-1)
    want = recall_at_k((img @ txt.T).numpy())
    # the case must tell the directions apart, or a swap would pass
    assert [want[f"image_to_text_r{k}"] for k in (1, 5, 10)] != [want[f"text_to_image_r{k}"] for k in (1, 5, 10)]
    assert got == pytest.approx(want, abs=1e-9)
