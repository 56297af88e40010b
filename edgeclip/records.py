"""Typed records inside a manifest's artifact entry: how the artifact was validated (`Validation`),
what it was built with (`Environment`) and, for INT8, what it was calibrated on (`Calibration`).

On disk each record is the flat JSON object that schema v1 has always written. Loading checks the
type of every field it knows and refuses a wrong one with a BundleError that names the field; a
missing required field is refused the same way. Keys a record does not know are kept, in `details`,
and written back flat beside the known ones. That keeps two kinds of facts without a schema change:
facts only one target records (TensorRT's `op_check`, CoreML's `spec`, package versions), and
fields that a newer edgeclip writes, which survive a load and save by this version. Optional fields
that are None are not written (an explicit null there reads as absent).

Known fields are written first, in the order v1 writers used, then `details`; so a v1 manifest saves
back byte for byte, except that the typed keys of a TensorRT or CoreML environment move to its front.
Records are frozen; `details` is the one mutable part, where an exporter adds a target's facts
before the artifact is registered.

Standard library only: the device side imports this through `edgeclip.bundle`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar, get_args, get_origin

from edgeclip.errors import BundleError

R = TypeVar("R")
FIX = "re-export the bundle with `edgeclip export`, or correct that field in manifest.json"


class Record:
    """from_dict / to_dict for the records below (see the module docstring for the rules)."""

    @classmethod
    def from_dict(cls, d: Any, where: str = "record") -> Self:
        return from_dict(cls, d, where)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@dataclass(frozen=True, kw_only=True)
class Measured(Record):
    """Embeddings of an artifact against the fp32 reference on held-out inputs (the INT8 budget)."""

    heldout_size: int
    cosine_min: float
    cosine_p1: float
    cosine_mean: float
    top1_agreement: float | None = None  # with label embeddings
    top1_fp32: float | None = None  # with true labels
    top1_int8: float | None = None
    top1_drop: float | None = None  # points
    top1_drop_measured_as: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Validation(Record):
    """How an artifact was checked against the torch fp32 reference before it was registered.

    `passed` is True when it met its threshold (or, for INT8, its held-out budget) and None when it
    could not run where it was exported (CoreML off macOS: only its spec was checked); a failed
    artifact is never registered. `passed` and `checked_with` are always written.
    """

    probes: int | None = None  # number of probe inputs
    batch_sizes: tuple[int, ...] | None = None
    cosine_min: float | None = None  # on the probes, worst over the batch sizes
    cosine_mean: float | None = None
    max_abs: float | None = None
    top1_agreement: float | None = None  # same label as torch on the probes (image encoders)
    probes_role: str | None = None  # INT8: the probe figures are informational
    heldout: Measured | None = None  # INT8: the figures the gate judged
    gate: dict[str, float] | None = None  # INT8: the budget (min_cosine, max_accuracy_drop)
    threshold_cosine: float | None = None  # other precisions: the probe cosine needed
    passed: bool | None = None
    checked_with: str = ""
    details: dict[str, Any] = field(default_factory=dict)  # e.g. op_check (TensorRT), spec (CoreML)


@dataclass(frozen=True, kw_only=True)
class Environment(Record):
    """What an artifact was built with. Typed here: what a runtime backend reads back. Package
    versions and other target facts (opset, onnx, openvino, coremltools, ...) stay in `details`."""

    profile: dict[str, Any] | None = None  # TensorRT: the optimisation profile engines are built with
    workspace_bytes: int | None = None  # TensorRT: builder workspace
    max_batch: int | None = None  # CoreML: the largest batch of a flexible-batch model
    image_input: dict[str, Any] | None = None  # CoreML: the image input's colour layout and scaling
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Calibration(Record):
    """An INT8 artifact's calibration: the data, which layers stayed float, what the guard measured."""

    method: str  # minmax | percentile | entropy ...
    size: int  # calibration inputs used
    data_sha256: str
    source: str
    inputs: str  # "images" | "texts"
    heldout_size: int
    skipped_images: int
    excluded_layers: list[str]  # every layer left in float
    excluded_by_default: list[str]
    excluded_by_guard: list[str]
    float_defaults_measured_safe: list[str] | None = None  # absent in bundles before 2026-11-27
    guard: dict[str, Any]  # its budget, attempts, per-layer sensitivity and group scores
    measured: Measured
    warnings: list[str]
    details: dict[str, Any] = field(default_factory=dict)  # quantizer, scheme, op_types, ...


def from_dict(cls: type[R], d: Any, where: str) -> R:
    """Build record `cls` from its JSON object, checking each known field's type; `where` names the
    record in errors (e.g. "manifest.json: artifact image/onnx-int8 calibration")."""
    if not isinstance(d, dict):
        raise BundleError(f"{where} must be a JSON object, got {_kind(d)}", fix=FIX)
    hints = typing.get_type_hints(cls)
    known = [f for f in dataclasses.fields(cls) if f.name != "details"]  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for f in known:
        if f.name in d:
            values[f.name] = _typed(d[f.name], hints[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise BundleError(f"{where} lacks the field '{f.name}'", fix=FIX)
    names = {f.name for f in known}
    values["details"] = {k: v for k, v in d.items() if k not in names}
    return cls(**values)


def to_dict(record: Any) -> dict[str, Any]:
    """The flat JSON object of a record: known fields in order (None ones left out, except those
    always written), then `details`."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.name == "details":
            out.update(value)
        elif dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif value is not None or f.name in ALWAYS_WRITTEN.get(type(record), ()):
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


ALWAYS_WRITTEN: dict[type, tuple[str, ...]] = {Validation: ("passed", "checked_with")}


def _typed(value: Any, hint: Any, where: str, shown: Any = None) -> Any:
    """`value` as type `hint` (ints widen to float, lists to tuples), or a BundleError naming `where`
    and the type `shown` (the field's whole type, when `hint` is the non-null part of an optional)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _typed(value, inner, where, shown=hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)  # type: ignore[arg-type]
    ok, converted = _check(value, origin or hint, args)
    if not ok:
        raise BundleError(f"{where} must be {_describe(shown or hint)}, got {_kind(value)}", fix=FIX)
    return converted


def _check(value: Any, kind: Any, args: tuple[Any, ...]) -> tuple[bool, Any]:
    if kind is Any:
        return True, value
    if kind is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number, float(value) if number else value
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind in (str, bool):
        return isinstance(value, kind), value
    if kind is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return False, value
        if not args or args[1] is Any:
            return True, value
        checked = {k: _check(v, args[1], ()) for k, v in value.items()}  # e.g. the gate's numbers
        return all(ok for ok, _ in checked.values()), {k: v for k, (_, v) in checked.items()}
    if kind in (list, tuple) and isinstance(value, list):
        item = args[0]
        if item is not Any and not all(_check(v, item, ())[0] for v in value):
            return False, value
        return True, [_check(v, item, ())[1] for v in value] if kind is list else tuple(value)
    return False, value


def _describe(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {PLURALS.get(args[0], 'values')}"
    if origin is dict and args[1] is not Any:
        return f"an object of {PLURALS.get(args[1], 'values')}"
    return NAMES.get(origin or hint, getattr(hint, "__name__", str(hint)))


NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object",
         type(None): "null"}
PLURALS = {str: "strings", int: "integers", float: "numbers"}


def _kind(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"
