"""Gaps found by breaking the export layer on purpose (a review that made each bug a real one would
make, and kept the test that caught it): the validation gate sees embedding length as well as
direction, and what the manifest records about each saved artifact is what the file holds."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import edgeclip.export.openvino as openvino_target
import edgeclip.export.reference as reference
from edgeclip.bundle import Bundle
from edgeclip.errors import ValidationError
from edgeclip.export.driver import export_bundle
from edgeclip.export.encoders import EncoderSpec, encoder_module
from edgeclip.export.validate import validate
from edgeclip.model.build import build_model
from tests.conftest import README_PARITY, README_WEIGHT_ONLY_PARITY

NOT_UNIT = "another length than the torch reference.*not L2-normalised.*not registered"


def _tower_only(make):  # type: ignore[no-untyped-def]
    """A real bug: the image tower exported without the encoder's final L2 normalisation."""
    return lambda encoder, model: make(encoder, model).visual if encoder == "image" else make(encoder, model)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8w"])
def test_the_gate_refuses_embeddings_in_the_right_direction_at_the_wrong_length(precision: str) -> None:
    torch.manual_seed(0)
    encoder = encoder_module("image", build_model("test-tiny"))
    probes = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        raw = encoder.visual(probes).numpy()  # the tower's own output: every cosine is 1

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return encoder.visual(torch.from_numpy(x)).numpy()

    @torch.no_grad()
    def normalised(x: np.ndarray) -> np.ndarray:
        return encoder(torch.from_numpy(x)).numpy()

    unit = validate(encoder, probes, normalised, precision, "unit")
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=0.2), "the tower's raw output is not unit length"
    assert unit["passed"] and unit["norm_max_dev"] < 1e-5
    with pytest.raises(ValidationError, match=NOT_UNIT) as e:
        validate(encoder, probes, run, precision, "image/x-" + precision)
    assert e.value.fix



def test_int8_is_held_to_unit_length_too() -> None:
    """Activation-quantized INT8 is judged on held-out inputs by cosine and top-1, which a missing
    normalisation leaves unchanged; its length is checked on the probes all the same."""
    from edgeclip.export.int8.guard import Budget, HeldOut

    encoder = encoder_module("image", build_model("test-tiny"))
    probes = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    held = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        gate = HeldOut(held.numpy(), encoder(held).numpy()), Budget()

    @torch.no_grad()
    def tower(x: np.ndarray) -> np.ndarray:
        return encoder.visual(torch.from_numpy(x)).numpy()

    @torch.no_grad()
    def normalised(x: np.ndarray) -> np.ndarray:
        return encoder(torch.from_numpy(x)).numpy()

    assert validate(encoder, probes, normalised, "int8", "x", heldout=gate)["passed"]
    with pytest.raises(ValidationError, match=NOT_UNIT):
        validate(encoder, probes, tower, "int8", "image/onnx-int8", heldout=gate)


@pytest.mark.parametrize(("target", "module", "attr"), [
    ("onnx", reference, "export_module"),
    ("openvino", openvino_target, "openvino_module"),
])
def test_an_artifact_without_the_final_normalisation_is_not_registered(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, module: object, attr: str
) -> None:
    monkeypatch.setattr(module, attr, _tower_only(getattr(module, attr)))
    out = tmp_path / "b.edgeclip"
    with pytest.raises(ValidationError, match=NOT_UNIT):
        export_bundle(tiny_checkpoint, out, targets=[target], encoders=["image"])
    assert not out.exists() and not list(tmp_path.iterdir())



# ---- the gate's thresholds and batch sizes ----------------------------------------------------
def _tiny_image_encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return encoder_module("image", build_model("test-tiny"))


def _rotated(encoder: torch.nn.Module, cosine: float, only_batch: int | None = None):  # type: ignore[no-untyped-def]
    """An artifact whose unit-length embeddings are torch's turned by a fixed angle (every row's
    cosine to torch is `cosine`), at every batch size or only at `only_batch`."""

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        ref = encoder(torch.from_numpy(x)).numpy().astype(np.float64)
        if only_batch is not None and len(x) != only_batch:
            return ref.astype(np.float32)
        other = np.roll(ref, 1, axis=1)
        other -= (other * ref).sum(1, keepdims=True) * ref  # orthogonal to each row
        other /= np.linalg.norm(other, axis=1, keepdims=True)
        return (cosine * ref + np.sqrt(1 - cosine**2) * other).astype(np.float32)

    return run


