"""OpenVINO INT8 on MCi (MobileCLIP) towers: the guard's candidates include the depthwise convs.

OpenVINO converts a depthwise conv to GroupConvolution, not Convolution. On a trained edge-mci the
NNCF INT8 image tower missed the --min-cosine budget until some depthwise convs stayed in float,
which the guard could only do once they were among its candidates; the trained-model measurement
is in the families matrix (tests/export/test_families.py, openvino int8, -m slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from edgeclip.bundle import Bundle
from edgeclip.export.driver import export_bundle
from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.model.reparameterize import reparameterize
from edgeclip.train.config import TrainConfig
from edgeclip.train.loop import train

ov = pytest.importorskip("openvino")
ovq = pytest.importorskip("edgeclip.export.int8.openvino")


def test_every_conv_of_an_mci_tower_is_a_guard_candidate(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    train(TrainConfig(model="test-tiny-mci", out=str(ckpt), steps=2, batch_size=8, warmup_steps=1, eval_size=8,
                      tokenizer_samples=100, progress=False))
    export_bundle(ckpt, tmp_path / "b.edgeclip", targets=["onnx"], precision="fp32", encoders=["image"])
    bundle = Bundle.open(tmp_path / "b.edgeclip")
    ir = ov.convert_model(str(bundle.artifact_path(bundle.manifest.artifacts[0])))
    candidates = ovq.quantizable_ops(ir)
    convs = [op.get_friendly_name() for op in ir.get_ordered_ops()
             if op.get_type_name() in ("Convolution", "GroupConvolution")]
    assert convs and set(convs) <= set(candidates)
    # as many depthwise / grouped convs in the IR's candidates as the inference-form tower has
    fused = reparameterize(load_checkpoint(ckpt)[0])  # type: ignore[arg-type]
    grouped = [m for m in fused.visual.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    ir_grouped = [n for n in candidates if any(op.get_friendly_name() == n and op.get_type_name() == "GroupConvolution"
                                               for op in ir.get_ordered_ops())]
    assert len(grouped) > 0 and len(ir_grouped) == len(grouped)
