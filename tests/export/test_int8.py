"""INT8 export: calibration through every INT8 target, the accuracy guard, and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeclip.bundle import Artifact, Bundle
from edgeclip.data.shapes import ShapesDataset
from edgeclip.errors import ConfigError, DataError
from edgeclip.export.driver import export_bundle
from edgeclip.export.encoders import encoder_module, encoder_spec, example_input
from edgeclip.export.int8.guard import Budget, HeldOut, guarded_quantize
from edgeclip.export.int8.onnxruntime import compute_ranges, quantizable_nodes, quantize_static_qdq
from edgeclip.export.reference import export_onnx, run_in_onnxruntime
from edgeclip.export.tensorrt import check_ops
from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.runtime import ZeroShotClassifier
from tests.conftest import TINY_CLASSES, ort_optimized_graph, run_cli
from tests.export.test_guard import README_MAX_DROP, README_MIN_COSINE, check_saved_graph
from tests.export.test_openvino import assert_converted_from_torch, runtime_fake_quantize

CALIB = {"calib": "builtin:shapes", "calib_size": 64}
LABELS = {"default": (TINY_CLASSES, None)}


@pytest.fixture(scope="module", autouse=True)
def calib_cache(tmp_path_factory: pytest.TempPathFactory) -> object:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGECLIP_CACHE", str(tmp_path_factory.mktemp("calib-cache")))
        yield


@pytest.fixture(scope="module")
def int8_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    out = tmp_path_factory.mktemp("int8") / "b.edgeclip"
    export_bundle(tiny_checkpoint, out, targets=["onnx", "openvino", "tensorrt"], precision="int8",
                  labels=LABELS, options=CALIB)
    export_bundle(tiny_checkpoint, out, targets=["onnx"], precision="int8-dynamic", labels=LABELS, options=CALIB)
    return Bundle.open(out)


def test_every_int8_artifact_records_calibration_and_meets_the_budget(int8_bundle: Bundle) -> None:
    keys = {a.key for a in int8_bundle.manifest.artifacts}
    assert keys == {f"{e}/{t}" for e in ("image", "text")
                    for t in ("onnx-int8", "openvino-int8", "tensorrt-int8", "onnx-int8-dynamic")}
    for a in int8_bundle.manifest.artifacts:
        c = a.calibration
        assert c is not None, a.key
        m = c.measured
        assert README_MIN_COSINE <= m.cosine_min <= m.cosine_p1 <= m.cosine_mean <= 1 + 1e-9
        assert c.method == ("dynamic" if a.precision == "int8-dynamic" else "minmax")
        assert len(c.data_sha256) == 64 and c.heldout_size == m.heldout_size > 0
        # CLIP-aware float defaults: either kept float or measured safe and quantized
        assert c.excluded_layers or c.float_defaults_measured_safe
        assert c.guard["min_cosine"] == README_MIN_COSINE and c.guard["max_accuracy_drop"] == README_MAX_DROP
        if a.encoder == "image":  # builtin:shapes: true labels, a separate held-out split of 400 (README)
            assert c.size == CALIB["calib_size"] and m.heldout_size == 400
            assert m.top1_drop is not None and m.top1_drop <= README_MAX_DROP
            assert m.top1_drop_measured_as and m.top1_drop_measured_as.startswith("accuracy against true labels")
            assert any("fewer than 100" in w for w in c.warnings)
        else:
            assert c.inputs == "texts" and m.top1_drop is None
        assert a.validation.passed
    int8_bundle.verify()


def test_graphs_are_quantized_as_each_target_needs(int8_bundle: Bundle, tmp_path: Path) -> None:
    for a in int8_bundle.manifest.find("image"):
        if a.target == "openvino":
            assert 'element_type="i8"' in (int8_bundle.root / a.main_file).read_text()
            assert_converted_from_torch(int8_bundle.artifact_path(a), layers=2)
            # a fused q/k/v projection leaves SDPA's query and key FakeQuantize standalone: 2 per block
            assert runtime_fake_quantize(int8_bundle.artifact_path(a)) < 2 * 2
            continue
        g = onnx.load(str(int8_bundle.artifact_path(a)))
        ops = {n.op_type for n in g.graph.node}
        # which layers are float and which quantized: test_every_saved_int8_graph_keeps_in_float_...
        if a.precision == "int8-dynamic":
            assert "DynamicQuantizeLinear" in ops and "MatMulInteger" in ops
            continue
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        # Q/DQ on the inputs of MatMul only: a float output lets onnxruntime run one
        # MatMulIntegerToFloat, and it is where TensorRT's explicit quantization wants Q/DQ
        producer = {o: n.op_type for n in g.graph.node for o in n.output}
        assert not [n.name for n in g.graph.node
                    if n.op_type == "QuantizeLinear" and producer.get(n.input[0]) in ("MatMul", "Gemm")]
        if a.target == "onnx":
            run = ort_optimized_graph(int8_bundle.artifact_path(a), tmp_path)
            assert "MatMulIntegerToFloat" in {n.op_type for n in run.node}
            # no int8 weight is dequantized at run time (a Conv without output Q/DQ falls back to that)
            weights = {i.name for i in run.initializer}
            assert not [n.input[0] for n in run.node if n.op_type == "DequantizeLinear" and n.input[0] in weights]
        if a.target == "tensorrt":
            check_ops(g)  # Q/DQ is in TensorRT's list; no other domains
            inits = {i.name: numpy_helper.to_array(i) for i in g.graph.initializer}
            zps = [inits[n.input[2]] for n in g.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
            assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)  # symmetric, zero point 0
            script = (int8_bundle.root / a.path / "build_engine.sh").read_text()
            assert "--int8" in script and "--fp16" in script
            assert a.environment.details["fp32_layers"] and a.validation.details["op_check"]["unsupported"] == []


def test_every_saved_int8_graph_keeps_in_float_exactly_what_its_manifest_says(int8_bundle: Bundle) -> None:
    """Both towers, every INT8 target, read from the files in the bundle (the guard's own
    artifacts under a guard that acted are checked in test_guard.py)."""
    assert len(int8_bundle.manifest.artifacts) == 8
    for a in int8_bundle.manifest.artifacts:
        check_saved_graph(a, int8_bundle.artifact_path(a))


def test_runtime_picks_and_runs_int8(int8_bundle: Bundle) -> None:
    clf = ZeroShotClassifier.load(int8_bundle.root, backend="onnxruntime", precision="int8")
    images = [ShapesDataset("heldout", 4, 40)[i].image for i in range(4)]
    assert len(clf.classify(images)) == 4


def test_inspect_shows_the_int8_gate_not_the_probes(int8_bundle: Bundle) -> None:
    """INT8 probe figures include noise images no calibration covers: inspect must not present them
    as the artifact's accuracy, but the held-out figure that gated it."""
    proc = run_cli("inspect", str(int8_bundle.root))
    assert proc.returncode == 0, proc.stderr
    int8_lines = [line for line in proc.stdout.splitlines() if "-int8 " in line]
    assert int8_lines and all("held-out cos_min" in ln and "informational" in ln for ln in int8_lines)