PROBES = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize(("precision", "cosine", "passes"), [
    # README: fp32 >= 0.99999, fp16 >= 0.999, weight-only >= 0.99 (tests/conftest.py)
    ("fp32", 0.99995, False), ("fp32", 0.999995, True),
    ("fp16", 0.9985, False), ("fp16", 0.9995, True),
    ("int8w", 0.985, False), ("int8w", 0.995, True), ("palette4", 0.985, False),
])
def test_each_precision_is_held_to_the_readme_cosine(precision: str, cosine: float, passes: bool) -> None:
    encoder = _tiny_image_encoder()
    run = _rotated(encoder, cosine)
    if passes:
        result = validate(encoder, PROBES, run, precision, "x")
        assert result["passed"] and result["cosine_min"] == pytest.approx(cosine, abs=1e-6)
        expected = README_PARITY.get(precision, README_WEIGHT_ONLY_PARITY)
        assert result["threshold_cosine"] == expected
    else:
        with pytest.raises(ValidationError, match="disagrees with the torch reference"):
            validate(encoder, PROBES, run, precision, "x")


@pytest.mark.parametrize("batch", [1, len(PROBES)])
def test_the_gate_runs_batch_one_and_the_full_batch(batch: int) -> None:
    """An artifact wrong at one batch size only (a static-batch graph, a batch-dependent kernel) is
    refused: both are run and the worse one is judged."""
    encoder = _tiny_image_encoder()
    with pytest.raises(ValidationError, match="disagrees with the torch reference"):
        validate(encoder, PROBES, _rotated(encoder, 0.9, only_batch=batch), "fp32", "x")


