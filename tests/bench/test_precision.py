"""`edgeclip bench` OpenVINO rows name the precision that ran (issue 13 item 5).

On CPUs with AVX-512 BF16 or AMX, OpenVINO's CPU plugin runs float layers in bf16 unless told
otherwise, so an fp32 artifact timed with the default hint is not an fp32 figure. The expected
labels here come from the real compiled model's INFERENCE_PRECISION_HINT, read by the test itself.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edgeclip.bundle import Bundle
from tests.conftest import run_cli

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def ov_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeclip.export.driver import export_bundle

    out = tmp_path_factory.mktemp("ovbundle") / "ov.edgeclip"
    export_bundle(tiny_checkpoint, out, targets=["openvino"], precision="fp32", encoders=["image"])
    return out


def _compiled_hint(bundle: Path, config: dict[str, Any]) -> str:
    """INFERENCE_PRECISION_HINT of the image artifact compiled on this CPU, e.g. "bf16" or "f32"."""
    import openvino as ov

    b = Bundle.open(bundle)
    art = next(a for a in b.manifest.artifacts if a.target == "openvino" and a.encoder == "image")
    compiled = ov.Core().compile_model(str(b.artifact_path(art)), "CPU", {"PERFORMANCE_HINT": "LATENCY", **config})
    return str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())


@pytest.fixture(scope="module")
def cli_run(ov_bundle: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path_factory.mktemp("ovbench") / "r.json"
    proc = run_cli("bench", str(ov_bundle), "--checkpoint", str(tiny_checkpoint), "--encoders", "image",
                   "--batch-sizes", "1", "--runs", "3", "--warmup", "1", "--threads", "1", "--json", str(out),
                   "--no-memory", "--camera-sizes", "1280x720",
                   env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(out.read_text())


def test_openvino_rows_are_labelled_by_the_hint_the_compiled_model_uses(
    ov_bundle: Path, cli_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    _, report = cli_run
    default = _compiled_hint(ov_bundle, {})
    assert _compiled_hint(ov_bundle, {"INFERENCE_PRECISION_HINT": "f32"}) == "f32"
    if {"avx512_bf16", "amx_bf16"} & set(report["machine"]["cpu_flags"]):
        assert default == "bf16"  # the premise of the issue, on the CPUs it names
    ov_rows = [r for r in report["rows"] if r["backend"] == "openvino"]
    for mode in ("model", "end_to_end"):
        got = {r["key"]: r["inference_precision"] for r in ov_rows if r["mode"] == mode}
        want = {f"image/openvino-fp32/b1/{mode}": "f32"}  # the true-f32 row exists on every CPU
        if default != "f32":
            want[f"image/openvino-fp32({default}-hint)/b1/{mode}"] = default
        assert got == want
    for r in ov_rows:
        assert r["precision"] == "fp32"  # the artifact; what ran is in label and inference_precision
        assert r["label"] == r["key"].split("/")[1]


def test_json_records_the_inference_precision_of_every_row(
    cli_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    _, report = cli_run
    assert all("inference_precision" in r for r in report["rows"])
    assert {r["inference_precision"] for r in report["rows"] if r["backend"] == "torch"} == {"f32"}


def test_true_f32_row_matches_torch_fp32(cli_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    """The f32-hint row really ran in f32: fp32 parity with torch (README: 'f32 hint' numerics)."""
    _, report = cli_run
    f32 = next(r for r in report["rows"] if r["key"] == "image/openvino-fp32/b1/model")
    assert f32["cosine_ref"] == "torch-fp32" and f32["cosine_min"] >= 0.99999


def test_terminal_table_shows_the_hint_at_80_columns(
    cli_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    proc, report = cli_run
    assert "…" not in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80
    for r in report["rows"]:
        if r["mode"] == "model":
            assert f"{r['encoder']}/{r['label']}" in proc.stdout


def test_each_row_counts_its_layers_by_the_precision_they_ran_in(
    cli_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    """Issue 18 item 6: the runtime model's layers, read back per row, agree with the row's hint."""
    _, report = cli_run
    for r in (r for r in report["rows"] if r["backend"] == "openvino"):
        assert r["ran_device"] == "CPU" and r["precision_hint"] == r["inference_precision"], r["key"]
        assert set(r["compute_layers"]) == {r["inference_precision"]}, r["key"]
