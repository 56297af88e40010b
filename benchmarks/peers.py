"""Peer recipes against edgeclip on the same ViT-B/32 weights: image tower, batch 1, one interleaved run.

    .venv/bin/python benchmarks/peers.py [--work benchmarks/work] [--threads 2] [--runs 40] [--quick]

The weights come from a random-init transformers `CLIPModel` of ViT-B/32 size (no pretrained
weights can be downloaded here), imported with `edgeclip import` and exported with guarded INT8.
Every row gets the same input image and the same thread count. The rows:

- torch eager fp32 (edgeclip's torch module, SDPA attention): the baseline every ratio divides;
- transformers eager fp32, and on that module the torch CPU recipes a user would try: bf16 autocast,
  `quantize_dynamic` (int8 Linear), `torch.compile`;
- onnxruntime on a plain `torch.onnx.export` of transformers' image tower: `quantize_dynamic`
  (per-channel int8 weights, optimum's AVX-512 VNNI default) and `quantize_static` QDQ with
  default options on the same calibration images edgeclip uses;
- OpenVINO's own recipe: `ov.convert_model(transformers module)` + `nncf.quantize(model_type=
  TRANSFORMER)` on those calibration images, at the device's default precision hint and at f32;
- edgeclip: onnxruntime int8, OpenVINO int8 at the f32 hint and at the default hint, and the
  OpenVINO int8 artifact with uint8 input (normalisation inside the graph).

For each row: the median ms, the ratio to torch eager fp32, the embedding cosine (min, mean) to the
fp32 reference on held-out images (never the calibration ones), and the precision that ran
(OpenVINO: the compiled model's INFERENCE_PRECISION_HINT). `--quick` runs everything on a tiny
CLIP with a few samples, to check that the script works; its numbers mean nothing.
Writes <work>/peers.json; timing results are only meaningful from a quiet machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CALIB = "builtin:shapes"
SIZES = {  # vision tower of ViT-B/32 (text tower small: only the image tower is timed)
    "full": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
             "image_size": 224, "patch_size": 32},
    "quick": {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 2, "num_hidden_layers": 2,
              "image_size": 64, "patch_size": 16},
}
Embed = Callable[[np.ndarray], np.ndarray]  # float pixels [1, 3, S, S] -> embedding [1, D]


@dataclass
class Row:
    embed: Embed  # held-out images go through this
    call: Callable[[], object]  # what is timed: one batch-1 inference on the fixed input
    precision: str


def build(work: Path, quick: bool, calib_size: int) -> tuple[Path, Path, Path]:
    """transformers weights -> edgeclip checkpoint -> two bundles: guarded INT8 (onnx, openvino)
    with float input, and OpenVINO INT8 with uint8 input."""
    hf, ckpt = work / "hf-clip", work / "hf-clip-ckpt"
    if not (hf / "config.json").exists():
        import torch
        from transformers import CLIPConfig, CLIPModel

        torch.manual_seed(0)
        cfg = CLIPConfig(
            text_config={"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 2, "num_hidden_layers": 2,
                         "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu",
                         "eos_token_id": 49407},
            vision_config={**SIZES["quick" if quick else "full"], "hidden_act": "quick_gelu"},
            projection_dim=512,
        )
        CLIPModel(cfg).eval().save_pretrained(hf)
    run = [sys.executable, "-m", "edgeclip"]
    if not (ckpt / "config.json").exists():
        subprocess.run([*run, "import", str(hf), "--out", str(ckpt)], check=True, cwd=ROOT)
    common = ["--encoders", "image", "--precision", "int8", "--calib", CALIB, "--calib-size", str(calib_size)]
    bundles = {"float": (work / "int8.edgeclip", ["--target", "onnx,openvino"]),
               "uint8": (work / "int8-uint8.edgeclip", ["--target", "openvino", "--image-input", "uint8"])}
    for out, extra in bundles.values():
        if not (out / "manifest.json").exists():
            subprocess.run([*run, "export", str(ckpt), *extra, *common, "--out", str(out)], check=True, cwd=ROOT)
    return hf, bundles["float"][0], bundles["uint8"][0]


def hand_export(module: Any, example: Any, out: Path) -> Path:
    """What a hand-written export script does: torch.onnx.export (dynamo, opset 18, dynamic batch)."""
    import torch

    if not out.exists():
        torch.onnx.export(module, (example,), str(out), input_names=["pixel_values"], output_names=["image_embeds"],
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},), opset_version=18,
                          dynamo=True, external_data=False)
    return out


def torch_rows(hf: Path, ckpt_module: Any, threads: int, example: Any) -> tuple[dict[str, Row], Any]:
    """torch eager (edgeclip's module), transformers eager and the torch CPU recipes on it."""
    import torch
    from transformers import CLIPModel

    torch.set_num_threads(threads)
    clip = CLIPModel.from_pretrained(hf).eval()

    class ImageTower(torch.nn.Module):  # transformers 5: get_image_features returns an output object
        def __init__(self) -> None:
            super().__init__()
            self.vision_model, self.visual_projection = clip.vision_model, clip.visual_projection

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)

    tower = ImageTower().eval()
    dynamic = torch.ao.quantization.quantize_dynamic(copy.deepcopy(tower), {torch.nn.Linear}, dtype=torch.qint8)
    compiled = torch.compile(tower)

    def row(fn: Callable[[Any], Any], precision: str, autocast: bool = False) -> Row:
        def embed(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                return np.asarray(fn(torch.from_numpy(x)).float().numpy())
        return Row(embed, lambda: embed(example), precision)

    return {
        "torch-eager-fp32": row(ckpt_module, "fp32"),
        "transformers-eager-fp32": row(tower, "fp32"),
        "torch-bf16-autocast": row(tower, "bf16 (autocast)", autocast=True),
        "torch-quantize_dynamic-int8": row(dynamic, "int8 weights + dynamic activations (nn.Linear)"),
        "torch-compile-fp32": row(compiled, "fp32 (inductor)"),
    }, tower


def ort_rows(hand: Path, work: Path, calib: np.ndarray, threads: int, example: np.ndarray) -> dict[str, Row]:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    dyn, qdq = work / "hand-dynamic-int8.onnx", work / "hand-static-qdq.onnx"
    if not dyn.exists():
        quantize_dynamic(str(hand), str(dyn), per_channel=True, weight_type=QuantType.QInt8)
    if not qdq.exists():
        quantize_static(str(hand), str(qdq), _Reader(calib), quant_format=QuantFormat.QDQ)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    # without this an idle session's threads keep spinning after run(), slowing the next call timed
    so.add_session_config_entry("session.force_spinning_stop", "1")
    rows = {}
    for name, path, precision in (("onnxruntime-quantize_dynamic-int8", dyn, "int8 dynamic, per-channel weights"),
                                  ("onnxruntime-quantize_static-qdq-int8", qdq, "int8 QDQ static (defaults)")):
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

        def embed(x: np.ndarray, sess: Any = sess) -> np.ndarray:
            return np.asarray(sess.run(None, {"pixel_values": x})[0])
        rows[name] = Row(embed, lambda embed=embed: embed(example), precision)
    return rows


class _Reader:
    """onnxruntime's calibration reader over the calibration images, one per call."""

    def __init__(self, images: np.ndarray) -> None:
        self._it = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {"pixel_values": x[None]}


def openvino_recipe(tower: Any, calib: np.ndarray, threads: int, example: np.ndarray) -> dict[str, Row]:
    """OpenVINO's documented two calls on the transformers module, compiled two ways."""
    import nncf
    import openvino as ov
    import torch

    with torch.no_grad():
        fp32 = ov.convert_model(tower, example_input=torch.from_numpy(example))
    model = nncf.quantize(fp32, nncf.Dataset([x[None] for x in calib]), model_type=nncf.ModelType.TRANSFORMER,
                          subset_size=len(calib))
    rows = {}
    for suffix, hint in (("default-hint", None), ("f32-hint", "f32")):
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        if hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        compiled = ov.Core().compile_model(model, "CPU", config)
        request = compiled.create_infer_request()

        def embed(x: np.ndarray, request: Any = request) -> np.ndarray:
            return np.array(request.infer({0: x})[0], copy=True)
        hint_type = compiled.get_property("INFERENCE_PRECISION_HINT")
        ran = str(hint_type.get_type_name() if hasattr(hint_type, "get_type_name") else hint_type)
        rows[f"openvino-recipe-int8-{suffix}"] = Row(embed, lambda embed=embed: embed(example), f"int8 / {ran}")
    return rows


def edgeclip_rows(float_bundle: Path, uint8_bundle: Path, threads: int, example: np.ndarray) -> dict[str, Row]:
    from edgeclip.bundle import Bundle
    from edgeclip.export.encoders import uint8_pixels
    from edgeclip.runtime.backends.base import BackendOptions
    from edgeclip.runtime.classifier import load_encoder

    fb, ub = Bundle.open(float_bundle), Bundle.open(uint8_bundle)
    cfg = fb.manifest.preprocess
    cases = (("edgeclip-onnxruntime-int8", fb, "onnxruntime", None), ("edgeclip-openvino-int8-f32-hint", fb, "openvino",
             "f32"), ("edgeclip-openvino-int8-default-hint", fb, "openvino", None),
             ("edgeclip-openvino-int8-uint8-input-default-hint", ub, "openvino", None))
    rows = {}
    for name, bundle, backend, hint in cases:
        enc = load_encoder(bundle, "image", backend, "int8", BackendOptions(threads=threads, precision_hint=hint))
        uint8 = enc.artifact.inputs[0].dtype == "uint8"
        fixed = uint8_pixels(example, cfg) if uint8 else example

        def embed(x: np.ndarray, enc: Any = enc, uint8: bool = uint8) -> np.ndarray:
            return np.asarray(enc(uint8_pixels(x, cfg) if uint8 else x))
        ran = getattr(enc.backend, "precision_hint", "onnxruntime CPU")
        rows[name] = Row(embed, lambda enc=enc, fixed=fixed: enc(fixed), f"int8 / {ran}")
    return rows


def cosines(reference: np.ndarray, got: np.ndarray) -> dict[str, float]:
    a = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    b = got / np.linalg.norm(got, axis=1, keepdims=True)
    cos = (a * b).sum(1)
    return {"cosine_min": round(float(cos.min()), 6), "cosine_mean": round(float(cos.mean()), 6)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "work" / "peers"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="tiny model, few samples: checks the script, times nothing")
    args = ap.parse_args()
    work = Path(args.work) / ("quick" if args.quick else "vit-b-32")
    work.mkdir(parents=True, exist_ok=True)
    calib_size = 24 if args.quick else 125  # builtin:shapes holds out 20 %: 100 calibration images
    hf, float_bundle, uint8_bundle = build(work, args.quick, calib_size)

    import torch

    from edgeclip.bench.stats import interleave
    from edgeclip.calibration.cache import load_calibration_set
    from edgeclip.model.build import encoder_of
    from edgeclip.model.checkpoint import load_checkpoint

    model, info = load_checkpoint(work / "hf-clip-ckpt")
    calib = load_calibration_set(CALIB, info.preprocess, calib_size)
    held = calib.heldout[: 8 if args.quick else 64]
    example = held[:1]
    rows, tower = torch_rows(hf, encoder_of("image", model).eval(), args.threads, example)
    hand = hand_export(tower, torch.from_numpy(np.repeat(example, 2, 0)), work / "hand-export.onnx")
    rows |= ort_rows(hand, work, calib.images, args.threads, example)
    rows |= openvino_recipe(tower, calib.images, args.threads, example)
    rows |= edgeclip_rows(float_bundle, uint8_bundle, args.threads, example)

    reference = np.concatenate([rows["torch-eager-fp32"].embed(x[None]) for x in held])
    accuracy = {k: cosines(reference, np.concatenate([r.embed(x[None]) for x in held])) for k, r in rows.items()}
    timings = interleave({k: r.call for k, r in rows.items()}, warmup=2 if args.quick else 5,
                         runs=3 if args.quick else args.runs, min_time_s=None)
    medians = {k: t.summary(1)["median_ms"] for k, t in timings.items()}
    base = medians["torch-eager-fp32"]
    report = {
        "benchmark": "peers", "model": f"{'tiny' if args.quick else 'ViT-B/32'} image tower (random init)",
        "batch": 1, "threads": args.threads, "calibration_images": len(calib.images),
        "heldout_images": len(held), "quick": args.quick,
        "rows": {k: {"median_ms": medians[k], "x_torch_eager_fp32": round(base / medians[k], 2),
                     **accuracy[k], "precision": rows[k].precision} for k in rows},
    }
    (work / "peers.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