def test_guard_repairs_a_budget_naive_int8_breaks(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """All op types quantized (not just MatMul/Gemm/Conv) break a tight budget; the guard ranks the
    layers and keeps the most harmful in float until the budget holds."""
    model, info = load_checkpoint(tiny_checkpoint)
    spec = encoder_spec("image", info)
    src = tmp_path / "fp32.onnx"
    export_onnx(encoder_module("image", model), example_input("image", info), spec, src)
    data = [np.stack([np.asarray(ShapesDataset("train", 64, 32)[i].image, np.float32).transpose(2, 0, 1) / 255
                      for i in range(k, k + 8)]) for k in range(0, 64, 8)]
    held_x = np.stack([np.asarray(ShapesDataset("heldout", 48, 32)[i].image, np.float32).transpose(2, 0, 1) / 255
                       for i in range(48)])
    held = HeldOut(held_x, run_in_onnxruntime(src, spec)(held_x))
    ranges = compute_ranges(src, spec.input_name, data, "minmax", None, tmp_path / "ranges.json")
    dst = tmp_path / "int8.onnx"

    def quantize(excluded: list[str]):  # type: ignore[no-untyped-def]
        quantize_static_qdq(src, dst, ranges, "minmax", excluded, op_types=None)
        return run_in_onnxruntime(dst, spec)

    naive = guarded_quantize(quantize, [], [], held, Budget(README_MAX_DROP, min_cosine=0.0), "naive")
    budget = Budget(README_MAX_DROP, min_cosine=1 - (1 - naive.metrics["cosine_min"]) / 4)  # a quarter of naive's error
    assert naive.metrics["cosine_min"] < 0.9999  # every op type quantized really costs accuracy
    result = guarded_quantize(quantize, quantizable_nodes(src, None), [], held, budget, "guarded")
    assert result.excluded_by_guard and result.metrics["cosine_min"] >= budget.min_cosine
    assert set(result.sensitivity) == set(quantizable_nodes(src, None))


def test_guard_acts_through_export_with_a_tight_min_cosine(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.edgeclip"
    r = export_bundle(tiny_checkpoint, out, targets=["onnx"], precision="int8", encoders=["image"], labels=LABELS,
                      options={**CALIB, "min_cosine": 0.99999})
    c = r.artifacts[0].calibration
    assert c is not None and c.excluded_by_guard and c.measured.cosine_min >= 0.99999
    assert set(c.excluded_by_guard) <= set(c.guard["sensitivity"])


def test_int8_refusals_are_typed_and_write_nothing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs calibration images.*never calibrates on random data"):
        export_bundle(tiny_checkpoint, tmp_path / "b", targets=["onnx"], precision="int8")
    with pytest.raises(ConfigError, match="target 'coreml' does not support precision 'int8'"):
        export_bundle(tiny_checkpoint, tmp_path / "b", targets=["coreml"], precision="int8", options=CALIB)
    with pytest.raises(ConfigError, match="--calib-method"):
        export_bundle(tiny_checkpoint, tmp_path / "b", targets=["onnx"], precision="int8",
                      options={**CALIB, "calib_method": "kl"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        export_bundle(tiny_checkpoint, tmp_path / "b", targets=["onnx"], precision="int8",
                      options={"calib": str(tmp_path / "empty")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_cli_int8_errors_exit_cleanly(tiny_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    cases = [
        (["--target", "coreml", "--precision", "int8", "--calib", "builtin:shapes"], 2, "does not support precision"),
        (["--target", "onnx", "--precision", "int8", "--calib", str(tmp_path / "empty")], 1, "holds no images"),
    ]
    for args, code, message in cases:
        r = run_cli("export", str(tiny_checkpoint), *args, "--out", str(tmp_path / "b"))
        assert r.returncode == code, r.stderr
        assert "Error:" in r.stderr and message in r.stderr and "Traceback" not in r.stderr


def test_artifact_calibration_round_trips(int8_bundle: Bundle) -> None:
    a = int8_bundle.manifest.find("image", "onnx", "int8")[0]
    again = Artifact.from_dict(a.to_dict())
    assert again.calibration == a.calibration
