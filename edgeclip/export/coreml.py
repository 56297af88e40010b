"""CoreML target: one ML Program `.mlpackage` per encoder, iOS16+ by default.

Route: `torch.export` -> `ct.convert(ExportedProgram)`. coremltools 9's `torch.jit.trace` route
breaks on numpy >= 2.4 ("only 0-dimensional arrays can be converted to Python scalars"); the
torch.export route works with any numpy, so numpy stays unpinned for this target.

Prediction needs macOS, so on Linux the artifact is checked through its saved spec (names,
shapes, dtypes, specification version, weight storage) and `validation["passed"]` stays None;
on macOS it is also run through the runtime's CoreMLBackend and compared with torch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeclip import _deps
from edgeclip.errors import ConfigError, ExportError
from edgeclip.export.encoders import BATCH, EncoderSpec, example_input, export_module, fixed_batch
from edgeclip.export.int8.coreml import PALETTE_BITS, compress_weights, compression_name
from edgeclip.export.targets import Built, ExportContext, Fallback
from edgeclip.runtime.backends.base import BackendOptions

DEFAULT_TARGET = "iOS16"
# compressed weights (constexpr_* ops) and the fp16 ML Program ops the towers use need iOS16
MIN_SPEC_VERSION = 7
DEFAULT_MAX_BATCH = 64  # upper bound of the batch range when coreml_flexible_batch is just "on"


@dataclass(frozen=True)
class CoreMLOptions:
    target: str  # canonical coremltools name, e.g. "iOS16"
    spec_version: int  # the Core ML specificationVersion that target implies
    max_batch: int | None  # None: fixed batch 1 (keeps the work on the Neural Engine)
    image_input: bool  # image tower takes an RGB CVPixelBuffer instead of a float tensor


def parse_options(options: dict[str, Any]) -> CoreMLOptions:
    """Read the coreml_* options; a bad value raises ConfigError before any conversion."""
    ct = _coremltools()
    members: dict[str, Any] = dict(ct.target.__members__)
    asked = str(options.get("coreml_target") or DEFAULT_TARGET)
    by_lower = {k.lower(): k for k in members}
    if asked.lower() not in by_lower:
        valid = [k for k, v in members.items() if v.value >= MIN_SPEC_VERSION]
        raise ConfigError(
            f"unknown CoreML deployment target '{asked}'",
            fix=f"use one of: {', '.join(valid)}",
        )
    name = by_lower[asked.lower()]
    version = int(members[name].value)
    if version < MIN_SPEC_VERSION:
        raise ConfigError(
            f"CoreML deployment target '{name}' is too old: edgeclip writes ML Programs with fp16 and "
            "compressed weights, which need iOS16 / macOS13 / watchOS9 / tvOS16",
            fix="pass --coreml-target iOS16 (or newer: iOS17, iOS18, macOS13, macOS14, ...)",
        )
    flex = options.get("coreml_flexible_batch")
    if isinstance(flex, bool) or flex is None:
        max_batch = DEFAULT_MAX_BATCH if flex else None
    elif isinstance(flex, int) and flex >= 2:
        max_batch = flex
    else:
        raise ConfigError(
            f"coreml_flexible_batch must be on/off or a maximum batch >= 2, not {flex!r}",
            fix="pass --coreml-flexible-batch (batch range 1..64) or leave it out for a fixed batch of 1",
        )
    return CoreMLOptions(name, version, max_batch, bool(options.get("coreml_image_input")))


# ---- torch side -------------------------------------------------------------------------------
class _PixelEncoder(torch.nn.Module):
    """pixel_values -> image_embeds; with `normalize`, takes RGB in [0, 1] and applies mean/std.

    Why normalise inside: CoreML's ImageType has ONE scalar scale and a per-channel bias, but CLIP's
    std differs per channel, so folding it into ImageType would be approximate (~3 % scale error on
    two channels). Folding it into the first conv instead is exact only for an unpadded patch stem.
    A per-channel sub/div on a 3xSxS tensor is exact for every stem and costs nothing next to the
    tower; ImageType then only rescales 0..255 by the preprocessing's rescale factor (bias 0), exact too.
    """

    def __init__(self, encoder: torch.nn.Module, mean: tuple[float, ...] | None, std: tuple[float, ...] | None):
        super().__init__()
        self.encoder = encoder
        self.normalize = mean is not None and std is not None
        if self.normalize:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            mean, std = self.get_buffer("mean"), self.get_buffer("std")
            pixel_values = (pixel_values - mean) / std
        out: torch.Tensor = self.encoder(pixel_values)
        return out


class _Int32Ids(torch.nn.Module):
    """input_ids int32 -> text_embeds. CoreML has no int64 tensors at its interface, while the
    torch TextEncoder embeds and argmax-pools int64 ids; the cast happens inside the graph."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.encoder(input_ids.long())
        return out


