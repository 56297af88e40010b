"""The INT8 accuracy guard, proven on the artifacts it saved rather than on its own report
(issue 13, item 3): the saved graphs keep in float exactly what the manifest says, the held-out
numbers recomputed from the saved files meet the budget, the top-1 budget acts on its own, and
the layer that is harmful by construction is the first one the guard keeps in float.

Budgets come from the README ("INT8": --min-cosine 0.995, --max-accuracy-drop 1.0 point), never
from the code under test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from safetensors.numpy import load_file

from edgeclip.bundle import Artifact, Bundle
from edgeclip.calibration.cache import CalibrationSet, load_calibration_set
from edgeclip.data.shapes import ShapesDataset
from edgeclip.errors import ExportError
from edgeclip.export.driver import export_bundle
from edgeclip.export.encoders import encoder_module, encoder_spec, example_input, export_module
from edgeclip.export.int8.guard import Budget, HeldOut, guarded_quantize
from edgeclip.export.int8.onnxruntime import OP_TYPES, compute_ranges, quantizable_nodes, quantize_static_qdq
from edgeclip.export.reference import export_onnx, run_in_onnxruntime
from edgeclip.model.checkpoint import load_checkpoint, save_checkpoint
from edgeclip.runtime.preprocess import preprocess
from tests.conftest import TINY_CLASSES

README_MIN_COSINE = 0.995  # README, INT8: "if the cosine falls below --min-cosine (0.995)"
README_MAX_DROP = 1.0  # README, INT8: "or zero-shot top-1 drops more than --max-accuracy-drop (1.0 point)"
# Chosen here, tighter than the README default, so that OpenVINO's guard has to act as well
# (NNCF's SmoothQuant absorbs the outlier below well enough for 0.995 with nothing left in float)
TIGHT_MIN_COSINE = 0.9999
CALIB_SOURCE, CALIB_SIZE = "builtin:shapes", 64
CALIB = {"calib": CALIB_SOURCE, "calib_size": CALIB_SIZE}
LABELS = {"default": (TINY_CLASSES, None)}
HARMFUL_BLOCK = 1  # the image tower's block whose MLP gets the activation outlier
OUTLIER = 1000.0


@pytest.fixture(scope="module", autouse=True)
def calib_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGECLIP_CACHE", str(tmp_path_factory.mktemp("calib-cache")))
        yield


@pytest.fixture(scope="module")
def outlier_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with one hidden unit of block HARMFUL_BLOCK's MLP scaled up by OUTLIER
    (and its c_proj column down by as much): the input of that c_proj now has one channel about
    1000x the others, so a per-tensor activation scale leaves the other channels almost no
    levels. Only that c_proj MatMul is hurt: c_fc's weights are quantized per channel and its
    output stays float."""
    model, info = load_checkpoint(tiny_checkpoint)
    mlp: Any = model.get_submodule(f"visual.transformer.resblocks.{HARMFUL_BLOCK}.mlp")
    with torch.no_grad():
        j = int(mlp.c_fc.bias.argmax())  # a unit that is positive (GELU ~ identity) on most tokens
        mlp.c_fc.weight[j] *= OUTLIER
        mlp.c_fc.bias[j] *= OUTLIER
        mlp.c_proj.weight[:, j] /= OUTLIER
    out = tmp_path_factory.mktemp("outlier") / "ckpt"
    save_checkpoint(out, model, info.tokenizer_path, info.preprocess, info.tokenizer)
    return out


