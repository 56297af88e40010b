"""Bad input to `edgeclip import`: typed errors, exit codes, no tracebacks, no code execution."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from edgeclip.errors import CheckpointError, ConfigError
from edgeclip.model.clip import CLIP
from edgeclip.model.config import ModelConfig, TextConfig, VisionConfig
from edgeclip.model.importer import import_weights
from tests.conftest import run_cli

pytest.importorskip("edgeclip.model.openai_tokenizer")

TINY = ModelConfig(
    "tiny-openai", 16,
    VisionConfig(image_size=32, patch_size=16, width=64, layers=1, heads=1),
    TextConfig(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
    quick_gelu=True,
)


def openai_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return dict(CLIP(TINY).state_dict())


class Payload:
    """Would create `marker` if unpickled by a full (unsafe) pickle load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def assert_cli_error(r: object, code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)  # type: ignore[attr-defined]
    err = r.stderr  # type: ignore[attr-defined]
    assert err.startswith("Error:") and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def test_plain_state_dict_in_safetensors_imports(tmp_path: Path) -> None:
    save_file(openai_state(), str(tmp_path / "w.safetensors"))
    result = import_weights(tmp_path / "w.safetensors", tmp_path / "ckpt")
    assert result.source_kind == "openai" and result.activation == "quick_gelu"
    assert (tmp_path / "ckpt" / "tokenizer.json").is_file()


def test_open_clip_checkpoint_with_prefixes(tmp_path: Path) -> None:
    state = {f"module._orig_mod.{k}": v for k, v in openai_state().items()}
    torch.save({"epoch": 3, "name": "run", "state_dict": state}, tmp_path / "epoch_3.pt")
    result = import_weights(tmp_path / "epoch_3.pt", tmp_path / "ckpt")
    assert result.source_kind == "open_clip" and result.activation == "gelu"  # not recorded: open_clip default
    result = import_weights(tmp_path / "epoch_3.pt", tmp_path / "ckpt2", force_activation=False)
    assert result.config.quick_gelu is False


def test_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "notes.pt").write_text("hello, I am not a checkpoint\n")
    assert_cli_error(run_cli("import", str(tmp_path / "notes.pt"), "--out", str(tmp_path / "o")), 1,
                     "not a PyTorch checkpoint")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        import_weights(tmp_path / "bad.safetensors", tmp_path / "o")
    with pytest.raises(CheckpointError, match="weights not found"):
        import_weights(tmp_path / "missing.pt", tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_and_never_executed(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    obj = {"visual.proj": torch.zeros(2), "evil": Payload(marker)}
    path = tmp_path / "evil.pt"
    if writer == "pickle":
        path.write_bytes(pickle.dumps(obj))
    else:
        torch.save(obj, path)
    with pytest.raises(CheckpointError, match="refused by weights-only loading"):
        import_weights(path, tmp_path / "ckpt")
    if writer == "pickle":
        assert_cli_error(run_cli("import", str(path), "--out", str(tmp_path / "ckpt")), 1, "weights-only")
    assert not marker.exists()


def test_non_tensor_entries_are_refused(tmp_path: Path) -> None:
    torch.save({"visual.proj": torch.zeros(2), "step": 7}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="'step' is a int, not a tensor"):
        import_weights(tmp_path / "w.pt", tmp_path / "ckpt")
    torch.save([torch.zeros(2)], tmp_path / "l.pt")
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        import_weights(tmp_path / "l.pt", tmp_path / "ckpt")


def test_missing_and_extra_tensors_are_listed(tmp_path: Path) -> None:
    state = openai_state()
    del state["visual.ln_post.bias"], state["transformer.resblocks.0.ln_2.weight"]
    state["visual.extra_head.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "w.pt")
    r = run_cli("import", str(tmp_path / "w.pt"), "--out", str(tmp_path / "ckpt"))
    assert_cli_error(r, 1, "2 missing: visual.ln_post.bias, transformer.resblocks.0.ln_2.weight",
                     "1 unexpected: visual.extra_head.weight")


def test_unknown_architecture_is_a_config_error(tmp_path: Path) -> None:
    state = {k: v for k, v in openai_state().items() if not k.startswith("visual.")}
    state["visual.trunk.patch_embed.proj.weight"] = torch.zeros(8, 3, 16, 16)
    save_file(state, str(tmp_path / "timm.safetensors"))
    r = run_cli("import", str(tmp_path / "timm.safetensors"), "--out", str(tmp_path / "ckpt"))
    assert_cli_error(r, 2, "unknown image tower architecture", "visual.trunk")


def test_hf_directory_without_weights_and_hf_names_in_a_file(tmp_path: Path) -> None:
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a Hugging Face CLIPModel directory"):
        import_weights(tmp_path / "hf", tmp_path / "ckpt")
    save_file({"text_model.final_layer_norm.weight": torch.ones(4)}, str(tmp_path / "hf.safetensors"))
    with pytest.raises(CheckpointError, match="Hugging Face tensor names"):
        import_weights(tmp_path / "hf.safetensors", tmp_path / "ckpt")


def test_bad_options(tmp_path: Path) -> None:
    torch.save(openai_state(), tmp_path / "w.pt")
    with pytest.raises(ConfigError, match="vocabulary file not found"):
        import_weights(tmp_path / "w.pt", tmp_path / "c", vocab=tmp_path / "nope.gz")
    with pytest.raises(ConfigError, match="did you mean"):
        import_weights(tmp_path / "w.pt", tmp_path / "c", model="ViT-B-33")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError, match="already exists"):
        import_weights(tmp_path / "w.pt", tmp_path / "full")


def test_torchscript_archive_is_refused_without_loading(tmp_path: Path) -> None:
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    scripted.save(str(tmp_path / "ViT-B-32.pt"))
    with pytest.raises(CheckpointError, match="TorchScript archive"):
        import_weights(tmp_path / "ViT-B-32.pt", tmp_path / "ckpt")
