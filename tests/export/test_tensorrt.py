"""TensorRT target: TensorRT-ready ONNX + build recipes, op check, polygraphy validation.

Engines need TensorRT 10 and an NVIDIA GPU; those tests are marked `tensorrt` and skip elsewhere.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgeclip.bundle import Artifact, Bundle
from edgeclip.errors import ExportError, MissingDependencyError
from edgeclip.export.tensorrt import PROFILE_DEFAULTS, TRT_VERSIONS, check_ops, supported_ops
from edgeclip.export.validate import MIN_COSINE
from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.model.clip import ImageEncoder, TextEncoder
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.backends.onnxruntime import OnnxRuntimeBackend
from edgeclip.runtime.backends.tensorrt import TensorRTBackend
from edgeclip.runtime.backends.tensorrt_engine import FP32_PREFIX, build_engine
from edgeclip.runtime.tokenizer import TextTokenizer
from tests.export.target_template import TargetTemplate

HAS_TRT = TensorRTBackend.available()
needs_trt = pytest.mark.skipif(not HAS_TRT, reason="needs TensorRT 10, cuda-python and an NVIDIA GPU")


def _trtexec_flags(script: str) -> dict[str, str]:
    """{flag: value} of the trtexec call in build_engine.sh (flags without a value map to "")."""
    call = script[script.index('"$TRTEXEC"') :].replace("\\\n", " ")
    flags = {}
    for word in shlex.split(call, posix=False):
        if word.startswith("--"):
            key, _, value = word.partition("=")
            flags[key] = value
    return flags


class TestTensorRT(TargetTemplate):
    target = "tensorrt"
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16")
    backend = "tensorrt"
    runs_here = HAS_TRT

    def check_target_specific(self, bundle: Bundle, artifact) -> None:  # type: ignore[no-untyped-def]
        names = [Path(f).name for f in artifact.files]
        assert names[:2] == ["model.onnx", "build_engine.sh"]
        env = artifact.environment
        assert env.details["tensorrt"] == TRT_VERSIONS and env.details["opset"] == 18
        assert "NVIDIA GPU + TensorRT 10" in env.details["build"]
        assert env.details["engine_built"] is HAS_TRT and (len(names) == 3) is HAS_TRT  # the .plan is listed when built

        # build_engine.sh: the ONNX next to it, the manifest's profile, --fp16 iff fp16
        script = (bundle.root / artifact.path / "build_engine.sh").read_text()
        flags = _trtexec_flags(script)
        assert (bundle.root / artifact.path / flags["--onnx"]) == bundle.artifact_path(artifact)
        p = env.profile
        assert p["input"] == artifact.inputs[0].name
        assert (p["min_batch"], p["opt_batch"], p["max_batch"]) == PROFILE_DEFAULTS[artifact.encoder]
        for flag, batch in (("--minShapes", p["min_batch"]), ("--optShapes", p["opt_batch"]),
                            ("--maxShapes", p["max_batch"])):
            assert flags[flag] == f"{p['input']}:" + "x".join(map(str, [batch, *artifact.inputs[0].shape[1:]]))
        assert ("--fp16" in flags) == (artifact.precision == "fp16")
        assert re.fullmatch(r"workspace:\$\{WORKSPACE_MIB:-\d+\}M", flags["--memPoolSize"])
        assert flags["--timingCacheFile"] and "--saveEngine" in flags
        if artifact.precision == "fp16":  # LayerNorm (and the final L2 norm) pinned to fp32
            assert flags["--precisionConstraints"] == "obey"
            pinned = [s.split(":") for s in flags["--layerPrecisions"].split(",")]
            assert {prec for _, prec in pinned} == {"fp32"}
            assert flags["--layerOutputTypes"] == flags["--layerPrecisions"]
            graph = onnx.load(str(bundle.artifact_path(artifact))).graph
            norms = {n.name for n in graph.node if n.op_type == "LayerNormalization"}
            assert norms and norms <= {name for name, _ in pinned}
            assert env.details["fp32_layers"] == [n for n, _ in pinned]
            assert all(name.startswith(FP32_PREFIX) for name, _ in pinned)
        else:
            assert "--noTF32" in flags and "--layerPrecisions" not in flags

        # the op check and the numbers
        check = artifact.validation.details["op_check"]
        assert check["unsupported"] == [] and "LayerNormalization" in check["ops"]
        assert check["tensorrt_version"].startswith("10.") and check["source"].startswith("https://")
        if not HAS_TRT:
            assert artifact.validation.checked_with.startswith("polygraphy onnxruntime backend")
            assert artifact.validation.passed is True  # the ONNX itself runs here, so it is checked
            assert (artifact.validation.cosine_min or 0.0) >= MIN_COSINE["fp32"]  # same fp32 graph for both
            assert (artifact.validation.batch_sizes or ())[:1] == (1,)

    def test_tensorrt_onnx_matches_torch_in_onnxruntime(self, bundle: Bundle, tiny_checkpoint: Path) -> None:
        model, info = load_checkpoint(tiny_checkpoint)
        x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
        ids = TextTokenizer(info.tokenizer_path, info.tokenizer)(["a red star", "a photo of a circle.", "x"])
        with torch.no_grad():
            ref = {"image": ImageEncoder(model)(x).numpy(), "text": TextEncoder(model)(torch.from_numpy(ids)).numpy()}
        inputs = {"image": x.numpy(), "text": ids}
        for a in bundle.manifest.find("image", "tensorrt") + bundle.manifest.find("text", "tensorrt"):
            onnx_artifact = Artifact(a.encoder, "onnx", "fp32", a.path, {a.main_file: ""}, a.inputs, a.outputs)
            be = OnnxRuntimeBackend(bundle.artifact_path(a), onnx_artifact, BackendOptions(threads=1))
            got = be.infer({a.inputs[0].name: inputs[a.encoder]})[a.outputs[0].name]
            r = ref[a.encoder]
            cos = (got * r).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(r, axis=1)
            assert cos.min() >= 0.99999, a.key

    @pytest.mark.tensorrt
    @needs_trt
    def test_engine_cache_is_reused(self, bundle: Bundle) -> None:
        a = bundle.manifest.find("image", "tensorrt", "fp16")[0]
        first = TensorRTBackend(bundle.artifact_path(a), a)
        mtime = first.plan_path.stat().st_mtime_ns
        second = TensorRTBackend(bundle.artifact_path(a), a)
        assert second.plan_path == first.plan_path and second.plan_path.stat().st_mtime_ns == mtime
        assert a.environment.details["engine_built"]
        assert first.plan_path.name.endswith("-fp16-" + first.plan_path.name[-17:])

    @pytest.mark.tensorrt
    @needs_trt
    def test_backend_chunks_batches_above_the_profile(self, bundle: Bundle) -> None:
        a = bundle.manifest.find("image", "tensorrt", "fp32")[0]
        be = TensorRTBackend(bundle.artifact_path(a), a)
        x = np.random.default_rng(0).standard_normal((be.max_batch + 3, 3, 32, 32)).astype(np.float32)
        out = be.infer({"pixel_values": x})["image_embeds"]
        single = be.infer({"pixel_values": x[-1:]})["image_embeds"]
        assert out.shape[0] == len(x) and np.allclose(out[-1], single[0], atol=1e-4)


def _graph_with(op: str, domain: str = "") -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node(op, ["h"], ["y"], domain=domain)]
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=opsets)


@pytest.mark.parametrize(("op", "domain", "named"), [
    ("Unique", "", "Unique"),  # listed as unsupported by TensorRT
    ("FastGelu", "com.microsoft", "com.microsoft::FastGelu"),  # an onnxruntime contrib op needs a plugin
])
def test_op_check_names_unsupported_ops(op: str, domain: str, named: str) -> None:
    with pytest.raises(ExportError, match=re.escape(named)) as e:
        check_ops(_graph_with(op, domain))
    assert "Relu" not in str(e.value).split("support:")[1].split("(")[0]
    assert e.value.fix and e.value.exit_code == 1


def test_op_check_passes_and_records_a_supported_graph() -> None:
    record = check_ops(_graph_with("Sigmoid"))
    assert record["ops"] == ["Relu", "Sigmoid"] and record["unsupported"] == [] and record["opset"] == 18


def test_op_check_refuses_an_opset_older_tensorrt_10_cannot_parse() -> None:
    model = _graph_with("Sigmoid")
    model.opset_import[0].version = 23
    with pytest.raises(ExportError, match="opset 23"):
        check_ops(model)


def test_operator_list_is_data_with_version_and_source() -> None:
    table = supported_ops()
    assert table["tensorrt_version"].startswith("10.") and "onnx-tensorrt" in table["source"]
    assert {"LayerNormalization", "MatMul", "Softmax", "Erf", "ReduceL2", "GatherND"} <= set(table["supported"])
    assert "Unique" in table["unsupported"] and not set(table["supported"]) & set(table["unsupported"])


def test_backend_without_tensorrt_names_the_pip_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from edgeclip import _deps

    real = _deps.has
    monkeypatch.setattr(_deps, "has", lambda m: False if m == "tensorrt" else real(m))
    assert not TensorRTBackend.available()
    a = Artifact("image", "tensorrt", "fp32", "image/tensorrt-fp32", {"image/tensorrt-fp32/model.onnx": ""}, [], [])
    with pytest.raises(MissingDependencyError, match=re.escape('pip install "edgeclip[tensorrt]"')):
        TensorRTBackend(tmp_path / "model.onnx", a)


def test_build_engine_without_tensorrt_names_the_pip_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from edgeclip import _deps

    real = _deps.has
    monkeypatch.setattr(_deps, "has", lambda m: False if m == "tensorrt" else real(m))
    with pytest.raises(MissingDependencyError, match=re.escape('pip install "edgeclip[tensorrt]"')):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", fp16=True, min_batch=1, opt_batch=1, max_batch=2,
                     workspace_bytes=1 << 20)


def test_runtime_side_of_tensorrt_pulls_no_torch() -> None:
    """The device builds its engines: the backend and the engine builder import no torch, no SDK and
    nothing from the export side until an engine is built."""
    code = ("import sys; import edgeclip.runtime.backends.tensorrt, edgeclip.runtime.backends.tensorrt_engine; "
            "print(' '.join(m for m in ('torch', 'onnx', 'tensorrt', 'polygraphy', 'edgeclip.export')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.tensorrt
@needs_trt
def test_build_engine_writes_a_plan_and_timing_cache(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from edgeclip.export.driver import export_bundle

    out = tmp_path / "b"
    export_bundle(tiny_checkpoint, out, targets=["tensorrt"], precision="fp16", encoders=["text"])
    a = Bundle.open(out).manifest.artifacts[0]
    onnx_path = out / a.main_file
    plan, cache = tmp_path / "e" / "text.plan", tmp_path / "e" / "timing.cache"
    build_engine(onnx_path, plan, fp16=True, min_batch=1, opt_batch=2, max_batch=4, workspace_bytes=1 << 28,
                 timing_cache=cache)
    assert plan.stat().st_size > 0 and cache.stat().st_size > 0
    again = tmp_path / "e" / "again.plan"  # a second build starts from the saved timing cache
    build_engine(onnx_path, again, fp16=True, min_batch=1, opt_batch=2, max_batch=4, workspace_bytes=1 << 28,
                 timing_cache=cache)
    assert again.stat().st_size > 0
