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


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_identical_bytes_import_identically_whatever_the_name(tmp_path: Path) -> None:
    """The file name never decides the activation: the same bytes under a LAION-like name, an
    open_clip-like name and a '-quickgelu' name are all refused (the file says nothing), and all
    import as QuickGELU once the file carries OpenAI's own keys."""
    save_file(openai_state(), str(tmp_path / "plain.safetensors"))
    names = ["laion_vitb32.safetensors", "open_clip_checkpoint.safetensors", "ViT-B-32-quickgelu.safetensors"]
    for name in names:
        (tmp_path / name).write_bytes((tmp_path / "plain.safetensors").read_bytes())
        with pytest.raises(ConfigError, match="does not say which activation") as e:
            import_weights(tmp_path / name, tmp_path / f"ck-{name}")
        assert "--model" in str(e.value.fix) and "--activation" in str(e.value.fix)
        assert not (tmp_path / f"ck-{name}").exists()
    r = run_cli("import", str(tmp_path / names[0]), "--out", str(tmp_path / "cli"))
    assert_cli_error(r, 2, "does not say which activation", "--model")

    marked = {**openai_state(), "input_resolution": torch.tensor(32)}  # as OpenAI's own state dicts carry
    save_file(marked, str(tmp_path / "marked.safetensors"))
    results = []
    for name in names:
        (tmp_path / "m").mkdir(exist_ok=True)
        (tmp_path / "m" / name).write_bytes((tmp_path / "marked.safetensors").read_bytes())
        results.append(import_weights(tmp_path / "m" / name, tmp_path / f"ok-{name}"))
    assert {(r.source_kind, r.activation) for r in results} == {("openai", "quick_gelu")}
    assert all("input_resolution" in r.activation_origin for r in results)
    first = _weights(results[0].path)
    assert all(torch.equal(first[k], _weights(r.path)[k]) for r in results[1:] for k in first)


def test_safetensors_metadata_decides_the_activation(tmp_path: Path) -> None:
    """The file's own metadata decides, even against its name (and OpenAI's keys in it)."""
    state = openai_state()
    save_file(state, str(tmp_path / "ViT-quickgelu.safetensors"), metadata={"activation": "gelu"})
    r = run_cli("import", str(tmp_path / "ViT-quickgelu.safetensors"), "--out", str(tmp_path / "ck"))
    assert r.returncode == 0, r.stderr
    assert "activation gelu: safetensors metadata activation=gelu" in r.stdout
    save_file(state, str(tmp_path / "w.safetensors"), metadata={"hidden_act": "quick_gelu"})
    result = import_weights(tmp_path / "w.safetensors", tmp_path / "ck2")
    assert result.activation == "quick_gelu" and result.config.quick_gelu
    save_file(state, str(tmp_path / "bad.safetensors"), metadata={"activation": "relu"})
    with pytest.raises(ConfigError, match="unsupported activation in its metadata"):
        import_weights(tmp_path / "bad.safetensors", tmp_path / "ck3")


def test_activation_and_model_options_decide_when_the_file_does_not(tmp_path: Path) -> None:
    state = {f"module._orig_mod.{k}": v for k, v in openai_state().items()}
    torch.save({"epoch": 3, "name": "run", "state_dict": state}, tmp_path / "epoch_3.pt")
    with pytest.raises(ConfigError, match="open_clip training checkpoints do not record the activation"):
        import_weights(tmp_path / "epoch_3.pt", tmp_path / "ckpt")
    r = run_cli("import", str(tmp_path / "epoch_3.pt"), "--out", str(tmp_path / "ck"), "--activation", "gelu")
    assert r.returncode == 0, r.stderr
    assert "imported open_clip weights" in r.stdout and "activation gelu: from --activation" in r.stdout
    result = import_weights(tmp_path / "epoch_3.pt", tmp_path / "ck2", activation="quick_gelu")
    assert result.config.quick_gelu is True and result.activation_origin == "from --activation"


def test_model_decides_when_the_file_does_not(tmp_path: Path) -> None:
    """Registered configs: --model X is GELU, --model X-quickgelu QuickGELU; the refusal names both."""
    from edgeclip.model.config import get_config
    from edgeclip.model.importer import infer_config, resolve_config
    from edgeclip.model.sources import read_source

    torch.manual_seed(0)
    torch.save(dict(CLIP(get_config("test-tiny")).state_dict()), tmp_path / "w.pt")
    source = read_source(tmp_path / "w.pt")
    assert source.kind == "state_dict" and source.quick_gelu is None
    inferred = infer_config(source.state, source)
    for name, quick in (("test-tiny", False), ("test-tiny-quickgelu", True)):
        cfg, origin, _ = resolve_config(inferred, get_config(name), source, force_activation=False)
        assert cfg.quick_gelu is quick and origin == f"from --model {name}"
    with pytest.raises(ConfigError, match="contradicts --model test-tiny"):
        resolve_config(inferred, get_config("test-tiny"), source, force_activation=False, activation=True)
    r = run_cli("import", str(tmp_path / "w.pt"), "--out", str(tmp_path / "ck"))
    assert_cli_error(r, 2, "--model test-tiny (GELU) or --model test-tiny-quickgelu (QuickGELU)")


def test_broken_file_is_reported_before_the_activation_is_asked(tmp_path: Path) -> None:
    state = openai_state()
    del state["visual.ln_post.bias"]
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match="1 missing: visual.ln_post.bias"):
        import_weights(tmp_path / "w.safetensors", tmp_path / "ckpt")


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