@pytest.fixture(scope="module")
def fp32_graph(outlier_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> onnx.GraphProto:
    """The outlier model's image tower as exported to ONNX in float."""
    model, info = load_checkpoint(outlier_checkpoint)
    spec = encoder_spec("image", info)
    path = tmp_path_factory.mktemp("fp32") / "image.onnx"
    export_onnx(export_module("image", model), example_input("image", info), spec, path)
    return onnx.load(str(path)).graph


@pytest.fixture(scope="module")
def harmful_node(outlier_checkpoint: Path, fp32_graph: onnx.GraphProto) -> str:
    """Name of the ONNX node (and OpenVINO op) that runs the outlier block's c_proj, found by its weights."""
    graph = fp32_graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    weight = load_file(str(outlier_checkpoint / "model.safetensors"))[
        f"visual.transformer.resblocks.{HARMFUL_BLOCK}.mlp.c_proj.weight"].T
    names = [n.name for n in graph.node if n.op_type == "MatMul" and len(n.input) > 1
             and inits.get(n.input[1], np.empty(0)).shape == weight.shape and np.allclose(inits[n.input[1]], weight)]
    assert len(names) == 1, names
    return names[0]


@pytest.fixture(scope="module")
def outlier_bundle(outlier_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    out = tmp_path_factory.mktemp("guard") / "b.edgeclip"
    export_bundle(outlier_checkpoint, out, targets=["onnx", "tensorrt", "openvino"], precision="int8",
                  encoders=["image"], labels=LABELS, options={**CALIB, "min_cosine": TIGHT_MIN_COSINE})
    export_bundle(outlier_checkpoint, out, targets=["onnx"], precision="int8-dynamic", encoders=["image"],
                  labels=LABELS, options={**CALIB, "min_cosine": TIGHT_MIN_COSINE})
    return Bundle.open(out)


# ---------------------------------------------------------------------------------------------
# What the saved files contain


def _onnx_quantized_inputs(path: Path) -> dict[str, tuple[bool, bool]]:
    """Per MatMul/Gemm/Conv node of the saved graph: is its activation input, and is its weight
    (second) input, the output of a DequantizeLinear?"""
    graph = onnx.load(str(path)).graph
    dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name: (n.input[0] in dq, n.input[1] in dq) for n in graph.node if n.op_type in OP_TYPES}


def _dynamic_quantized(path: Path) -> dict[str, tuple[bool, bool]]:
    """The same for an int8-dynamic graph: onnxruntime replaces a quantized MatMul NAME by a
    MatMulInteger NAME_quant (activation quantized per batch, weight int8); a MatMul left in
    float keeps its name and its float initializer weight."""
    graph = onnx.load(str(path)).graph
    weights = {i.name for i in graph.initializer}
    layers = {n.name.removesuffix("_quant"): (True, True) for n in graph.node if n.op_type == "MatMulInteger"}
    float_weight = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]
    layers.update({name: (False, False) for name in float_weight})
    return layers


def _saved_layers(a: Artifact, path: Path) -> dict[str, tuple[bool, bool]]:
    if a.target == "openvino":
        return _ov_quantized_inputs(path)
    return _dynamic_quantized(path) if a.precision == "int8-dynamic" else _onnx_quantized_inputs(path)


_OV_PASS_THROUGH = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze", "Squeeze"}


def _ov_is_quantized(node: Any, depth: int = 0) -> bool:
    """Whether a FakeQuantize or an int8/uint8 constant (a compressed quantized weight) feeds
    this value through dequantization-like ops."""
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if kind == "Constant":
        return str(node.get_element_type()) in ("<Type: 'int8_t'>", "<Type: 'uint8_t'>")
    if kind in _OV_PASS_THROUGH and depth < 8:
        return any(_ov_is_quantized(node.input_value(i).get_node(), depth + 1) for i in range(node.get_input_size()))
    return False


def _ov_quantized_inputs(xml: Path) -> dict[str, tuple[bool, bool]]:
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    return {op.get_friendly_name(): tuple(_ov_is_quantized(op.input_value(i).get_node()) for i in (0, 1))  # type: ignore[misc]
            for op in model.get_ordered_ops() if op.get_type_name() in ("MatMul", "Convolution", "GroupConvolution")}


def check_saved_graph(a: Artifact, path: Path) -> None:
    """The saved graph keeps in float exactly the layers `a`'s manifest entry says, and
    quantizes every other MatMul/Gemm/Conv (activation and weight)."""
    assert a.calibration is not None, a.key
    layers = _saved_layers(a, path)
    kept = set(a.calibration.excluded_layers)
    assert kept <= set(layers), f"{a.key}: the manifest names layers the saved graph lacks"
    for name, (activation, weight) in layers.items():
        if name in kept:
            assert not weight, f"{a.key}: {name} is recorded as float but its weight is quantized"
        else:
            assert activation and weight, f"{a.key}: {name} is neither recorded as float nor quantized"


def test_saved_graphs_keep_in_float_exactly_what_the_manifest_says(outlier_bundle: Bundle) -> None:
    artifacts = outlier_bundle.manifest.find("image")
    assert {a.key for a in artifacts} == {f"image/{t}" for t in
                                          ("onnx-int8", "tensorrt-int8", "openvino-int8", "onnx-int8-dynamic")}
    for a in artifacts:
        assert a.calibration is not None and a.calibration.excluded_by_guard, f"{a.key}: the guard was meant to act"
        check_saved_graph(a, outlier_bundle.artifact_path(a))


