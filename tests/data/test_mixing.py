"""Indexed and streamed sources mixed by weight (issue 14, item 3): `--data a.tar --data b.tar
--data-weights 1,2` and a CSV mixed with shards. The share of each source follows its weight, and a
resumed run sees exactly the batches an uninterrupted one would have seen."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from edgeclip.bundle import PreprocessConfig
from edgeclip.errors import ConfigError
from edgeclip.train.config import TrainConfig
from edgeclip.train.loader import MixedStreamDataset, make_stream_loader, training_dataset
from edgeclip.train.loop import train
from tests.conftest import REPO

PRE = PreprocessConfig(image_size=16)


def _png(k: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (k * 23 % 256, 40, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _shard(path: Path, tag: str, n: int = 6) -> None:
    with tarfile.open(path, "w") as tar:
        for k in range(n):
            for name, data in ((f"{k:04d}.png", _png(k)), (f"{k:04d}.txt", f"{tag} sample {k}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _csv(root: Path, tag: str, n: int = 6) -> Path:
    for k in range(n):
        (root / f"{tag}{k}.png").write_bytes(_png(100 + k))
    table = root / f"{tag}.csv"
    table.write_text("filepath,caption\n" + "".join(f"{tag}{k}.png,{tag} sample {k}\n" for k in range(n)))
    return table


def _share(specs: list[str], weights: list[float], tag: str, n: int = 3000) -> float:
    data = training_dataset(specs, weights, seed=0, preprocess=PRE, augment=False, rank=0, world=1)
    assert isinstance(data, MixedStreamDataset)
    captions = [c for _, c in itertools.islice(iter(data), n)]
    return sum(c.startswith(tag) for c in captions) / n


def _tolerance(p: float, n: int = 3000) -> float:
    return 4 * (p * (1 - p) / n) ** 0.5  # four binomial standard deviations


def test_two_shard_sets_mix_by_weight(tmp_path: Path) -> None:
    _shard(tmp_path / "a.tar", "a")
    _shard(tmp_path / "b.tar", "b")
    share = _share([str(tmp_path / "a.tar"), str(tmp_path / "b.tar")], [1, 2], "b")
    assert abs(share - 2 / 3) < _tolerance(2 / 3)


def test_a_csv_mixes_with_shards_by_weight(tmp_path: Path) -> None:
    _shard(tmp_path / "s.tar", "shard")
    table = _csv(tmp_path, "csv")
    share = _share([str(table), str(tmp_path / "s.tar")], [3, 1], "csv")
    assert abs(share - 3 / 4) < _tolerance(3 / 4)


def test_a_stream_without_weights_is_refused(tmp_path: Path) -> None:
    _shard(tmp_path / "s.tar", "shard")
    table = _csv(tmp_path, "csv")
    with pytest.raises(ConfigError, match="--data-weights") as err:
        training_dataset([str(table), str(tmp_path / "s.tar")], None, 0, PRE, False, 0, 1)
    assert err.value.fix


def _batch_digests(specs: list[str], start: int, workers: int) -> list[list[str]]:
    """Captions + an image hash per batch of the mixed stream from step `start` (of 6)."""
    data = training_dataset(specs, [1, 1], seed=3, preprocess=PRE, augment=True, rank=0, world=1)
    return [[*b["captions"], hashlib.sha256(b["images"].numpy().tobytes()).hexdigest()]  # type: ignore[union-attr]
            for b in make_stream_loader(data, start, 6, 8, workers)]  # type: ignore[arg-type]


def _batches_in_fresh_process(specs: list[str], start: int, workers: int) -> list[list[str]]:
    """Worker processes are forked in a fresh interpreter, as a training run forks them: forked
    inside the long-lived test process (which by then holds OpenVINO's and onnxruntime's thread
    pools from other tests) they left it to crash later in an unrelated test."""
    code = ("import json, sys; from tests.data.test_mixing import _batch_digests; "
            "print(json.dumps(_batch_digests(json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(specs), str(start), str(workers)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_mixed_stream_continues_at_the_same_batch(tmp_path: Path, workers: int) -> None:
    _shard(tmp_path / "s-0.tar", "shard")
    _shard(tmp_path / "s-1.tar", "shard")
    table = _csv(tmp_path, "csv")
    specs = [str(table), str(tmp_path / "s-{0..1}.tar")]
    batches = _batch_digests if workers == 0 else _batches_in_fresh_process
    straight, resumed = batches(specs, 0, workers), batches(specs, 3, workers)
    assert len(straight) == 6 and len(resumed) == 3
    assert straight[3:] == resumed  # the same captions and the same image bytes
    assert straight[3] != straight[4]


def test_training_on_a_mix_resumes_to_the_same_weights(tmp_path: Path) -> None:
    _shard(tmp_path / "s.tar", "shard", n=12)
    table = _csv(tmp_path, "csv", n=12)
    cfg = dict(model="test-tiny", data=[str(table), str(tmp_path / "s.tar")], data_weights=[1.0, 2.0], steps=4,
               batch_size=4, warmup_steps=1, save_every=2, log_every=1, progress=False, tokenizer_samples=12,
               augment=False)
    straight = tmp_path / "straight"
    r = train(TrainConfig(**cfg, out=str(straight)))  # type: ignore[arg-type]
    assert r.steps == 4 and r.samples == 16

    resumed = tmp_path / "resumed"  # the straight run as it was at step 2
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_00000004")
    log = (resumed / "train_log.jsonl").read_text()
    train(TrainConfig(**cfg, out=str(resumed), resume="latest"))  # type: ignore[arg-type]
    appended = [json.loads(x) for x in (resumed / "train_log.jsonl").read_text()[len(log):].splitlines()]
    assert appended[0]["resume"]["from_step"] == 2  # it continued; it did not start again
    assert [r["step"] for r in appended if "loss" in r] == [3, 4]
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k].numpy(), load_file(
        resumed / "checkpoints" / "step_00000002" / "model.safetensors")[k].numpy()) for k in a)
