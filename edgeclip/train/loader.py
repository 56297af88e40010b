"""Batches for the trainer, addressed by global sample position so that a run resumed at
step N sees exactly the samples an uninterrupted run would have seen.

Sample p of the stream is a pure function of (seed, p): which source (weighted choice when
several are mixed), which item (a fresh permutation per epoch for a single source), and the
augmentation. Rank r of W takes positions [step*B*W + r*B, step*B*W + (r+1)*B). Worker
processes therefore change nothing but speed.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from edgeclip.bundle import PreprocessConfig
from edgeclip.data.spec import CaptionDataset
from edgeclip.errors import DataError, EdgeclipError
from edgeclip.runtime.preprocess import load_image, resize_crop

CROP_SCALE = (0.9, 1.0)  # "scale near 1": CLIP's captions describe the whole image
CROP_RATIO = (3 / 4, 4 / 3)


def random_resized_crop(img: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """Crop a random area fraction in CROP_SCALE with aspect in CROP_RATIO, resize to size^2."""
    w, h = img.size
    for _ in range(10):
        area = w * h * rng.uniform(*CROP_SCALE)
        ratio = float(np.exp(rng.uniform(np.log(CROP_RATIO[0]), np.log(CROP_RATIO[1]))))
        cw, ch = round(np.sqrt(area * ratio)), round(np.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + cw, top + ch))
    return resize_crop(img, PreprocessConfig(image_size=size))


class PositionDataset(Dataset[tuple[np.ndarray | None, str]]):
    """Global position -> (uint8 HxWx3 image or None if undecodable, caption)."""

    def __init__(self, sources: Sequence[CaptionDataset], weights: Sequence[float] | None, seed: int,
                 preprocess: PreprocessConfig, augment: bool) -> None:
        self.sources = list(sources)
        w = np.asarray(weights if weights else [len(s) for s in sources], dtype=np.float64)
        self.cum = np.cumsum(w / w.sum())
        self.seed, self.pre, self.augment = seed, preprocess, augment
        self._perm: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return 2**62  # an endless stream; the sampler decides how far to go

    def _locate(self, pos: int) -> tuple[CaptionDataset, int]:
        if len(self.sources) == 1:  # epochs without replacement
            src = self.sources[0]
            epoch, offset = divmod(pos, len(src))
            if epoch not in self._perm:
                self._perm = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(src))}
            return src, int(self._perm[epoch][offset])
        rng = np.random.default_rng([self.seed, pos, 7])  # mixed sources: weighted, with replacement
        src = self.sources[int(np.searchsorted(self.cum, rng.random(), side="right").clip(0, len(self.sources) - 1))]
        return src, int(rng.integers(0, len(src)))

    def __getitem__(self, pos: int) -> tuple[np.ndarray | None, str]:
        src, index = self._locate(pos)
        image, caption = src[index]
        try:
            img = load_image(image)
        except EdgeclipError:
            return None, caption  # counted and dropped by the collate function
        if self.augment:
            img = random_resized_crop(img, self.pre.image_size, np.random.default_rng([self.seed, pos, 1]))
        else:
            img = resize_crop(img, self.pre)
        return np.asarray(img, dtype=np.uint8), caption


class StepSampler(Sampler[list[int]]):
    """Yields, for steps start..end-1, this rank's list of global positions."""

    def __init__(self, start: int, end: int, batch: int, rank: int, world: int) -> None:
        self.start, self.end, self.batch, self.rank, self.world = start, end, batch, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.end):
            base = step * self.batch * self.world + self.rank * self.batch
            yield list(range(base, base + self.batch))

    def __len__(self) -> int:
        return self.end - self.start


def collate(items: list[tuple[np.ndarray | None, str]]) -> dict[str, Any]:
    good = [(im, c) for im, c in items if im is not None]
    return {
        "images": torch.from_numpy(np.stack([im for im, _ in good])) if good else None,
        "captions": [c for _, c in good],
        "skipped": len(items) - len(good),
    }


def _worker_init(worker_id: int) -> None:
    # the sample RNG is derived from positions; this only keeps torch's own RNG distinct
    torch.manual_seed(torch.initial_seed() % 2**31 + worker_id)
    torch.set_num_threads(1)


def make_loader(dataset: PositionDataset, start_step: int, steps: int, batch: int, rank: int, world: int,
                workers: int, pin_memory: bool = False) -> DataLoader[Any]:
    return DataLoader(
        dataset, batch_sampler=StepSampler(start_step, steps, batch, rank, world), collate_fn=collate,
        num_workers=workers, worker_init_fn=_worker_init if workers else None,
        persistent_workers=False, prefetch_factor=4 if workers else None, pin_memory=pin_memory,
    )


def normalize_batch(images: torch.Tensor, pre: PreprocessConfig) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W], (x/255 - mean)/std; same arithmetic as the
    runtime's numpy path. Runs where `images` is: the trainer moves the uint8 batch (4x fewer
    bytes) to the GPU first."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    mean, std = _channel_stats(tuple(pre.mean), tuple(pre.std), images.device)
    return (x - mean) / std


@functools.lru_cache(maxsize=8)
def _channel_stats(mean: tuple[float, ...], std: tuple[float, ...],
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as [1, 3, 1, 1] tensors on `device`, made once: building them from Python
    lists every step would be a copy from pageable memory, which makes a CUDA step wait."""
    def channels(v: tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    return channels(mean), channels(std)


class StreamDataset(IterableDataset[tuple[np.ndarray | None, str]]):
    """WebDataset shards as an endless stream for this rank: epoch after epoch, shards
    shuffled per epoch and dealt by rank then worker (see edgeclip.data.shards)."""

    def __init__(self, source: Any, seed: int, preprocess: PreprocessConfig, augment: bool, rank: int,
                 world: int) -> None:
        self.source, self.seed, self.pre, self.augment = source, seed, preprocess, augment
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[tuple[np.ndarray | None, str]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        epoch = 0
        while True:
            n = 0
            for n, (data, caption) in enumerate(self.source.samples(
                    epoch, rank=self.rank, world_size=self.world, worker=worker, num_workers=workers), start=1):
                try:
                    img = load_image(data)
                except EdgeclipError:
                    yield None, caption
                    continue
                if self.augment:
                    img = random_resized_crop(img, self.pre.image_size,
                                              np.random.default_rng([self.seed, epoch, self.rank, worker, n]))
                else:
                    img = resize_crop(img, self.pre)
                yield np.asarray(img, dtype=np.uint8), caption
            if n == 0 and epoch == 0:
                raise DataError("the WebDataset yielded no usable sample for this rank/worker",
                                fix="check the shards (and use at least as many shards as ranks x workers)")
            epoch += 1


def make_stream_loader(dataset: StreamDataset, start_step: int, steps: int, batch: int,
                       workers: int, pin_memory: bool = False) -> Iterator[dict[str, Any]]:
    """Batches start_step..steps-1 of the stream; resuming replays (and drops) earlier batches,
    which keeps the data position exact for the same number of workers."""
    loader = DataLoader(dataset, batch_size=batch, collate_fn=collate, num_workers=workers,
                        worker_init_fn=_worker_init if workers else None, pin_memory=pin_memory)
    return itertools.islice(iter(loader), start_step, steps)