def _exported_program(ctx: ExportContext, spec: EncoderSpec, opts: CoreMLOptions) -> torch.export.ExportedProgram:
    info = ctx.info
    batch = 2 if opts.max_batch else 1  # a batch-1 example would specialise a dynamic batch away
    g = torch.Generator().manual_seed(0)
    module: torch.nn.Module
    if spec.name == "image":
        s = info.preprocess.image_size
        p = info.preprocess
        norm = (p.mean, p.std) if opts.image_input else (None, None)
        module = _PixelEncoder(export_module("image", ctx.model), *norm).eval()
        example = torch.rand(batch, 3, s, s, generator=g)
    else:  # the tokenizer's rules (start/end tokens, pooling) as every other target's example has them
        module = _Int32Ids(export_module("text", ctx.model)).eval()
        example = example_input("text", info, batch).to(torch.int32)
    dynamic = ({0: torch.export.Dim(BATCH, min=1, max=opts.max_batch)},) if opts.max_batch else None
    ep = torch.export.export(module, (example,), dynamic_shapes=dynamic).run_decompositions({})
    # `.to(same dtype)` / full slices become aten.alias, which coremltools 9 has no converter for;
    # an alias in a functional graph is the identity, so it is dropped.
    for node in list(ep.graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten.alias.default:
            node.replace_all_uses_with(node.args[0])
            ep.graph.erase_node(node)
    ep.graph_module.recompile()
    return ep


# ---- coremltools side -------------------------------------------------------------------------
def _coremltools() -> Any:
    with _quiet():
        return _deps.require("coremltools", extra="coreml", purpose="the coreml export target")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence coremltools' own noise for the duration of a conversion: it logs "torch X not
    tested" and missing native libs (expected off macOS), emits DeprecationWarnings from its own
    registry and draws tqdm bars on stderr with no switch to turn them off. Errors still raise."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"coremltools(\.|$)")
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*treespec.*")
            warnings.filterwarnings("ignore", category=UserWarning, module=r"coremltools(\.|$)")
            # ct.convert leaves its weights TemporaryDirectory to the finalizer, which cleans it
            warnings.filterwarnings("ignore", category=ResourceWarning, message=r"Implicitly cleaning up")
            yield
    finally:
        logger.setLevel(level)


def _interface(spec: EncoderSpec, opts: CoreMLOptions) -> EncoderSpec:
    """The artifact's interface as the manifest records it: batch 1 unless flexible; int32 ids."""
    return fixed_batch(spec, BATCH if opts.max_batch else 1, ids="int32")


def _convert(ctx: ExportContext, spec: EncoderSpec, precision: str, opts: CoreMLOptions) -> Any:
    ct = _coremltools()
    shape = tuple(spec.inputs[0].shape)
    b = ct.RangeDim(1, opts.max_batch, default=1, symbol=BATCH) if opts.max_batch else 1
    if spec.name == "image" and opts.image_input:
        # 0..255 RGB -> the preprocessing's rescale (0..1 for 1/255) exactly; mean/std happen in _PixelEncoder
        inp = ct.ImageType(name=spec.input_name, shape=(b, *shape[1:]), scale=ctx.info.preprocess.rescale_factor,
                           bias=[0.0, 0.0, 0.0],
                           color_layout=ct.colorlayout.RGB)
    else:
        inp = ct.TensorType(name=spec.input_name, shape=(b, *shape[1:]),
                            dtype=np.int32 if spec.name == "text" else np.float32)
    with _quiet():
        try:
            ep = _exported_program(ctx, spec, opts)
            model = ct.convert(
                ep,
                inputs=[inp],
                # fp32 outputs even at fp16 compute: callers never see a dtype change
                outputs=[ct.TensorType(name=spec.output_name, dtype=np.float32)],
                convert_to="mlprogram",
                minimum_deployment_target=getattr(ct.target, opts.target),
                compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
                skip_model_load=True,  # loading needs macOS; the backend loads the saved package
            )
            compressed = compress_weights(model, precision)
            if compressed is not model:
                _discard(model)
            return compressed
        except (ConfigError, ExportError):
            raise
        except Exception as e:  # torch.export and coremltools raise many internal types
            raise ExportError(f"CoreML conversion of the {spec.name} encoder failed: {type(e).__name__}: {e}") from e


# ---- spec check (works everywhere: reads the saved protobuf, needs no Core ML framework) -------
def inspect_package(pkg: Path) -> dict[str, Any]:
    """Facts about a saved .mlpackage: model type, spec version, I/O, and how weights are stored."""
    ct = _coremltools()
    with _quiet():
        spec = ct.utils.load_spec(str(pkg))
    weight_bin = pkg / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    facts: dict[str, Any] = {
        "model_type": spec.WhichOneof("Type"),
        "specification_version": spec.specificationVersion,
        "inputs": [_feature(f) for f in spec.description.input],
        "outputs": [_feature(f) for f in spec.description.output],
        "weight_file_bytes": weight_bin.stat().st_size if weight_bin.is_file() else 0,
    }
    if facts["model_type"] == "mlProgram":
        facts.update(_weight_storage(spec.mlProgram.functions["main"]))
    return facts


def _feature(f: Any) -> dict[str, Any]:
    """One input/output of the spec: an image (color, size) or a tensor (dtype, shape, batch range)."""
    from coremltools.proto import FeatureTypes_pb2

    kind = f.type.WhichOneof("Type")
    if kind == "imageType":
        t = f.type.imageType
        color = FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(t.colorSpace)
        return {"name": f.name, "type": "image", "color": color, "width": t.width, "height": t.height}
    a = f.type.multiArrayType
    return {"name": f.name, "type": "tensor", "dtype": FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(a.dataType),
            "shape": list(a.shape), "range": [[r.lowerBound, r.upperBound] for r in a.shapeRange.sizeRanges]}


def _weight_storage(fn: Any) -> dict[str, Any]:
    """How the ML Program's main function stores its weights: float consts by dtype, int8-quantized
    and palettized tensors, and the largest offset into the weights file."""
    from coremltools.proto import MIL_pb2

    floats = {"FLOAT16": 0, "FLOAT32": 0}
    quantized, palettes, max_offset = 0, [], -1
    for op in fn.block_specializations[fn.opset].operations:
        # iOS16/17 constexpr ops keep their tensors in attributes, iOS18 ones in inline inputs
        values = list(op.attributes.items()) + [
            (k, a.value) for k, arg in op.inputs.items() for a in arg.arguments if a.HasField("value")
        ]
        for role, v in values:
            if not v.HasField("blobFileValue"):
                continue
            max_offset = max(max_offset, v.blobFileValue.offset)
            dtype = MIL_pb2.DataType.Name(v.type.tensorType.dataType)
            dims = [d.constant.size for d in v.type.tensorType.dimensions]
            if op.type == "const" and dtype in floats:
                floats[dtype] += 1
            elif op.type in ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale") \
                    and role in ("quantized_data", "data") and dtype == "INT8":
                quantized += 1
            elif op.type == "constexpr_lut_to_dense" and role == "lut":
                # iOS16/17: lut [2^n]; iOS18: [..., 2^n, vector size]
                palettes.append(dims[0] if len(dims) == 1 else dims[-2])
    return {"opset": fn.opset, "float_weights": floats, "int8_weights": quantized, "palettized_weights": len(palettes),
            "palette_sizes": sorted(set(palettes)), "max_blob_offset": max_offset}


def verify_package(facts: dict[str, Any], iface: EncoderSpec, precision: str, spec_version: int, *,
                   max_batch: int | None, image_input: bool, palette_bits: int | None) -> None:
    """Raise ExportError when the saved package is not what this export promised."""
    inp, out = iface.inputs[0], iface.outputs[0]
    problems: list[str] = []

    def want(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    want(facts["model_type"] == "mlProgram", f"model type {facts['model_type']} (expected mlProgram)")
    want(facts["specification_version"] == spec_version,
         f"specificationVersion {facts['specification_version']} (expected {spec_version})")
    ins, outs = facts["inputs"], facts["outputs"]
    want([f["name"] for f in ins] == [inp.name], f"inputs {[f['name'] for f in ins]} (expected [{inp.name}])")
    want([f["name"] for f in outs] == [out.name], f"outputs {[f['name'] for f in outs]} (expected [{out.name}])")
    if ins and image_input:
        want(ins[0]["type"] == "image" and ins[0]["color"] == "RGB", f"input {ins[0]} is not an RGB image")
        want(ins[0].get("width") == inp.shape[-1] == ins[0].get("height"), f"image input size {ins[0]}")
    elif ins:
        dtype = "INT32" if inp.dtype == "int32" else "FLOAT32"
        want(ins[0].get("dtype") == dtype, f"input dtype {ins[0].get('dtype')} (expected {dtype})")
        want(ins[0].get("shape") == [1, *inp.shape[1:]], f"input shape {ins[0].get('shape')}")
        batch_range = ins[0]["range"][0] if ins[0].get("range") else [1, 1]
        want(batch_range == [1, max_batch or 1], f"input batch range {batch_range} (expected [1, {max_batch or 1}])")
    if outs:
        want(outs[0].get("dtype") == "FLOAT32", f"output dtype {outs[0].get('dtype')} (expected FLOAT32)")
    want(facts["weight_file_bytes"] > 0, "the weights file is missing or empty")
    want(facts.get("max_blob_offset", -1) < facts["weight_file_bytes"], "a weight points past the weights file")
    floats = facts.get("float_weights", {})
    stored = "FLOAT32" if precision == "fp32" else "FLOAT16"
    other = "FLOAT16" if precision == "fp32" else "FLOAT32"
    want(floats.get(stored, 0) > 0 or precision not in ("fp16", "fp32"), f"no {stored} weights")
    want(floats.get(other, 0) == 0, f"{floats.get(other)} {other} weights in a {precision} model")
    if precision == "int8w":
        want(facts.get("int8_weights", 0) > 0, "no int8-quantized weights")
    if palette_bits:
        want(facts.get("palettized_weights", 0) > 0, "no palettized weights")
        want(facts.get("palette_sizes") == [2**palette_bits],
             f"palette sizes {facts.get('palette_sizes')} (expected [{2**palette_bits}])")
    if problems:
        raise ExportError(f"the CoreML {iface.name} package does not match its spec: " + "; ".join(problems))


def _discard(model: Any) -> None:
    """Delete the temporary package coremltools keeps until interpreter exit (a model's size)."""
    if getattr(model, "is_temp_package", False) and getattr(model, "package_path", None):
        shutil.rmtree(model.package_path, ignore_errors=True)


def package_files(folder: Path, package: str = "model.mlpackage") -> list[str]:
    """Every regular file of the package, relative to the artifact folder; Manifest.json first, so
    Artifact.main_file points into the package and a backend opens its parent directory."""
    pkg = folder / package
    rest = sorted(p.relative_to(folder).as_posix() for p in pkg.rglob("*") if p.is_file() and p.name != "Manifest.json")
    return [f"{package}/Manifest.json", *rest]


class CoreMLTarget:
    name = "coreml"

    def build(self, ctx: ExportContext, spec: EncoderSpec, precision: str, folder: Path) -> Built:
        opts = parse_options(ctx.options)
        image_input = spec.name == "image" and opts.image_input
        if image_input and opts.max_batch:
            # an image feature is one picture; Core ML batches images only through batch predictions
            raise ConfigError(
                "--coreml-image-input and --coreml-flexible-batch cannot be combined for the image encoder",
                fix="drop one of them (an image input is fed one picture per prediction)",
            )
        iface = _interface(spec, opts)
        pkg = _save(_convert(ctx, iface, precision, opts), folder / "model.mlpackage")
        facts = inspect_package(pkg)
        verify_package(facts, iface, precision, opts.spec_version, max_batch=opts.max_batch,
                       image_input=image_input, palette_bits=PALETTE_BITS.get(precision))
        spec_check = f"CoreML spec check ({facts['model_type']}, spec v{facts['specification_version']}); " \
                     "prediction needs macOS"
        return Built(
            package_files(folder), _environment(ctx, precision, opts, image_input), interface=iface,
            checked_with="CoreML prediction on macOS (CPU_ONLY) + spec check", options=BackendOptions(device="CPU"),
            fallback=Fallback(spec_check), records={"spec": facts},
        )


def _save(model: Any, pkg: Path) -> Path:
    with _quiet():
        model.save(str(pkg))
        _discard(model)
    for item in pkg.rglob("*"):  # coremltools writes model.mlmodel 0600; a bundle is shared read-only data
        item.chmod(0o755 if item.is_dir() else 0o644)
    return pkg


def _environment(ctx: ExportContext, precision: str, opts: CoreMLOptions, image_input: bool) -> dict[str, Any]:
    environment: dict[str, Any] = {
        "coremltools": _coremltools().__version__,
        "torch": torch.__version__,
        "deployment_target": opts.target,
        "specification_version": opts.spec_version,
        "compute_precision": "fp32" if precision == "fp32" else "fp16",
        "batch": "flexible" if opts.max_batch else "fixed",
        "max_batch": opts.max_batch or 1,
        "conversion": "torch.export",
        "compression": compression_name(precision),
    }
    if image_input:
        p = ctx.info.preprocess
        environment["image_input"] = {
            "color_layout": "RGB", "scale": p.rescale_factor, "bias": [0.0, 0.0, 0.0],
            "mean": list(p.mean), "std": list(p.std), "normalization": "inside the model (exact)",
        }
    return environment
