"""The same ViT-B/32 weights in transformers' PyTorch eager, in edgeclip's runtime on each backend
and precision, and in a plain hand-written onnxruntime session: image tower, batch 1, interleaved.

    .venv/bin/python benchmarks/peers.py [--work benchmarks/work] [--threads 2]

The weights come from a random-init transformers `CLIPModel` of ViT-B/32 size (no pretrained
weights can be downloaded here), imported with `edgeclip import` and exported with guarded INT8.
Two plain onnxruntime sessions stand for the hand-written route: one on edgeclip's fp32 graph (the
runtime's own overhead) and one on a plain torch.onnx.export of transformers' image features.
Writes benchmarks/results/peers.json (medians in ms and ratios against transformers eager).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def build(work: Path) -> tuple[Path, Path]:
    hf, ckpt, bundle = work / "hf-vit-b-32", work / "hf-vit-b-32-ckpt", work / "hf-vit-b-32.edgeclip"
    if not (hf / "config.json").exists():
        import torch
        from transformers import CLIPConfig, CLIPModel

        torch.manual_seed(0)
        cfg = CLIPConfig(
            text_config={"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8,
                         "num_hidden_layers": 12, "max_position_embeddings": 77, "vocab_size": 49408,
                         "hidden_act": "quick_gelu", "eos_token_id": 49407},
            vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                           "num_hidden_layers": 12, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu"},
            projection_dim=512,
        )
        CLIPModel(cfg).eval().save_pretrained(hf)
    run = [sys.executable, "-m", "edgeclip"]
    if not (ckpt / "config.json").exists():
        subprocess.run([*run, "import", str(hf), "--out", str(ckpt)], check=True, cwd=ROOT)
    if not (bundle / "manifest.json").exists():
        labels = work / "shapes.txt"
        labels.write_text("circle\nsquare\ntriangle\nstar\ncross\nheart\n")
        subprocess.run([*run, "export", str(ckpt), "--target", "onnx,openvino", "--encoders", "image",
                        "--labels", str(labels), "--out", str(bundle)], check=True, cwd=ROOT)
        subprocess.run([*run, "export", str(ckpt), "--target", "onnx,openvino", "--encoders", "image",
                        "--precision", "int8", "--calib", "builtin:shapes", "--labels", str(labels),
                        "--out", str(bundle)], check=True, cwd=ROOT)
    return hf, bundle


def hand_export(hf: Path, out: Path) -> Path:
    """What a hand-written export script does: torch.onnx.export of transformers' image features
    (the dynamo exporter, opset 18, dynamic batch), no graph work after it."""
    if out.exists():
        return out
    import torch
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(hf).eval()

    class ImageFeatures(torch.nn.Module):
        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return model.get_image_features(pixel_values=pixel_values)

    torch.onnx.export(ImageFeatures(), (torch.randn(2, 3, 224, 224),), str(out), input_names=["pixel_values"],
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},), opset_version=18, dynamo=True,
                      external_data=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "work"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    hf, bundle_path = build(work)

    import onnxruntime as ort
    import torch
    from transformers import CLIPModel

    from edgeclip.bench.stats import interleave
    from edgeclip.bundle import Bundle
    from edgeclip.runtime.backends.base import BackendOptions
    from edgeclip.runtime.classifier import load_encoder

    torch.set_num_threads(args.threads)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    model = CLIPModel.from_pretrained(hf).eval()
    xt = torch.from_numpy(x)

    def hf_eager() -> object:
        with torch.inference_mode():
            return model.get_image_features(pixel_values=xt)

    bundle = Bundle.open(bundle_path)
    calls = {"transformers-eager-fp32": hf_eager}
    for backend in ("onnxruntime", "openvino"):
        for precision in ("fp32", "int8"):
            enc = load_encoder(bundle, "image", backend, precision, BackendOptions(threads=args.threads))
            calls[f"edgeclip-{backend}-{precision}"] = lambda enc=enc: enc(x)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    # without this an idle session's threads keep spinning after run(), slowing the next call timed
    so.add_session_config_entry("session.force_spinning_stop", "1")
    plain = ort.InferenceSession(str(bundle.artifact_path(bundle.manifest.find("image", "onnx", "fp32")[0])), so,
                                 providers=["CPUExecutionProvider"])
    calls["plain-onnxruntime-fp32"] = lambda: plain.run(None, {"pixel_values": x})
    hand = ort.InferenceSession(str(hand_export(hf, work / "hf-vit-b-32-hand-export.onnx")), so,
                                providers=["CPUExecutionProvider"])
    calls["hand-export-onnxruntime-fp32"] = lambda: hand.run(None, {"pixel_values": x})
    timings = interleave(calls, warmup=3, runs=args.runs, min_time_s=None)
    medians = {k: t.summary(1)["median_ms"] for k, t in timings.items()}
    base = medians["transformers-eager-fp32"]
    report = {
        "benchmark": "peers", "model": "ViT-B/32 image tower (random init)", "batch": 1, "threads": args.threads,
        "median_ms": medians,
        "speedup_vs_transformers_eager": {k: round(base / v, 2) for k, v in medians.items()},
        "speedup_vs_plain_onnxruntime_fp32": {k: round(medians["plain-onnxruntime-fp32"] / v, 2)
                                              for k, v in medians.items()},
        "note": "OpenVINO runs with the device's default precision hint (bf16 on AVX-512 BF16 CPUs)",
    }
    out = ROOT / "benchmarks" / "results" / "peers.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
