"""WebDataset tar shards, streamed: 'shards/{000..099}.tar' (brace-expanded), several patterns
joined by '::'. A sample is the members that share a key; the key ends at the first dot of the
file name, as in the `webdataset` package ('dir/000123.seg.jpg' -> key 'dir/000123', field
'seg.jpg'). The image is the field named by the first of IMAGE_SUFFIXES present; the caption the
'txt' or 'caption' field, else the first of CAPTION_KEYS in a 'json' field.

Broken samples are skipped and counted in `skipped` (a Counter by reason), never raised: one bad
sample in a million must not stop a run. The reader is tarfile in streaming mode (each member read
once, in order, as a remote pipe would be); importing `webdataset` itself would pull torch into
torch-free calibration, so only its braceexpand dependency is used.
"""

from __future__ import annotations

import json
import os
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeclip._deps import require
from edgeclip.data.images import IMAGE_SUFFIXES, is_decodable
from edgeclip.data.tables import CAPTION_KEYS
from edgeclip.errors import ConfigError, DataError

__all__ = ["Sample", "WebDatasetSource", "is_webdataset", "split_key"]

_IMAGE_FIELDS = tuple(s.lstrip(".") for s in IMAGE_SUFFIXES)
_TEXT_FIELDS = ("txt", "caption")


def is_webdataset(spec: str) -> bool:
    """True for tar shards: 'x.tar', 'x.tar.gz', 'x.tgz', or a brace pattern like 'shards/{000..099}.tar'."""
    low = spec.lower()
    return low.endswith((".tar", ".tar.gz", ".tgz")) or ("{" in low and ".tar" in low)


def split_key(member_name: str) -> tuple[str, str]:
    """(key, field): the key ends at the first dot of the file name; the field is lower-cased."""
    slash = member_name.rfind("/")
    dot = member_name.find(".", slash + 1)
    if dot < 0:
        return member_name, ""
    return member_name[:dot], member_name[dot + 1 :].lower()


@dataclass(frozen=True)
class Sample:
    key: str  # '<shard file name>/<key in the shard>' (the shard's path if names repeat): unique across shards
    image: bytes
    caption: str  # "" when the source was read with require_caption=False and the sample has none


class WebDatasetSource:
    """Tar shards, iterable only. `require_caption=False` (calibration) keeps samples without a caption."""

    def __init__(self, urls: str, *, seed: int = 0, require_caption: bool = True) -> None:
        braceexpand = require("braceexpand", extra="train", purpose="expanding WebDataset shard patterns")
        self.urls, self.seed, self.require_caption = urls, seed, require_caption
        # "~" is expanded as in every other --data path (a quoted brace pattern keeps it from the shell)
        self.shards: list[str] = [os.path.expanduser(s) for part in urls.split("::")
                                  for s in braceexpand.braceexpand(part.strip())]
        if not self.shards:
            raise DataError(f"WebDataset '{urls}' is empty", fix="give at least one .tar shard")
        missing = [s for s in self.shards if not Path(s).is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(f"WebDataset shard not found: {missing[0]}{more}", fix="check the path and brace pattern")
        self.skipped: Counter[str] = Counter()
        # keys name the shard by its file name, which stays the same wherever the data lives; by the
        # path as given only where two shards share a file name ('cc3m/00000.tar::cc12m/00000.tar')
        names = Counter(Path(s).name for s in self.shards)
        self._key_prefix = {s: (Path(s).name if names[Path(s).name] == 1 else s) + "/" for s in self.shards}

    def shards_for(self, epoch: int, *, rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1
                   ) -> list[str]:
        """This (rank, worker)'s shards for an epoch: a seeded shuffle, dealt by node then by worker.

        Across all (rank, worker) pairs every shard appears exactly once per epoch.
        """
        if not (0 <= rank < world_size and 0 <= worker < num_workers):
            raise ConfigError(f"need 0 <= rank < world_size and 0 <= worker < num_workers, "
                              f"got rank={rank}/{world_size}, worker={worker}/{num_workers}")
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        return [self.shards[int(k)] for k in order[rank::world_size][worker::num_workers]]

    def samples(self, epoch: int, *, rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1
                ) -> Iterator[tuple[bytes, str]]:
        """Yield (raw image bytes, caption) from this (rank, worker)'s shards for `epoch`, in shard order."""
        for shard in self.shards_for(epoch, rank=rank, world_size=world_size, worker=worker, num_workers=num_workers):
            for s in self.read_shard(shard):
                yield s.image, s.caption

    def all_samples(self) -> Iterator[Sample]:
        """Every sample of every shard, shards in the order given (no shuffle)."""
        for shard in self.shards:
            yield from self.read_shard(shard)

    def read_shard(self, shard: str) -> Iterator[Sample]:
        prefix = self._key_prefix.get(shard, Path(shard).name + "/")
        key: str | None = None
        files: dict[str, bytes] = {}
        try:
            with tarfile.open(shard, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    k, field = split_key(member.name)
                    if k != key:
                        if key is not None:
                            yield from self._finish(prefix + key, files)
                        key, files = k, {}
                    f = tar.extractfile(member)
                    assert f is not None  # regular files always have data
                    files[field] = f.read()
                    if len(files[field]) != member.size:
                        raise tarfile.ReadError("unexpected end of data")
        except (tarfile.TarError, OSError, EOFError, zlib.error):
            # a truncated or corrupt shard: the sample in progress is lost, the rest of the shard too
            self.skipped["truncated"] += 1
            return
        if key is not None:
            yield from self._finish(prefix + key, files)

    def _finish(self, key: str, files: dict[str, bytes]) -> Iterator[Sample]:
        image = next((files[e] for e in _IMAGE_FIELDS if e in files), None)
        if image is None:
            self.skipped["no_image"] += 1
            return
        caption, problem = _caption(files)
        if problem and self.require_caption:
            self.skipped[problem] += 1
            return
        if not is_decodable(image):
            self.skipped["undecodable_image"] += 1
            return
        yield Sample(key, image, caption)


def _caption(files: dict[str, bytes]) -> tuple[str, str | None]:
    """(caption, why there is none): a reason only when the caption is missing or unreadable."""
    field = next((e for e in _TEXT_FIELDS if e in files), None)
    if field is not None:
        try:
            text = files[field].decode("utf-8").strip()
        except UnicodeDecodeError:
            return "", "bad_caption"
    elif "json" in files:
        try:
            meta = json.loads(files["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "", "bad_json"
        value = next((meta[k] for k in CAPTION_KEYS if k in meta), None) if isinstance(meta, dict) else None
        text = value.strip() if isinstance(value, str) else ""
    else:
        text = ""
    return text, None if text else "no_caption"