def run_saved_file(a: Artifact, path: Path, x: np.ndarray) -> np.ndarray:
    """Run the saved file itself in its runtime (OpenVINO with the f32 hint, as the guard measured)."""
    if a.target != "openvino":  # onnx, and TensorRT's Q/DQ graph as onnxruntime runs it
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.asarray(sess.run(None, {a.inputs[0].name: x})[0])
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled(x)[compiled.output(0)])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.asarray((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


def test_heldout_numbers_recomputed_from_the_saved_files_meet_the_budget(
    outlier_bundle: Bundle, outlier_checkpoint: Path
) -> None:
    model, info = load_checkpoint(outlier_checkpoint)
    calib: CalibrationSet = load_calibration_set(CALIB_SOURCE, info.preprocess, CALIB_SIZE)
    held = calib.heldout
    # held out means held out: no held-out image is one of the calibration images
    flat = {row.tobytes() for row in calib.images}
    assert len(held) >= 100 and not any(row.tobytes() in flat for row in held)
    # shapes drawn with a seed that neither calibration nor the guard's held-out split uses
    shapes = ShapesDataset("heldout", 200, info.preprocess.image_size + 11, seed=20261129)
    fresh = np.stack([preprocess(shapes[i].image, info.preprocess) for i in range(200)])
    with torch.no_grad():
        tower = encoder_module("image", model)
        ref_held, ref_fresh = tower(torch.from_numpy(held)).numpy(), tower(torch.from_numpy(fresh)).numpy()
    labels, meta = outlier_bundle.label_set("default")
    assert calib.heldout_labels is not None
    truth = np.array([meta["classes"].index(c) for c in calib.heldout_labels])
    for a in outlier_bundle.manifest.find("image"):
        path = outlier_bundle.artifact_path(a)
        got = run_saved_file(a, path, held)
        cos = cosine(ref_held, got)
        assert cos.min() >= TIGHT_MIN_COSINE, f"{a.key}: saved file's held-out cosine {cos.min():.6f}"
        # the manifest reports this file, not some other attempt of the guard (int8-dynamic takes its
        # activation ranges per batch, and the guard ran smaller batches: a little looser there)
        tolerance = 1e-4 if a.precision == "int8-dynamic" else 1e-5
        assert a.calibration is not None and abs(cos.min() - a.calibration.measured.cosine_min) < tolerance, a.key
        top1_fp32 = ((ref_held @ labels.T).argmax(1) == truth).mean()
        top1_int8 = ((got @ labels.T).argmax(1) == truth).mean()
        assert 100 * (top1_fp32 - top1_int8) <= README_MAX_DROP, a.key
        # and on images neither calibration nor the guard saw, the README's default budget holds
        assert cosine(ref_fresh, run_saved_file(a, path, fresh)).min() >= README_MIN_COSINE, a.key


# ---------------------------------------------------------------------------------------------
# Ranking: the harmful layer goes first


def test_guard_keeps_the_layer_with_the_activation_outlier_in_float_first(
    outlier_bundle: Bundle, harmful_node: str
) -> None:
    # TensorRT's symmetric activations and int8-dynamic's per-batch ranges suffer from it just as much
    for key in ("image/onnx-int8", "image/tensorrt-int8", "image/onnx-int8-dynamic"):
        a = next(a for a in outlier_bundle.manifest.artifacts if a.key == key)
        c = a.calibration
        assert c is not None
        sensitivity = c.guard["sensitivity"]
        ranked = sorted(sensitivity, key=lambda n: -sensitivity[n])
        assert ranked[0] == harmful_node, (key, ranked[:3])
        # by construction it is the only harmful layer: far ahead of the next, and enough on its own
        assert sensitivity[harmful_node] - sensitivity[ranked[1]] > 0.005, key
        # the tower has enough candidates for the coarse-to-fine search: the group of neighbours
        # holding the layer scored best, and only its members were ranked one by one
        groups = c.guard["groups"]
        assert len(groups) > 1, key
        best_group = max(groups, key=lambda g: g["cosine_mean"])
        assert harmful_node in best_group["layers"] and set(sensitivity) == set(best_group["layers"]), key
        assert c.excluded_by_guard == [harmful_node], key
        assert c.measured.cosine_min >= TIGHT_MIN_COSINE, key
        assert not _saved_layers(a, outlier_bundle.artifact_path(a))[harmful_node][1], key  # float in the file


def test_int8_dynamic_ranks_only_layers_it_quantizes(outlier_bundle: Bundle, fp32_graph: onnx.GraphProto) -> None:
    """quantize_dynamic leaves activation x activation MatMuls (attention) in float: the guard
    ranks (alone or in a group of neighbours), and may keep in float, only MatMuls with a weight."""
    c = outlier_bundle.manifest.find("image", "onnx", "int8-dynamic")[0].calibration
    assert c is not None and c.guard["sensitivity"]
    weights = {i.name for i in fp32_graph.initializer}
    with_weight = {n.name for n in fp32_graph.node if n.op_type == "MatMul" and n.input[1] in weights}
    attention = {n.name for n in fp32_graph.node if n.op_type == "MatMul"} - with_weight
    assert attention  # the tower has them, and they are not candidates
    ranked = {name for g in c.guard["groups"] for name in g["layers"]} | set(c.guard["sensitivity"])
    assert ranked == with_weight - set(c.excluded_by_default)


# ---------------------------------------------------------------------------------------------
# The top-1 budget on its own


@pytest.fixture(scope="module")
def image_int8(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny image tower in ONNX, calibrated on built-in shapes; a fixed held-out set."""
    work = tmp_path_factory.mktemp("top1")
    model, info = load_checkpoint(tiny_checkpoint)
    spec = encoder_spec("image", info)
    src = work / "fp32.onnx"
    export_onnx(export_module("image", model), example_input("image", info), spec, src)

    def images(split: str, n: int, seed: int) -> np.ndarray:
        ds = ShapesDataset(split, n, info.preprocess.image_size + 11, seed=seed)  # type: ignore[arg-type]
        return np.stack([preprocess(ds[i].image, info.preprocess) for i in range(n)])

    calib = images("train", 128, 1)
    ranges = compute_ranges(src, spec.input_name, [calib[i : i + 8] for i in range(0, 128, 8)], "minmax",
                            OP_TYPES, work / "ranges.json")
    held = images("heldout", 200, 2)
    return {"src": src, "spec": spec, "ranges": ranges, "dst": work / "int8.onnx", "held": held,
            "reference": run_in_onnxruntime(src, spec)(held)}


def _tie(reference: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Two unit label embeddings, nearly identical (cosine ~0.9998), that differ only along v
    (taken orthogonal to the mean embedding): every image scores them almost equally."""
    mean = reference.mean(0) / np.linalg.norm(reference.mean(0))
    v = v - (v @ mean) * mean
    v = v / np.linalg.norm(v)
    labels = np.stack([mean + 0.01 * v, mean - 0.01 * v])
    return (labels / np.linalg.norm(labels, axis=1, keepdims=True)).astype(np.float32)


def _fragile_labels(reference: np.ndarray, naive: np.ndarray) -> np.ndarray:
    """A tied label pair that the naive INT8 embeddings misclassify on more than twice the
    README's top-1 budget: along the principal directions of the fp32 embeddings, from the most
    used one down, the first pair that fragile. The least fragile such pair, so that keeping a
    few layers in float can restore it (the guard must not need the whole tower in float)."""
    _, _, vt = np.linalg.svd(reference - reference.mean(0), full_matrices=False)
    for v in vt:
        labels = _tie(reference, v)
        flipped = (naive @ labels.T).argmax(1) != (reference @ labels.T).argmax(1)
        if 100 * flipped.mean() > 2 * README_MAX_DROP:
            return labels
    raise AssertionError("no label pair is fragile enough: INT8 of this tower is too exact for the case")


def test_top1_budget_alone_makes_the_guard_keep_layers_in_float(image_int8: dict[str, Any]) -> None:
    d = image_int8
    budget = Budget(max_accuracy_drop=README_MAX_DROP, min_cosine=README_MIN_COSINE)

    def quantize(excluded: list[str]) -> Any:
        quantize_static_qdq(d["src"], d["dst"], d["ranges"], "minmax", excluded)
        return run_in_onnxruntime(d["dst"], d["spec"])

    def saved_file() -> np.ndarray:
        """Embeddings of the held-out images from the file on disk, in a fresh onnxruntime session."""
        import onnxruntime as ort

        sess = ort.InferenceSession(str(d["dst"]), providers=["CPUExecutionProvider"])
        return np.asarray(sess.run(None, {d["spec"].input_name: d["held"]})[0])

    quantize([])
    naive = saved_file()
    labels = _fragile_labels(d["reference"], naive)
    truth = (d["reference"] @ labels.T).argmax(1)  # fp32 is right on every image by definition
    held = HeldOut(d["held"], d["reference"], labels, truth)

    def top1_drop(got: np.ndarray) -> float:
        return 100 * float(((got @ labels.T).argmax(1) != truth).mean())

    assert cosine(d["reference"], naive).min() >= README_MIN_COSINE, "the case needs a cosine the budget accepts"
    assert top1_drop(naive) > README_MAX_DROP, "the case needs a top-1 drop the budget refuses"

    candidates = quantizable_nodes(d["src"], OP_TYPES)
    result = guarded_quantize(quantize, candidates, [], held, budget, "top-1 case")
    # it kept layers in float until top-1 held, and stopped there
    assert result.excluded_by_guard and len(result.excluded_by_guard) < len(candidates)
    got = saved_file()
    assert top1_drop(got) <= README_MAX_DROP and cosine(d["reference"], got).min() >= README_MIN_COSINE
    assert result.metrics["top1_drop"] == pytest.approx(top1_drop(got), abs=1e-6)

    # nothing it may keep in float: a typed error that names the top-1 drop, with a fix
    with pytest.raises(ExportError, match=r"best reached: .*top-1 drop \d") as err:
        guarded_quantize(quantize, [], [], held, budget, "top-1 case")
    assert err.value.fix
