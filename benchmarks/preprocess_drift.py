"""How far the fast decode path (reduced-size JPEG decode, integer reduce, crop before resampling)
moves image embeddings and zero-shot answers away from the exact training transform.

    .venv/bin/python benchmarks/preprocess_drift.py --bundle quickstart/shapes.edgeclip [--quick]

Images, as JPEG files at camera sizes (1280x720 and 4032x3024, landscape and portrait):
- scikit-learn's sample photos (china.jpg, flower.jpg, 640x427) and the seven colour photos in
  scikit-image's wheel (astronaut, chelsea, coffee, rocket, motorcycle_left, hubble_deep_field,
  retina; 300-1411 px), upscaled bicubic and saved at quality 90;
- held-out built-in shapes (edgeclip.data.shapes, the export probes' seed) rendered at the frame's
  short side, the long side filled by mirroring the edges, saved at quality 90.
The bundle should be a trained one (`edgeclip quickstart`'s): its "default" (shape) and "colour"
label sets give held-out zero-shot top-1 on the shapes. Without --bundle, quickstart is run first.
--cosine-bundle adds cosine-only rows for another bundle (e.g. bench_docs.py's random-init ViT-B/32
at 224 px: its top-1 would mean nothing, its cosine shows the drift at that input size).
Each DCT-scale setting (preprocess.DRAFT_GAP) is measured; the bound below decides whether fast
may be the default. Writes benchmarks/results/preprocess_drift.json. Accuracy figures only: no timing.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeclip._io import write_json  # noqa: E402
from edgeclip.data.builtin import REFERENCE_SEED, shapes_heldout  # noqa: E402
from edgeclip.runtime import ZeroShotClassifier  # noqa: E402
from edgeclip.runtime import preprocess as pre  # noqa: E402

SIZES = ((1280, 720), (4032, 3024), (720, 1280), (3024, 4032))  # landscape and portrait (a phone held upright)
# the bound the issue proposes: embeddings nearly unchanged and no zero-shot answer changed
BOUND = {"cosine_min": 0.999, "top1_changes": 0}
QUALITY = 90


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=QUALITY)
    return buf.getvalue()


# the colour photos that ship inside scikit-image's wheel (skimage/data), read as files
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "hubble_deep_field.jpg", "retina.jpg")


def photos(w: int, h: int) -> list[tuple[str, bytes]]:
    from importlib.resources import files

    import sklearn.datasets

    sources = [(n, Image.fromarray(sklearn.datasets.load_sample_image(n))) for n in ("china.jpg", "flower.jpg")]
    for name in SKIMAGE_PHOTOS:
        with Image.open(files("skimage") / "data" / name) as img:  # type: ignore[arg-type]
            sources.append((f"skimage/{name}", img.convert("RGB")))
    return [(name, jpeg(img.resize((w, h), Image.Resampling.BICUBIC))) for name, img in sources]


def shapes(w: int, h: int, n: int) -> list[tuple[str, bytes, str, str]]:
    """(name, JPEG bytes, true shape, true colour) for n held-out shapes in a w x h frame."""
    side = min(w, h)
    ds = shapes_heldout(side, REFERENCE_SEED, size=n)
    out = []
    for i in range(n):
        s = ds[i]
        sq = np.asarray(s.image.convert("RGB"))
        px, py = (w - side) // 2, (h - side) // 2  # the long side filled by mirroring the edges
        frame = np.pad(sq, ((py, h - side - py), (px, w - side - px), (0, 0)), mode="symmetric")
        out.append((f"shape{i}", jpeg(Image.fromarray(frame)), s.shape, s.colour))
    return out


def top1(clf: ZeroShotClassifier, emb: np.ndarray, label_set: str) -> list[str]:
    emb_l, meta = clf.bundle.label_set(label_set)
    return [meta["classes"][int(i)] for i in np.argmax(emb @ emb_l.T, axis=1)]


def measure(exact: ZeroShotClassifier, fast: ZeroShotClassifier, images: list[bytes],
            truth: dict[str, list[str]]) -> dict[str, Any]:
    e, _ = exact.embed_images(images)
    f, _ = fast.embed_images(images)
    cos = np.sum(e * f, axis=1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(f, axis=1))
    row: dict[str, Any] = {"images": len(images), "cosine_min": float(cos.min()),
                           "cosine_median": float(np.median(cos))}
    changes = 0
    for label_set, answers in truth.items():
        pe, pf = top1(exact, e, label_set), top1(exact, f, label_set)
        changes += sum(a != b for a, b in zip(pe, pf, strict=True))
        row[f"top1_{label_set}"] = {"exact": float(np.mean([p == t for p, t in zip(pe, answers, strict=True)])),
                                    "fast": float(np.mean([p == t for p, t in zip(pf, answers, strict=True)]))}
    if truth:
        row["top1_changes"] = changes
    return row


def decoded_size(data: bytes, image_size: int) -> list[int]:
    """The size the fast path decodes a JPEG at (evidence that the DCT scaling ran)."""
    return list(pre.load_image(data, draft=pre.DRAFT_GAP * image_size).size)


def run(bundle: Path, n_shapes: dict[int, int], top1: bool = True) -> dict[str, Any]:
    exact = ZeroShotClassifier.load(bundle, backend="onnxruntime", precision="fp32", labels=None, exact_preprocess=True)
    fast = ZeroShotClassifier.load(bundle, backend="onnxruntime", precision="fp32", labels=None, exact_preprocess=False)
    size = exact.preprocess_cfg.image_size
    have = set(exact.bundle.manifest.labels) if top1 else set()
    data = {wh: (photos(*wh), shapes(*wh, n_shapes[min(wh)])) for wh in SIZES}
    variants = []
    chosen = pre.DRAFT_GAP
    for gap in (2, 1):
        pre.DRAFT_GAP = gap
        rows = {}
        for (w, h), (ph, sh) in data.items():
            truth = {k: v for k, v in (("default", [s[2] for s in sh]), ("colour", [s[3] for s in sh])) if k in have}
            rows[f"{w}x{h}"] = {"photos": measure(exact, fast, [p[1] for p in ph], {}),
                                "shapes": measure(exact, fast, [s[1] for s in sh], truth),
                                "fast_decode_size": decoded_size(sh[0][1], size)}
        meets = all(r[k]["cosine_min"] >= BOUND["cosine_min"] and r[k].get("top1_changes", 0) <= BOUND["top1_changes"]
                    for r in rows.values() for k in ("photos", "shapes"))
        variants.append({"draft_gap": gap, "reduce_gap": pre.FAST_GAP, "sizes": rows, "meets_bound": meets})
    pre.DRAFT_GAP = chosen
    return {"model": exact.bundle.manifest.model_name, "draft_gap_in_use": chosen, "image_size": size,
            "artifact": exact.image.artifact.key,
            "bound": BOUND, "variants": variants, "jpeg_quality": QUALITY,
            "label_sets": {"default": "shape", "colour": "colour"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="a trained bundle (default: run `edgeclip quickstart`)")
    ap.add_argument("--cosine-bundle", type=Path, help="another bundle, measured for cosine only")
    ap.add_argument("--quick", action="store_true", help="a few images only (checks the script runs)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "preprocess_drift.json")
    args = ap.parse_args()
    bundle = args.bundle
    if bundle is None:
        work = Path(tempfile.mkdtemp(prefix="drift-"))
        subprocess.run([sys.executable, "-m", "edgeclip", "quickstart", "--out", str(work / "qs"), "--no-progress"],
                       check=True)
        bundle = work / "qs" / "shapes.edgeclip"
    n_shapes = {720: 4, 3024: 2} if args.quick else {720: 96, 3024: 24}
    result = {**run(bundle, n_shapes), "quick": args.quick}
    if args.cosine_bundle is not None:
        result["cosine_only"] = run(args.cosine_bundle, n_shapes, top1=False)
    print(json.dumps(result, indent=2))
    if not args.quick:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
