"""Batches for the trainer, addressed by global sample position so that a run resumed at
step N sees exactly the samples an uninterrupted run would have seen.

Sample p of the stream is a pure function of (seed, p): which source (weighted choice when
several are mixed), which item (a fresh permutation per epoch for a single source), and the
augmentation. Rank r of W takes positions [step*B*W + r*B, step*B*W + (r+1)*B). Worker
processes therefore change nothing but speed.

WebDataset shards have no positions: one is streamed (`StreamDataset`), and shards mixed with other
sources are drawn by weight per sample (`MixedStreamDataset`). A resumed stream replays and drops
the batches before its step, which is exact for the same number of workers.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from typing import Any, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from edgeclip.bundle import PreprocessConfig
from edgeclip.data.images import ImageLike
from edgeclip.data.shards import WebDatasetSource, is_webdataset
from edgeclip.data.spec import CaptionDataset, open_source, open_stream
from edgeclip.errors import ConfigError, DataError, EdgeclipError
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
    x = images.permute(0, 3, 1, 2).float().div_(1.0 / pre.rescale_factor)  # 255 for the default
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


def _pixels(image: Any, pre: PreprocessConfig, augment: bool, rng_key: list[int]) -> np.ndarray | None:
    """uint8 [S, S, 3], or None when the image cannot be decoded (the collate function counts it)."""
    try:
        img = load_image(image)
    except EdgeclipError:
        return None
    img = random_resized_crop(img, pre.image_size, np.random.default_rng(rng_key)) if augment else resize_crop(img, pre)
    return np.asarray(img, dtype=np.uint8)


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
                yield _pixels(data, self.pre, self.augment, [self.seed, epoch, self.rank, worker, n]), caption
            if n == 0 and epoch == 0:
                raise DataError("the WebDataset yielded no usable sample for this rank/worker",
                                fix="check the shards (and use at least as many shards as ranks x workers)")
            epoch += 1


class MixedStreamDataset(IterableDataset[tuple[np.ndarray | None, str]]):
    """Indexed and streamed sources mixed by weight, as one endless stream per (rank, worker).

    Sample n of a (rank, worker) comes from source k with probability weights[k] / sum(weights),
    drawn from (seed, rank, worker, n): an indexed source gives a random item, a stream its next
    sample (its shards dealt by rank then worker, epoch after epoch, as `StreamDataset` deals them).
    Replaying the stream from the start (`make_stream_loader`) therefore resumes it exactly.
    """

    def __init__(self, sources: Sequence[CaptionDataset | WebDatasetSource], weights: Sequence[float], seed: int,
                 preprocess: PreprocessConfig, augment: bool, rank: int, world: int) -> None:
        w = np.asarray(weights, dtype=np.float64)
        if len(w) != len(sources) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ConfigError(f"--data-weights must be one non-negative number per --data source, not all 0; "
                              f"got {list(weights)}")
        self.sources, self.cum = list(sources), np.cumsum(w / w.sum())
        self.seed, self.pre, self.augment, self.rank, self.world = seed, preprocess, augment, rank, world

    def _stream(self, source: WebDatasetSource, worker: int, workers: int) -> Iterator[tuple[bytes, str]]:
        epoch = 0
        while True:
            empty = True
            for sample in source.samples(epoch, rank=self.rank, world_size=self.world, worker=worker,
                                         num_workers=workers):
                empty = False
                yield sample
            if empty and epoch == 0:
                raise DataError(f"the WebDataset '{source.urls}' yielded no usable sample for this rank/worker",
                                fix="check the shards (and use at least as many shards as ranks x workers)")
            epoch += 1

    def __iter__(self) -> Iterator[tuple[np.ndarray | None, str]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        streams = {k: self._stream(s, worker, workers) for k, s in enumerate(self.sources)
                   if isinstance(s, WebDatasetSource)}
        for n in itertools.count():
            rng = np.random.default_rng([self.seed, self.rank, worker, n, 7])
            k = int(np.searchsorted(self.cum, rng.random(), side="right").clip(0, len(self.sources) - 1))
            source = self.sources[k]
            image: ImageLike
            if isinstance(source, WebDatasetSource):
                image, caption = next(streams[k])
            else:
                image, caption = source[int(rng.integers(len(source)))]
            yield _pixels(image, self.pre, self.augment, [self.seed, self.rank, worker, n, 1]), caption


TrainingData = Union[PositionDataset, StreamDataset, MixedStreamDataset]


def training_dataset(specs: Sequence[str], weights: Sequence[float] | None, seed: int, preprocess: PreprocessConfig,
                     augment: bool, rank: int, world: int) -> TrainingData:
    """The trainer's samples: by global position when every source is indexed, this rank's share
    of a stream for one WebDataset, and a weighted mix of both kinds otherwise."""
    streamed = [is_webdataset(s) for s in specs]
    if not any(streamed):
        sources = [open_source(s, image_size=preprocess.image_size, seed=seed) for s in specs]
        return PositionDataset(sources, weights, seed, preprocess, augment)
    if len(specs) == 1:
        return StreamDataset(open_stream(specs[0], seed), seed, preprocess, augment, rank, world)
    if weights is None:
        raise ConfigError("mixing WebDataset shards with other sources needs --data-weights (a stream has no length "
                          "to weigh by)", fix="give one weight per --data source, e.g. --data-weights 1,2")
    mixed = [open_stream(s, seed) if st else open_source(s, image_size=preprocess.image_size, seed=seed)
             for s, st in zip(specs, streamed, strict=True)]
    return MixedStreamDataset(mixed, weights, seed, preprocess, augment, rank, world)


def make_stream_loader(dataset: StreamDataset | MixedStreamDataset, start_step: int, steps: int, batch: int,
                       workers: int, pin_memory: bool = False) -> Iterator[dict[str, Any]]:
    """Batches start_step..steps-1 of the stream; resuming replays (and drops) earlier batches,
    which keeps the data position exact for the same number of workers."""
    loader = DataLoader(dataset, batch_size=batch, collate_fn=collate, num_workers=workers,
                        worker_init_fn=_worker_init if workers else None, pin_memory=pin_memory)
    return itertools.islice(iter(loader), start_step, steps)
