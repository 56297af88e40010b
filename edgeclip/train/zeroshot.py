"""Zero-shot evaluation with the same label-embedding code the export uses."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from edgeclip.data.tasks import ZeroShotTask
from edgeclip.model.build import Model
from edgeclip.runtime.labels import label_embeddings
from edgeclip.runtime.preprocess import ImageInput


def _device(model: Model) -> torch.device:
    """Where the model's weights are: evaluation runs there (the trainer evaluates on its own device)."""
    return next(model.parameters()).device


@torch.no_grad()
def encode_texts(model: Model, tokenize: Callable[[list[str]], np.ndarray], texts: list[str]) -> np.ndarray:
    ids = torch.from_numpy(tokenize(texts)).to(_device(model))
    feats = torch.nn.functional.normalize(model.encode_text(ids), dim=-1)
    return feats.float().cpu().numpy()


@torch.no_grad()
def encode_images(
    model: Model, transform: Callable[[ImageInput], torch.Tensor], images: list[ImageInput], batch_size: int = 128
) -> np.ndarray:
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.stack([transform(im) for im in images[i : i + batch_size]]).to(_device(model))
        out.append(torch.nn.functional.normalize(model.encode_image(x), dim=-1).float().cpu().numpy())
    return np.concatenate(out)


def evaluate(
    model: Model,
    tokenize: Callable[[list[str]], np.ndarray],
    transform: Callable[[ImageInput], torch.Tensor],
    tasks: list[ZeroShotTask],
) -> dict[str, float]:
    """Zero-shot accuracy per task: {name: top-1, name_top5: top-5}, fractions in [0, 1]."""
    was_training = model.training
    model.eval()
    results: dict[str, float] = {}
    image_cache: dict[int, np.ndarray] = {}
    for task in tasks:
        key = id(task.images)
        if key not in image_cache:  # tasks over the same images share one forward pass
            image_cache[key] = encode_images(model, transform, list(task.images))
        labels = label_embeddings(task.classes, task.templates, lambda t: encode_texts(model, tokenize, t))
        scores = image_cache[key] @ labels.T
        targets = np.asarray(task.targets)
        results[task.name] = float((scores.argmax(axis=1) == targets).mean())
        top5 = np.argsort(-scores, axis=1)[:, : min(5, scores.shape[1])]
        results[f"{task.name}_top5"] = float((top5 == targets[:, None]).any(axis=1).mean())
    model.train(was_training)
    return results


def retrieval(
    model: Model,
    tokenize: Callable[[list[str]], np.ndarray],
    transform: Callable[[ImageInput], torch.Tensor],
    images: list[ImageInput],
    captions: list[str],
) -> dict[str, float]:
    """Image->text and text->image recall@1/5/10 over matching pairs (pair i is the positive)."""
    was_training = model.training
    model.eval()
    img = encode_images(model, transform, images)
    txt = np.concatenate([encode_texts(model, tokenize, captions[i : i + 256]) for i in range(0, len(captions), 256)])
    model.train(was_training)
    return recall_at_k(img @ txt.T)


def recall_at_k(sim: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """sim[i, j]: score of image i against caption j, pair i the positive. Recall@k in each
    direction: the fraction of queries whose positive is among the k best-scored candidates
    (rank 0 is the best; a tie with the positive does not push it down)."""
    out = {}
    for name, s in (("image_to_text", sim), ("text_to_image", sim.T)):
        rank = (s > np.diag(s)[:, None]).sum(axis=1)  # candidates scored above the positive
        for k in ks:
            out[f"{name}_r{k}"] = float((rank < k).mean())
    return out
