"""The fp32 ONNX reference carries no trace of the machine that exported it: the same code and
weights give the same bytes from any checkout, so manifests compare equal across versions
(benchmarks/manifest_compare.py) and an artifact does not leak the build machine's paths."""

from __future__ import annotations

from pathlib import Path

import onnx

import edgeclip

SOURCE_ROOT = str(Path(edgeclip.__file__).resolve().parents[1])


def test_exported_graphs_hold_no_source_paths_or_stack_traces(tiny_bundle: Path) -> None:
    for encoder in ("image", "text"):
        path = tiny_bundle / encoder / "onnx-fp32" / "model.onnx"
        assert SOURCE_ROOT.encode() not in path.read_bytes(), f"{path} names {SOURCE_ROOT}"
        model = onnx.load(str(path))
        keys = {p.key for n in model.graph.node for p in n.metadata_props}
        assert keys and not any("stack_trace" in k for k in keys), keys  # other exporter metadata is kept
