"""Zero-shot evaluation with the same label-embedding code the export uses."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from edgeclip.model.clip import CLIP
from edgeclip.runtime.labels import label_embeddings
from edgeclip.runtime.preprocess import ImageInput
from edgeclip.train.data import ZeroShotTask


@torch.no_grad()
def encode_texts(model: CLIP, tokenize: Callable[[list[str]], np.ndarray], texts: list[str]) -> np.ndarray:
    ids = torch.from_numpy(tokenize(texts))
    feats = torch.nn.functional.normalize(model.encode_text(ids), dim=-1)
    return feats.float().numpy()


@torch.no_grad()
def encode_images(
    model: CLIP, transform: Callable[[ImageInput], torch.Tensor], images: list[ImageInput], batch_size: int = 128
) -> np.ndarray:
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.stack([transform(im) for im in images[i : i + batch_size]])
        out.append(torch.nn.functional.normalize(model.encode_image(x), dim=-1).float().numpy())
    return np.concatenate(out)


def evaluate(
    model: CLIP,
    tokenize: Callable[[list[str]], np.ndarray],
    transform: Callable[[ImageInput], torch.Tensor],
    tasks: list[ZeroShotTask],
) -> dict[str, float]:
    """Zero-shot top-1 per task, as {task name: accuracy in [0, 1]}."""
    was_training = model.training
    model.eval()
    results: dict[str, float] = {}
    image_cache: dict[int, np.ndarray] = {}
    for task in tasks:
        key = id(task.images)
        if key not in image_cache:  # tasks over the same images share one forward pass
            image_cache[key] = encode_images(model, transform, list(task.images))
        labels = label_embeddings(task.classes, task.templates, lambda t: encode_texts(model, tokenize, t))
        pred = (image_cache[key] @ labels.T).argmax(axis=1)
        results[task.name] = float((pred == np.asarray(task.targets)).mean())
    model.train(was_training)
    return results
