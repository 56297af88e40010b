from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from edgeclip.errors import CheckpointError
from edgeclip.model.checkpoint import load_checkpoint, read_checkpoint_info


def test_roundtrip_is_exact(tiny_checkpoint: Path) -> None:
    model, info = load_checkpoint(tiny_checkpoint)
    saved = load_file(str(tiny_checkpoint / "model.safetensors"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert info.model.name == "test-tiny"
    assert info.preprocess.image_size == 32
    assert info.tokenizer.context_length == 16
    assert not list(tiny_checkpoint.glob(".*tmp"))  # no temp files left behind


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_weights_that_do_not_fit_the_config_name_the_tensor(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ck = _copy(tiny_checkpoint, tmp_path / "ck")
    cfg = json.loads((ck / "config.json").read_text())
    cfg["model"]["vision_cfg"]["width"] = 64
    cfg["model"]["vision_cfg"]["heads"] = 4
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"with a wrong shape: visual\.[a-z_.0-9]+ \[\d+(, \d+)*\] \(needs "):
        load_checkpoint(ck)


def test_missing_and_extra_tensors(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ck = _copy(tiny_checkpoint, tmp_path / "ck")
    state = load_file(str(ck / "model.safetensors"))
    del state["text_projection"]
    save_file(state, str(ck / "model.safetensors"))
    with pytest.raises(CheckpointError, match="1 missing: text_projection\n  fix: the weights were saved for a differ"):
        load_checkpoint(ck)
    state = load_file(str(tiny_checkpoint / "model.safetensors"))
    state["stray.weight"] = torch.zeros(1)
    save_file(state, str(ck / "model.safetensors"))
    with pytest.raises(CheckpointError, match="tensors do not fit the model config: 1 unexpected: stray.weight\n"):
        load_checkpoint(ck)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint_info(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        read_checkpoint_info(tmp_path / "x")


def test_corrupt_weights_file(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ck = _copy(tiny_checkpoint, tmp_path / "ck")
    (ck / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_checkpoint(ck)
