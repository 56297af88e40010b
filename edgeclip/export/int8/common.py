"""What every INT8 quantizer shares: options, calibration inputs per encoder, held-out data with fp32
references, and the manifest's calibration record.

A target calls `encoder_data(ctx, spec)` and hands the guard a `quantize(excluded) -> run`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeclip.bundle import Calibration
from edgeclip.calibration.cache import DEFAULT_SIZE, FEW_IMAGES, HELDOUT_FRACTION, CalibrationSet, load_calibration_set
from edgeclip.calibration.listing import SELECTION_SEED
from edgeclip.errors import ConfigError
from edgeclip.export.encoders import EncoderSpec
from edgeclip.export.int8.guard import Budget, GuardResult, HeldOut
from edgeclip.export.reference import reference_onnx, run_in_onnxruntime
from edgeclip.export.targets import ExportContext
from edgeclip.runtime.tokenizer import TextTokenizer

INT8_PRECISIONS = ("int8", "int8-dynamic")
DYNAMIC_HELDOUT_SOURCE = "builtin:shapes"  # what the guard measures int8-dynamic on without --calib
CALIB_BATCH = 8
METHODS = ("minmax", "percentile", "entropy")  # --calib-method: every quantizer maps each of them


@dataclass(frozen=True)
class Int8Options:
    calib: str | None
    calib_size: int
    method: str
    budget: Budget
    speed_pass: bool = True  # leave in float the kinds of layers measured slower in int8 (speed.py)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Int8Options:
        method = str(options.get("calib_method") or "minmax")
        if method not in METHODS:
            raise ConfigError(f"unknown --calib-method '{method}'", fix=f"use one of: {', '.join(METHODS)}")
        drop = _number(options, "max_accuracy_drop", 1.0)
        cos = _number(options, "min_cosine", 0.995)
        if drop < 0 or not 0 < cos <= 1:
            raise ConfigError("--max-accuracy-drop must be >= 0 and --min-cosine in (0, 1]")
        size = int(options.get("calib_size") or DEFAULT_SIZE)
        calib = options.get("calib")
        return cls(str(calib) if calib else None, size, method, Budget(drop, cos), not options.get("no_speed_pass"))


def _number(options: Mapping[str, Any], key: str, default: float) -> float:
    value = options.get(key)
    return default if value is None else float(value)


def check_int8_plan(plan: list[tuple[str, str]], options: Mapping[str, Any]) -> None:
    """Refuse, before any work, INT8 with activation quantization but no calibration data."""
    if not any(p in INT8_PRECISIONS for _, p in plan):
        return
    opts = Int8Options.from_options(options)
    static = sorted({t for t, p in plan if p == "int8"})
    if static and not opts.calib:
        raise ConfigError(
            f"--precision int8 for {', '.join(static)} quantizes activations and needs calibration images; "
            "none were given (edgeclip never calibrates on random data)",
            fix="add --calib FOLDER|FILE.csv|FILE.tar|builtin:shapes (a few hundred representative images)",
        )


def preload_calibration(ctx: ExportContext, plan: list[tuple[str, str]]) -> None:
    """Read the calibration source before any graph is exported, so a bad source fails fast."""
    precisions = {p for _, p in plan if p in INT8_PRECISIONS}
    if precisions:
        calibration_set(ctx, dynamic=precisions == {"int8-dynamic"})


@dataclass
class EncoderData:
    """Calibration batches and held-out data of one encoder."""

    calibration: list[np.ndarray]
    heldout: HeldOut
    source: dict[str, Any]  # summary for the manifest
    warnings: list[str] = field(default_factory=list)


def calibration_set(ctx: ExportContext, dynamic: bool = False) -> CalibrationSet:
    """The run's calibration set (preprocessed once, cached on disk, shared by every target)."""
    opts = Int8Options.from_options(ctx.options)
    spec = opts.calib or (DYNAMIC_HELDOUT_SOURCE if dynamic else None)
    if spec is None:
        raise ConfigError("INT8 with activation quantization needs --calib",
                          fix="add --calib builtin:shapes or an image folder")
    key = f"calib/{spec}/{opts.calib_size}"
    if key not in ctx.cache:
        ctx.cache[key] = load_calibration_set(spec, ctx.info.preprocess, opts.calib_size)
    data: CalibrationSet = ctx.cache[key]
    return data


