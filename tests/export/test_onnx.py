"""ONNX export: split graphs, dynamic batch, parity with torch, typed errors, atomic output."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import pytest
import torch

from edgeclip.bundle import Bundle
from edgeclip.errors import CheckpointError, ConfigError, ExportError, UnknownNameError
from edgeclip.export.driver import export_bundle
from edgeclip.export.targets import TARGETS, list_targets
from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.model.clip import ImageEncoder, TextEncoder
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.backends.onnxruntime import OnnxRuntimeBackend
from edgeclip.runtime.tokenizer import TextTokenizer
from tests.conftest import ort_optimized_graph
from tests.export.target_template import TargetTemplate


def _backend(bundle: Bundle, encoder: str) -> OnnxRuntimeBackend:
    a = bundle.manifest.find(encoder, "onnx", "fp32")[0]
    return OnnxRuntimeBackend(bundle.artifact_path(a), a, BackendOptions(threads=1))


@pytest.mark.parametrize("batch", [1, 5])
def test_image_encoder_matches_torch(tiny_bundle: Path, tiny_checkpoint: Path, batch: int) -> None:
    model, _ = load_checkpoint(tiny_checkpoint)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        ref = ImageEncoder(model)(x).numpy()
    got = _backend(Bundle.open(tiny_bundle), "image").infer({"pixel_values": x.numpy()})["image_embeds"]
    assert got.shape == (batch, 32)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.99999


@pytest.mark.parametrize("batch", [1, 4])
def test_text_encoder_matches_torch(tiny_bundle: Path, tiny_checkpoint: Path, batch: int) -> None:
    model, info = load_checkpoint(tiny_checkpoint)
    texts = ["a red circle", "a photo of a star.", "something blue on the right", "x"][:batch]
    ids = TextTokenizer(info.tokenizer_path, info.tokenizer)(texts)
    with torch.no_grad():
        ref = TextEncoder(model)(torch.from_numpy(ids)).numpy()
    got = _backend(Bundle.open(tiny_bundle), "text").infer({"input_ids": ids})["text_embeds"]
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_graphs_are_split_opset_and_symbolic_batch(tiny_bundle: Path) -> None:
    b = Bundle.open(tiny_bundle)
    for encoder, inp, out in (("image", "pixel_values", "image_embeds"), ("text", "input_ids", "text_embeds")):
        a = b.manifest.find(encoder, "onnx", "fp32")[0]
        g = onnx.load(str(b.artifact_path(a)))
        assert [i.name for i in g.graph.input] == [inp]
        assert [o.name for o in g.graph.output] == [out]
        assert g.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch_size"
        assert max(o.version for o in g.opset_import if o.domain in ("", "ai.onnx")) >= 17
        assert "LayerNormalization" in {n.op_type for n in g.graph.node}
        assert not list(b.root.glob("**/*.onnx.data"))  # single file
        v = a.validation
        assert v.passed and v.cosine_min is not None and v.cosine_min >= 0.99999
        assert v.batch_sizes is not None and v.batch_sizes[0] == 1 and v.batch_sizes[1] > 1
        assert a.inputs[0].shape[0] == "batch_size"


def test_graphs_have_constant_shapes_and_fusable_gelu(tiny_bundle: Path, tmp_path: Path) -> None:
    """Attention reshapes to constant shapes (no Shape -> Gather -> Concat chain per block) and
    GELU is exported in the order onnxruntime fuses into one kernel: both cost int8 its speed-up."""
    b = Bundle.open(tiny_bundle)
    for encoder in ("image", "text"):
        path = b.artifact_path(b.manifest.find(encoder, "onnx", "fp32")[0])
        graph = onnx.load(str(path)).graph
        ops = [n.op_type for n in graph.node]
        # a Slice with constant bounds (the class token, before the last image block) is no shape chain
        constants = {i.name for i in graph.initializer}
        constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
        dynamic = [n.name for n in graph.node if n.op_type == "Slice" and not set(n.input[1:]) <= constants]
        assert ops.count("Shape") <= 1 and not dynamic, encoder
        fused = {n.op_type for n in ort_optimized_graph(path, tmp_path).node}
        assert "Erf" not in fused and fused & {"Gelu", "BiasGelu"}, encoder


def test_label_embeddings_are_normalised_and_labelled(tiny_bundle: Path) -> None:
    from tests.conftest import TINY_CLASSES

    emb, meta = Bundle.open(tiny_bundle).label_set("default")
    assert emb.shape == (len(TINY_CLASSES), 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert meta["classes"] == TINY_CLASSES and len(meta["text_tower_sha256"]) == 64


class TestOnnx(TargetTemplate):
    target = "onnx"
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16")
    backend = "onnxruntime"

    def check_target_specific(self, bundle: Bundle, artifact) -> None:  # type: ignore[no-untyped-def]
        g = onnx.load(str(bundle.root / artifact.main_file))
        props = {p.key: p.value for p in g.metadata_props}
        assert props["edgeclip.encoder"] == artifact.encoder and props["edgeclip.precision"] == artifact.precision
        assert props["edgeclip.embed_dim"] == "32"
        # fp32 inputs/outputs even in the fp16 graph; LayerNorm kept in fp32
        assert g.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        if artifact.precision == "fp16":
            half = {i.name for i in g.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
            assert half, "weights are stored in fp16"
            for node in g.graph.node:
                if node.op_type == "LayerNormalization":
                    assert all(i not in half for i in node.input), "LayerNorm runs in fp32"


def test_int32_token_ids_are_accepted(tiny_bundle: Path) -> None:
    b = Bundle.open(tiny_bundle)
    ids = np.zeros((2, 16), dtype=np.int64)
    ids[:, 0], ids[:, 3] = 510, 511
    backend = _backend(b, "text")
    a = backend.infer({"input_ids": ids})["text_embeds"]
    np.testing.assert_array_equal(backend.infer({"input_ids": ids.astype(np.int32)})["text_embeds"], a)


def test_every_registered_target_has_a_template_test() -> None:
    """A target without a TargetTemplate subclass in tests/export/test_<target>.py fails here."""
    import importlib

    tested = set()
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        module = importlib.import_module(f"tests.export.{path.stem}")
        tested |= {
            obj.target for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, TargetTemplate) and obj is not TargetTemplate
        }
    assert set(list_targets()) == set(TARGETS)
    assert set(TARGETS) <= tested, f"targets without a test: {set(TARGETS) - tested}"


def test_unknown_target_suggests(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="unknown target 'onx'; did you mean 'onnx'"):
        export_bundle(tiny_checkpoint, tmp_path / "b", targets=["onx"])
    assert not (tmp_path / "b").exists()


def test_bad_arguments_write_nothing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not support precision 'int4'.*\n.*fp32, fp16"):
        export_bundle(tiny_checkpoint, tmp_path / "b", precision="int4")
    with pytest.raises(ConfigError, match="duplicate class names"):
        export_bundle(tiny_checkpoint, tmp_path / "b", labels={"default": (["a", "b", "a"], None)})
    with pytest.raises(CheckpointError, match="not found"):
        export_bundle(tmp_path / "missing", tmp_path / "b")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an edgeclip bundle"):
        export_bundle(tiny_checkpoint, other)
    assert [p.name for p in tmp_path.iterdir()] == ["other"]  # no staging directory left behind
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_export_adds_to_an_existing_bundle(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.edgeclip"
    export_bundle(tiny_checkpoint, out, encoders=["image"])
    assert [a.key for a in Bundle.open(out).manifest.artifacts] == ["image/onnx-fp32"]
    export_bundle(tiny_checkpoint, out, encoders=["text"], labels={"animals": (["cat", "dog"], ["a {}"])})
    b = Bundle.open(out)
    assert sorted(a.key for a in b.manifest.artifacts) == ["image/onnx-fp32", "text/onnx-fp32"]
    assert list(b.manifest.labels) == ["animals"]
    b.verify()


def test_session_threads_stop_spinning_after_a_run(tiny_bundle: Path) -> None:
    # an idle session spinning after run() doubled the next session's latency on 2 cores
    so = _backend(Bundle.open(tiny_bundle), "image").session.get_session_options()
    assert so.get_session_config_entry("session.force_spinning_stop") == "1"
