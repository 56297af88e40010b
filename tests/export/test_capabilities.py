"""The capability table decides what `edgeclip export` accepts; nothing is silently rewritten."""

from __future__ import annotations

import pytest

from edgeclip.errors import ConfigError, UnknownNameError
from edgeclip.export.capabilities import CAPABILITIES, markdown_table, plan_exports
from edgeclip.export.targets import TARGETS
from edgeclip.runtime.backends import BACKENDS, backend_class, backend_target, target_backend


def test_table_covers_every_target_and_backend() -> None:
    assert set(CAPABILITIES) == set(TARGETS)
    assert {c.backend for c in CAPABILITIES.values()} <= set(BACKENDS)
    table = markdown_table()
    assert all(f"| {t} |" in table for t in CAPABILITIES)


def test_target_to_backend_map_is_one_fact_shared_by_export_and_runtime() -> None:
    expected = {"onnx": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt", "coreml": "coreml",
                "litert": "litert", "rknn": "rknn"}
    assert {t: c.backend for t, c in CAPABILITIES.items()} == expected
    # the runtime picks artifacts by the same map, read in the other direction
    assert {backend_target(b): b for b in BACKENDS} == expected
    assert all(target_backend(t) == b for t, b in expected.items())
    # and no backend class keeps a copy of its own
    assert not [b for b in BACKENDS if hasattr(backend_class(b), "target")]
    with pytest.raises(UnknownNameError, match="did you mean 'onnx'"):
        target_backend("onnxx")


def test_default_precision_is_each_targets_first() -> None:
    assert plan_exports(["onnx", "coreml"], None) == [("onnx", "fp32"), ("coreml", "fp16")]


def test_all_takes_what_each_target_supports() -> None:
    plan = plan_exports(["all"], ["fp32", "fp16", "int8w"])
    assert ("onnx", "fp16") in plan and ("openvino", "fp32") in plan and ("coreml", "int8w") in plan
    assert ("onnx", "int8w") not in plan


def test_all_leaves_out_targets_that_need_their_own_environment_or_a_required_option() -> None:
    """`--target all` works on a plain `[all]` install: litert needs litert-torch (the opt-in
    `litert-export` extra) and rknn its own toolkit venv plus --rknn-platform, so both are named."""
    targets = {t for t, _ in plan_exports(["all"], None)}
    assert targets == {"onnx", "openvino", "tensorrt", "coreml"}


def test_refusals_name_what_is_supported() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'tensorrt'"):
        plan_exports(["tensorrtt"], None)
    with pytest.raises(ConfigError, match="target 'onnx' does not support precision 'palette4'") as e:
        plan_exports(["onnx"], ["palette4"])
    assert "fp32, fp16" in str(e.value)
    with pytest.raises(ConfigError, match="no requested target supports precision 'int4'"):
        plan_exports(["all"], ["int4"])
    with pytest.raises(ConfigError, match="--coreml-target does not apply.*\\n.*coreml"):
        plan_exports(["onnx"], None, {"coreml_target": "iOS17"})
    assert plan_exports(["onnx", "coreml"], None, {"coreml_target": "iOS17"})


def test_int8_precisions_and_options() -> None:
    assert plan_exports(["onnx"], ["int8", "int8-dynamic"], {"calib": "builtin:shapes"}) == [
        ("onnx", "int8"), ("onnx", "int8-dynamic")]
    assert plan_exports(["all"], ["int8"], {"calib": "x", "min_cosine": 0.99}) == [
        ("onnx", "int8"), ("openvino", "int8"), ("tensorrt", "int8"), ("coreml", "fp16")]
    assert plan_exports(["litert", "rknn"], ["int8"], {"calib": "x"}) == [("litert", "int8"), ("rknn", "int8")]
    with pytest.raises(ConfigError, match="target 'coreml' does not support precision 'int8'"):
        plan_exports(["coreml"], ["int8"])
    with pytest.raises(ConfigError, match="target 'openvino' does not support precision 'int8-dynamic'"):
        plan_exports(["openvino"], ["int8-dynamic"])
    with pytest.raises(ConfigError, match="--calib does not apply to target\\(s\\) coreml"):
        plan_exports(["coreml"], None, {"calib": "builtin:shapes"})
    # the speed pass times artifacts on this host's backend: only onnx (onnxruntime) and openvino
    assert plan_exports(["onnx", "openvino"], ["int8"], {"calib": "x", "no_speed_pass": True})
    with pytest.raises(ConfigError, match="--no-speed-pass does not apply.*\n.*onnx, openvino"):
        plan_exports(["tensorrt", "litert"], ["int8"], {"calib": "x", "no_speed_pass": True})


def test_readme_table_is_generated_from_the_capability_table() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("<!-- capabilities:start -->")[1].split("<!-- capabilities:end -->")[0]
    assert block.strip() == markdown_table().strip(), "README is stale: paste markdown_table() output"
