"""The LiteRT backend on real .tflite files converted by litert-torch: batches through a static batch-1
graph, int32 token ids, options, mismatched manifests, and `auto` on ARM Linux."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeclip.bundle import Artifact, TensorSpec
from edgeclip.errors import ConfigError
from edgeclip.runtime.backends import auto_order
from edgeclip.runtime.backends.base import BackendOptions

pytest.importorskip("ai_edge_litert", reason="the litert backend needs ai-edge-litert (edgeclip[litert])")
pytest.importorskip("litert_torch", reason="building a .tflite needs litert-torch (edgeclip[litert-export])")

from edgeclip.export.litert import convert
from edgeclip.runtime.backends.litert import LiteRTBackend


class Tower(torch.nn.Module):
    """Row-wise like an encoder: ids -> embedding -> pooled at the argmax id, L2-normalised."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(64, 8)
        self.proj = torch.nn.Linear(8, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.emb(ids))
        pooled = x[torch.arange(x.shape[0]), ids.argmax(dim=-1)]
        return torch.nn.functional.normalize(pooled, dim=-1)


@pytest.fixture(scope="module")
def tower(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tower, Path]:
    torch.manual_seed(0)
    module = Tower().eval()
    path = tmp_path_factory.mktemp("litert") / "tower.tflite"
    convert(module, torch.randint(0, 64, (1, 6), dtype=torch.int32), path)
    return module, path


def artifact(n_inputs: int = 1) -> Artifact:
    inputs = [TensorSpec(f"input_ids{i or ''}", "int64", ("batch_size", 6)) for i in range(n_inputs)]
    return Artifact("text", "litert", "fp32", "", {"tower.tflite": ""}, inputs,
                    [TensorSpec("text_embeds", "float32", ("batch_size", 4))])


def test_a_batch_runs_through_the_static_batch_1_graph(tower: tuple[Tower, Path]) -> None:
    module, path = tower
    ids = torch.randint(0, 64, (5, 6), generator=torch.Generator().manual_seed(1))
    backend = LiteRTBackend(path, artifact(), BackendOptions(threads=2))
    assert not backend.dynamic and backend.static_batch == 1
    got = backend.infer({"input_ids": ids.numpy()})["text_embeds"]  # int64 in, as the tokenizer gives
    with torch.no_grad():
        ref = module(ids).numpy()
    assert got.shape == (5, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # each row is its own: a batch gives what single rows give
    single = np.concatenate([backend.infer({"input_ids": ids[i : i + 1].numpy()})["text_embeds"] for i in range(5)])
    np.testing.assert_array_equal(got, single)


def test_unknown_device_and_a_manifest_that_does_not_match_are_refused(tower: tuple[Tower, Path]) -> None:
    _, path = tower
    with pytest.raises(ConfigError, match="unknown LiteRT device 'NPU'") as e:
        LiteRTBackend(path, artifact(), BackendOptions(device="NPU"))
    assert "delegate:" in (e.value.fix or "")
    with pytest.raises(ConfigError, match="has 1 input"):
        LiteRTBackend(path, artifact(n_inputs=2))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the SDK's Delegate.__del__
def test_a_missing_delegate_library_is_a_typed_error(tower: tuple[Tower, Path], tmp_path: Path) -> None:
    _, path = tower
    with pytest.raises(ConfigError, match="could not load the LiteRT delegate"):
        LiteRTBackend(path, artifact(), BackendOptions(device=f"delegate:{tmp_path / 'libnone.so'}"))


@pytest.mark.litert_delegate
def test_a_delegate_runs_the_graph(tower: tuple[Tower, Path]) -> None:
    library = os.environ.get("EDGECLIP_LITERT_DELEGATE")
    if not library:
        pytest.skip("needs a LiteRT GPU/NNAPI/NPU delegate library (EDGECLIP_LITERT_DELEGATE) on a phone or board")
    module, path = tower
    ids = torch.randint(0, 64, (3, 6), generator=torch.Generator().manual_seed(2))
    backend = LiteRTBackend(path, artifact(), BackendOptions(device=f"delegate:{library}"))
    got = backend.infer({"input_ids": ids.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got["text_embeds"], module(ids).numpy(), atol=1e-2)  # delegates may run fp16


def test_auto_picks_litert_on_arm_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    order, why = auto_order()
    assert order.index("litert") < order.index("onnxruntime") and "ARM Linux" in why
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    order, _ = auto_order()
    assert order.index("litert") > order.index("onnxruntime")


def test_describe_lists_the_ops_that_ran_on_the_cpu(tower: tuple[Tower, Path]) -> None:
    """Issue 18 item 6: XNNPACK on the CPU, the graph's ops read back from the interpreter."""
    _, path = tower
    backend = LiteRTBackend(path, artifact(), BackendOptions(threads=1))
    backend.infer({"input_ids": np.zeros((1, 6), dtype=np.int64)})
    info = backend.describe()
    assert info["requested"] == "CPU" and info["device"] == "CPU"
    assert sum(info["kernels"].values()) > 0