def encoder_data(ctx: ExportContext, spec: EncoderSpec, dynamic: bool = False) -> EncoderData:
    key = f"int8-data/{spec.name}/{dynamic}"
    if key not in ctx.cache:
        calib = calibration_set(ctx, dynamic)
        build = _image_data if spec.name == "image" else _text_data
        ctx.cache[key] = build(ctx, spec, calib)
    data: EncoderData = ctx.cache[key]
    return data


def _batches(x: np.ndarray) -> list[np.ndarray]:
    return [x[i : i + CALIB_BATCH] for i in range(0, len(x), CALIB_BATCH)]


def _fp32(ctx: ExportContext, spec: EncoderSpec, x: np.ndarray) -> np.ndarray:
    run = run_in_onnxruntime(reference_onnx(ctx, spec), spec)
    return np.concatenate([run(b) for b in _batches(x)]).astype(np.float32)


def _image_data(ctx: ExportContext, spec: EncoderSpec, calib: CalibrationSet) -> EncoderData:
    truth = None
    if ctx.label_classes and calib.heldout_labels and all(c in ctx.label_classes for c in calib.heldout_labels):
        truth = np.array([ctx.label_classes.index(c) for c in calib.heldout_labels])
    held = HeldOut(calib.heldout, _fp32(ctx, spec, calib.heldout), ctx.label_embeddings, truth)
    source = {**calib.summary(), "inputs": "images"}
    return EncoderData(_batches(calib.images), held, source, list(calib.warnings))


def _text_data(ctx: ExportContext, spec: EncoderSpec, calib: CalibrationSet) -> EncoderData:
    """Label-set prompts plus the source's captions; a seeded 20 % of them held out."""
    texts = list(dict.fromkeys([*ctx.label_prompts, *calib.captions]))
    if len(texts) < 2:
        raise ConfigError(
            "the text tower's INT8 calibration needs prompts or captions: none were found",
            fix="pass --labels (their prompts calibrate the text tower), use a csv with a caption column, "
                "or export --encoders image",
        )
    order = np.random.default_rng(SELECTION_SEED).permutation(len(texts))
    n_held = max(1, round(len(texts) * HELDOUT_FRACTION))
    ids = TextTokenizer(ctx.info.tokenizer_path, ctx.info.tokenizer)([texts[i] for i in order])
    calib_ids, held_ids = ids[:-n_held], ids[-n_held:]
    held = HeldOut(held_ids, _fp32(ctx, spec, held_ids))
    source = {**calib.summary(), "inputs": "texts", "size": len(calib_ids), "heldout_size": len(held_ids),
              "label_prompts": len(ctx.label_prompts), "captions": len(calib.captions)}
    warnings = [w for w in calib.warnings if "unreadable" in w]
    if len(calib_ids) < FEW_IMAGES:
        warnings.append(f"only {len(calib_ids)} calibration texts (fewer than {FEW_IMAGES}): activation ranges "
                        "may be noisy")
    return EncoderData(_batches(calib_ids), held, source, warnings)


def calibration_record(
    method: str, data: EncoderData, result: GuardResult, budget: Budget, defaults: list[str], **extra: Any
) -> Calibration:
    """Artifact.calibration: what was calibrated on, what stayed float, what the guard measured;
    `extra` (quantizer, scheme, ...) goes into its details."""
    src = data.source
    return Calibration.from_dict({
        "method": method,
        "size": src["size"],
        "data_sha256": src["data_sha256"],
        "source": src["source"],
        "inputs": src["inputs"],
        "heldout_size": result.metrics["heldout_size"],
        "skipped_images": src["skipped_images"],
        "excluded_layers": result.excluded,
        # every layer in float is there for one reason: by default, by the guard, or for speed
        "excluded_by_default": [n for n in result.excluded if n in defaults and n not in result.excluded_for_speed],
        "excluded_by_guard": result.excluded_by_guard,
        "excluded_for_speed": result.excluded_for_speed,
        "float_defaults_measured_safe": [n for n in result.defaults_quantized if n not in result.excluded],
        "guard": {"max_accuracy_drop": budget.max_accuracy_drop, "min_cosine": budget.min_cosine,
                  "attempts": result.attempts, "sensitivity": result.sensitivity, "groups": result.groups,
                  "speed": result.speed},
        "measured": result.metrics,
        "warnings": data.warnings,
        **extra,
    }, f"the {method} calibration record")
