"""Loading never executes code; broken safetensors are refused with CheckpointError."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from edgeclip.errors import CheckpointError
from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.train.state import STATE, list_checkpoints, load_state
from tests.conftest import run_cli


class Payload:
    """Creates `marker` if unpickled by an unsafe (full pickle) load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _evil(path: Path, marker: Path, writer: str) -> None:
    obj = {"step": 3, "optimizer": {"state": {}}, "evil": Payload(marker)}
    if writer == "torch.save":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=int(writer[-1])))


@pytest.fixture()
def run_copy(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "run"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle-2", "pickle-5"])
def test_train_state_with_code_is_refused_never_run(run_copy: Path, tmp_path: Path, writer: str,
                                                    record_property: Any) -> None:
    marker = tmp_path / "pwned"
    step = list_checkpoints(run_copy)[-1][1]
    _evil(step / STATE, marker, writer)
    with pytest.raises(CheckpointError, match="refused or corrupt"):
        load_state(step)
    record_property("inputs", 1)
    record_property("code_executed", int(marker.exists()))
    assert not marker.exists()


def test_resume_from_a_train_state_with_code_fails_cleanly(run_copy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _evil(list_checkpoints(run_copy)[-1][1] / STATE, marker, "torch.save")
    proc = run_cli("train", "--resume", "latest", "--out", str(run_copy), "--steps", "40", "--no-progress")
    assert proc.returncode == 1 and proc.stderr.startswith("Error:") and "Traceback" not in proc.stderr, proc.stderr
    assert not marker.exists()


def test_import_of_a_torch_saved_payload_fails_cleanly(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _evil(tmp_path / "evil.pt", marker, "torch.save")
    proc = run_cli("import", str(tmp_path / "evil.pt"), "--out", str(tmp_path / "ck"))
    assert proc.returncode == 1 and proc.stderr.startswith("Error:") and "Traceback" not in proc.stderr, proc.stderr
    assert not marker.exists() and not (tmp_path / "ck").exists()


def _split(raw: bytes) -> tuple[dict[str, Any], bytes]:
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(header: Any, body: bytes) -> bytes:
    j = json.dumps(header).encode()
    return struct.pack("<Q", len(j)) + j + body


def _edit_tensor(fn: Callable[[dict[str, Any]], None]) -> Callable[[bytes], bytes]:
    def edit(raw: bytes) -> bytes:
        header, body = _split(raw)
        first = next(k for k in header if k != "__metadata__")
        fn(header[first])
        return _join(header, body)

    return edit


SAFETENSORS: dict[str, Callable[[bytes], bytes]] = {
    "offset beyond the end": _edit_tensor(lambda t: t.update(data_offsets=[0, 10**9])),
    "offsets reversed": _edit_tensor(lambda t: t.update(data_offsets=[10, 5])),
    "offset negative": _edit_tensor(lambda t: t.update(data_offsets=[-1, 5])),
    "offsets a string": _edit_tensor(lambda t: t.update(data_offsets="0,4")),
    "shape huge": _edit_tensor(lambda t: t.update(shape=[10**6, 10**6])),
    "dtype unknown": _edit_tensor(lambda t: t.update(dtype="Q99")),
    "dtype size mismatch": _edit_tensor(lambda t: t.update(dtype="F16")),
    "truncated data": lambda raw: raw[:-100],
    "truncated header": lambda raw: raw[: 8 + struct.unpack("<Q", raw[:8])[0] // 2],
    "length prefix only": lambda raw: raw[:8],
    "empty file": lambda raw: b"",
    "header length 2**62": lambda raw: struct.pack("<Q", 2**62) + raw[8:],
    "header length 100 MB": lambda raw: struct.pack("<Q", 100_000_000) + raw[8:],
    "header not JSON": lambda raw: struct.pack("<Q", 16) + b"x" * 16 + raw[8:],
    "header a list": lambda raw: _join([1, 2], b""),
    "header deeply nested": lambda raw: struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("case", list(SAFETENSORS))
def test_broken_safetensors_are_refused(case: str, tiny_checkpoint: Path, tmp_path: Path,
                                        record_property: Any) -> None:
    ck = tmp_path / "ck"
    ck.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(tiny_checkpoint / name, ck / name)
    raw = (tiny_checkpoint / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(SAFETENSORS[case](raw))
    record_property("inputs", 1)
    try:
        load_checkpoint(ck)
    except CheckpointError:
        record_property("crashes", 0)
        return
    except Exception as e:
        record_property("crashes", 1)
        raise AssertionError(f"untyped {type(e).__name__}: {e}") from e
    raise AssertionError("loaded a broken safetensors file")