# ---- CoreML: what the saved package computes from its image input ----------------------------
@pytest.fixture(scope="module")
def coreml_image_input(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    pytest.importorskip("coremltools")
    out = tmp_path_factory.mktemp("coreml-image-input") / "b.edgeclip"
    export_bundle(tiny_checkpoint, out, targets=["coreml"], precision="fp16", options={"coreml_image_input": True})
    return Bundle.open(out)


def _program_prologue(package: Path) -> tuple[list[tuple[str, list[str]]], dict[str, np.ndarray]]:
    """The saved ML Program's ops in order ((type, input names)) and its inline constants."""
    import coremltools as ct

    fn = ct.utils.load_spec(str(package)).mlProgram.functions["main"]
    ops, consts = [], {}
    for op in fn.block_specializations[fn.opset].operations:
        if op.type == "const" and "val" in op.attributes and op.attributes["val"].HasField("immediateValue"):
            t = op.attributes["val"].immediateValue.tensor
            kind = t.WhichOneof("value")
            if kind == "floats":
                consts[op.outputs[0].name] = np.asarray(t.floats.values, np.float32)
            elif kind == "bytes":  # fp16 constants are stored as raw bytes
                consts[op.outputs[0].name] = np.frombuffer(t.bytes.values, np.float16).astype(np.float32)
            continue
        ops.append((op.type, [a.name for arg in op.inputs.values() for a in arg.arguments]))
    return ops, consts


def test_the_coreml_image_input_is_scaled_then_normalised_as_the_manifest_says(coreml_image_input: Bundle) -> None:
    """Core ML feeds the image's 0..255 RGB values; the package must compute ((x / 255) - mean) / std
    with the preprocessing's mean and std, the numbers its manifest entry records."""
    (a,) = coreml_image_input.manifest.find("image")
    p = coreml_image_input.manifest.preprocess
    ops, consts = _program_prologue(coreml_image_input.root / a.path / "model.mlpackage")
    scale = [i for t, ins in ops[:1] if t == "mul" and "pixel_values" in ins for i in ins if i in consts]
    assert scale and consts[scale[0]].item() == pytest.approx(1 / 255), ops[:2]
    assert not any(t == "add" and "pixel_values" in ins for t, ins in ops), "no bias: 0..255 -> 0..1 exactly"
    sub = next(ins for t, ins in ops if t == "sub")
    mean = next(consts[i] for i in sub if i in consts)
    after = ops[[t for t, _ in ops].index("sub") + 1]
    assert after[0] in ("mul", "real_div"), after
    std = next(consts[i] for i in after[1] if i in consts)
    fp16 = 1e-3  # the constants are stored in half precision
    np.testing.assert_allclose(mean.ravel(), p.mean, rtol=fp16)
    np.testing.assert_allclose(std.ravel(), 1 / np.asarray(p.std) if after[0] == "mul" else p.std, rtol=fp16)
    env = a.environment.image_input
    assert env is not None and env["mean"] == list(p.mean) and env["std"] == list(p.std)
    assert env["scale"] == pytest.approx(1 / 255) and env["bias"] == [0.0, 0.0, 0.0]



def test_the_coreml_image_input_rescales_by_the_recorded_factor(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A model preprocessed with another rescale factor (a Hugging Face `rescale_factor`) gets that
    factor as the ImageType scale, in the program and in the manifest, not a fixed 1/255."""
    pytest.importorskip("coremltools")
    ckpt = Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt", ignore=shutil.ignore_patterns("checkpoints")))
    config = json.loads((ckpt / "config.json").read_text())
    config["preprocess"]["rescale_factor"] = factor = 1 / 127.5
    (ckpt / "config.json").write_text(json.dumps(config))
    out = tmp_path / "b.edgeclip"
    export_bundle(ckpt, out, targets=["coreml"], precision="fp16", options={"coreml_image_input": True},
                  encoders=["image"])
    bundle = Bundle.open(out)
    (a,) = bundle.manifest.find("image")
    ops, consts = _program_prologue(bundle.root / a.path / "model.mlpackage")
    scale = [i for t, ins in ops[:1] if t == "mul" and "pixel_values" in ins for i in ins if i in consts]
    assert scale and consts[scale[0]].item() == pytest.approx(factor, rel=1e-3), ops[:2]
    assert a.environment.image_input is not None and a.environment.image_input["scale"] == pytest.approx(factor)

def _mutated(facts: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    facts = copy.deepcopy(facts)
    *keys, last = path.split(".")
    node: Any = facts
    for k in keys:
        node = node[int(k)] if k.isdigit() else node[k]
    node[int(last) if last.isdigit() else last] = value
    return facts


@pytest.mark.parametrize(("encoder", "precision", "path", "value", "named"), [
    ("text", "fp16", "model_type", "neuralNetwork", "model type"),
    ("text", "fp16", "specification_version", 6, "specificationVersion"),
    ("text", "fp16", "inputs.0.name", "ids", "inputs"),
    ("text", "fp16", "outputs.0.name", "embeds", "outputs"),
    ("text", "fp16", "inputs.0.dtype", "FLOAT32", "input dtype"),
    ("text", "fp16", "inputs.0.shape", [1, 17], "input shape"),
    ("text", "fp16", "inputs.0.range", [[1, 64], [16, 16]], "input batch range"),
    ("text", "fp16", "outputs.0.dtype", "FLOAT16", "output dtype"),
    ("text", "fp16", "weight_file_bytes", 0, "weights file is missing"),
    ("text", "fp16", "max_blob_offset", 10**12, "points past the weights file"),
    ("text", "fp16", "float_weights.FLOAT32", 3, "FLOAT32 weights in a fp16 model"),
    ("text", "fp16", "float_weights.FLOAT16", 0, "no FLOAT16 weights"),
    ("text", "fp32", "float_weights.FLOAT16", 3, "no FLOAT32 weights"),
    ("text", "int8w", "int8_weights", 0, "no int8-quantized weights"),
    ("text", "palette6", "palette_sizes", [16], "palette sizes"),
    ("image", "fp16", "inputs.0.color", "BGR", "not an RGB image"),
    ("image", "fp16", "inputs.0.width", 31, "image input size"),
])
def test_the_coreml_spec_check_refuses_each_mismatch(coreml_image_input: Bundle, encoder: str, precision: str,
                                                     path: str, value: Any, named: str) -> None:
    """The spec check is the only check a CoreML artifact gets off macOS: each fact it promises to
    verify, changed alone in the facts of a real package, is refused by name."""
    from edgeclip.errors import ExportError
    from edgeclip.export.coreml import verify_package

    (a,) = coreml_image_input.manifest.find(encoder)
    facts = a.validation.details["spec"]
    iface = EncoderSpec(encoder, tuple(a.inputs), tuple(a.outputs))
    kw = {"max_batch": None, "image_input": encoder == "image", "palette_bits": 6 if precision == "palette6" else None}
    if precision == "fp16":
        verify_package(facts, iface, precision, 7, **kw)  # the real facts pass
    bad = _mutated(facts, path, value)
    if precision == "fp32":
        bad = _mutated(bad, "float_weights.FLOAT32", 0)
    with pytest.raises(ExportError, match=named):
        verify_package(bad, iface, precision, 7, **kw)


def test_top1_agreement_compares_the_artifacts_labels_with_torchs() -> None:
    """The label set holds each probe's torch embedding and a neighbour of it; an artifact turned
    toward the neighbour (within the int8w cosine) picks the neighbour: agreement 0, not 1."""
    encoder = _tiny_image_encoder()
    with torch.no_grad():
        ref = encoder(PROBES).numpy().astype(np.float64)
    turned = _rotated(encoder, 0.995)(PROBES.numpy()).astype(np.float64)
    theta = np.arccos(0.995)
    away = (turned - 0.995 * ref) / np.sin(theta)  # the unit direction the artifact turned toward
    # the neighbour lies 1.5x as far along that turn: nearer to the artifact's vector than torch's is
    neighbour = np.cos(1.5 * theta) * ref + np.sin(1.5 * theta) * away
    labels = np.concatenate([ref, neighbour]).astype(np.float32)
    result = validate(encoder, PROBES, _rotated(encoder, 0.995), "int8w", "x", label_embeddings=labels)
    assert result["passed"] and result["top1_agreement"] == 0.0
    same = validate(encoder, PROBES, _rotated(encoder, 0.99999999), "int8w", "x", label_embeddings=labels)
    assert same["top1_agreement"] == 1.0


# ---- ONNX: the graph's own metadata and the --image-input value ------------------------------
def test_onnx_metadata_mirrors_the_manifest(tiny_bundle: Path) -> None:
    import onnx

    from edgeclip import __version__

    b = Bundle.open(tiny_bundle)
    m, p = b.manifest, b.manifest.preprocess
    for a in m.artifacts:
        props = {q.key: q.value for q in onnx.load(str(b.artifact_path(a))).metadata_props}
        assert props == {
            "edgeclip.version": __version__, "edgeclip.model": m.model_name, "edgeclip.encoder": a.encoder,
            "edgeclip.precision": a.precision, "edgeclip.embed_dim": str(m.embed_dim),
            "edgeclip.image_size": str(p.image_size), "edgeclip.context_length": str(m.tokenizer.context_length),
            "edgeclip.mean": ",".join(map(str, p.mean)), "edgeclip.std": ",".join(map(str, p.std)),
        }, a.key
        assert [float(v) for v in props["edgeclip.mean"].split(",")] == list(p.mean)


def test_an_unknown_image_input_is_a_config_error_and_writes_nothing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from edgeclip.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown --image-input 'uint16'") as e:
        export_bundle(tiny_checkpoint, tmp_path / "b.edgeclip", encoders=["image"], options={"image_input": "uint16"})
    assert "float32" in e.value.fix and "uint8" in e.value.fix
    assert not list(tmp_path.iterdir())


def test_every_coreml_program_ends_in_the_l2_normalisation(coreml_image_input: Bundle) -> None:
    """Off macOS nothing runs a CoreML package, so the cosine/length gate cannot see a tower exported
    without its normalisation: the saved program itself must end in x / max(||x||, eps)."""
    import coremltools as ct

    for a in coreml_image_input.manifest.artifacts:
        fn = ct.utils.load_spec(str(coreml_image_input.root / a.path / "model.mlpackage")).mlProgram.functions["main"]
        ops = [op for op in fn.block_specializations[fn.opset].operations if op.type != "const"]
        producer = {o.name: op for op in ops for o in op.outputs}

        def inputs(op: Any) -> dict[str, list[str]]:
            return {k: [x.name for x in v.arguments if x.name] for k, v in op.inputs.items()}

        op = producer[a.outputs[0].name]
        while op.type == "cast":
            op = producer[inputs(op)["x"][0]]
        assert op.type == "real_div", (a.key, op.type)
        numerator, denominator = inputs(op)["x"][0], inputs(op)["y"][0]
        seen, todo = [], [denominator]
        while todo:  # back from the denominator (through maximum / tile) to the norm it divides by
            step = producer.get(todo.pop())
            if step is None:
                continue
            seen.append(step.type)
            if step.type == "reduce_l2_norm":
                assert inputs(step)["x"] == [numerator], a.key
                break
            todo += [n for names in inputs(step).values() for n in names]
        assert "reduce_l2_norm" in seen, (a.key, seen)


def test_coreml_exports_a_text_tower_without_start_and_end_tokens(tmp_path: Path) -> None:
    """SigLIP's Gemma tokenizer has no start or end token (sot_id = eot_id = -1) and the tower pools
    the last position: the CoreML example ids must come from the tokenizer's own rules."""
    pytest.importorskip("coremltools")
    pytest.importorskip("transformers")
    from edgeclip.model.checkpoint import load_checkpoint
    from edgeclip.model.importer import import_weights
    from tests.model.siglip_fixtures import make_hf_dir

    _, src = make_hf_dir(tmp_path / "hf", "siglip2-p14-remainder")
    import_weights(src, tmp_path / "ckpt")
    tok = load_checkpoint(tmp_path / "ckpt")[1].tokenizer
    assert (tok.sot_id, tok.eot_id, tok.pooling) == (-1, -1, "last")
    result = export_bundle(tmp_path / "ckpt", tmp_path / "b.edgeclip", targets=["coreml"], precision="fp16",
                           encoders=["text"])
    (a,) = result.artifacts
    assert a.inputs[0].dtype == "int32" and a.inputs[0].shape == (1, tok.context_length)
    assert a.validation.details["spec"]["inputs"][0]["shape"] == [1, tok.context_length]


def test_openvino_artifacts_are_checked_at_the_f32_hint_their_record_names(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU plugin may default to bf16 (on CPUs with AMX/AVX512-BF16) and the fp32 budget is
    measured at f32: the compiled model that validates each artifact runs at the hint it records."""
    from edgeclip.runtime.backends.openvino import OpenVinoBackend

    hints: list[str] = []
    init = OpenVinoBackend.__init__

    def recording(self: OpenVinoBackend, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        hints.append(self.precision_hint)  # read back from the compiled model

    monkeypatch.setattr(OpenVinoBackend, "__init__", recording)
    result = export_bundle(tiny_checkpoint, tmp_path / "b.edgeclip", targets=["openvino"], encoders=["image"])
    (a,) = result.artifacts
    assert a.validation.checked_with.endswith("(INFERENCE_PRECISION_HINT=f32)")
    assert hints == ["f32"]


# ---- embedding-space ids: each tower's own weights ----------------------------------------
@pytest.mark.parametrize(("changed", "unchanged"), [("text", "image"), ("image", "text")])
def test_a_change_to_one_towers_weights_changes_only_its_space(tiny_checkpoint: Path, changed: str,
                                                               unchanged: str) -> None:
    from edgeclip.export.embedding_space import embedding_space
    from edgeclip.model.checkpoint import load_checkpoint

    model, info = load_checkpoint(tiny_checkpoint)
    before = {e: embedding_space(model, info, e) for e in ("image", "text")}
    projection = model.text_projection if changed == "text" else model.visual.proj
    with torch.no_grad():
        projection.add_(1e-3)
    assert embedding_space(model, info, changed) != before[changed]
    assert embedding_space(model, info, unchanged) == before[unchanged]
