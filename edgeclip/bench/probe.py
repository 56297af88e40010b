"""Measurements that need a process of their own: peak RSS of loading an encoder and running its first
prediction, and of encoding a label set. Each runs in a fresh interpreter (`python -m
edgeclip.bench.probe REQUEST_JSON`), so one row's allocations never inflate the next row's peak; the
answer is one JSON object on stdout (no pickle).

Requests: {"kind": "encoder" | "labels", "bundle", "artifact" (key), "backend", "options"}, plus
"classes" and "templates" (counts) for labels; {"kind": "torch", "checkpoint", "encoders", "bundle"}.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from edgeclip.bench.machine import peak_rss_mb, rss_mb
from edgeclip.bundle import Bundle, TensorSpec
from edgeclip.errors import ConfigError
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.classifier import Encoder
from edgeclip.runtime.labels import label_embeddings
from edgeclip.runtime.preprocess import model_input
from edgeclip.runtime.tokenizer import TextTokenizer

TIMEOUT_S = 1800  # 80k prompts on a slow board
LABEL_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a drawing of a {}.",
                   "a close-up photo of a {}.", "a photo of the small {}.", "a blurry photo of a {}.",
                   "a photo of the large {}.", "a rendering of a {}.", "a cropped photo of the {}.")


def high_water_mb() -> float:
    """Peak RSS of this process's own memory, in MB. Not getrusage's ru_maxrss: Linux carries that
    across exec from the parent that spawned us (a probe of a tiny model would report the bench's peak)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e3  # kB
    except (OSError, ValueError):
        pass
    return peak_rss_mb()  # no /proc (macOS, Windows): getrusage, at worst an overestimate


def measure(request: dict[str, Any]) -> dict[str, Any]:
    """Run one probe in a fresh interpreter; {"error": ...} when it failed (the row still prints)."""
    proc = subprocess.run([sys.executable, "-m", "edgeclip.bench.probe", json.dumps(request)],
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"probe exited {proc.returncode}: {tail}"}
    answer: dict[str, Any] = json.loads(lines[-1])
    return answer


def encoder_request(kind: str, bundle: Bundle, key: str, backend: str, options: BackendOptions,
                    **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "bundle": str(bundle.root), "artifact": key, "backend": backend,
            "options": asdict(options), **extra}


def _encoder(req: dict[str, Any]) -> tuple[Bundle, Encoder]:
    bundle = Bundle.open(req["bundle"])
    artifact = next((a for a in bundle.manifest.artifacts if a.key == req["artifact"]), None)
    if artifact is None:
        raise ConfigError(f"{bundle.root} has no artifact {req['artifact']}")
    options = BackendOptions(**req["options"])
    return bundle, Encoder.open(bundle.artifact_path(artifact), artifact, req["backend"], options)


def _first_input(bundle: Bundle, encoder: str, spec: TensorSpec | None = None) -> np.ndarray:
    """A first prediction's input: a tokenised prompt, or a black image in the form `spec` (the artifact's
    input) takes: float32 NCHW, or uint8 NHWC for an artifact that normalises inside its graph."""
    if encoder == "text":
        return TextTokenizer(bundle.tokenizer_path(), bundle.manifest.tokenizer)(["a photo of a dog."])
    pre = bundle.manifest.preprocess
    black = np.zeros((1, pre.image_size, pre.image_size, 3), dtype=np.uint8)
    float_input = TensorSpec("pixel_values", "float32", (1, 3, pre.image_size, pre.image_size))
    return model_input(black, pre, spec or float_input)


def probe_encoder(req: dict[str, Any]) -> dict[str, Any]:
    before = rss_mb()
    bundle, enc = _encoder(req)
    enc(_first_input(bundle, enc.artifact.encoder, enc.artifact.inputs[0]))
    return {"peak_rss_mb": round(high_water_mb(), 1), "rss_before_load_mb": round(before, 1)}


def probe_labels(req: dict[str, Any]) -> dict[str, Any]:
    """Encode classes x templates generated prompts (class names "object kind N") with the text tower."""
    bundle, enc = _encoder(req)
    tokenize = TextTokenizer(bundle.tokenizer_path(), bundle.manifest.tokenizer)
    classes = [f"object kind {i}" for i in range(int(req["classes"]))]
    n = len(LABEL_TEMPLATES)
    templates = [LABEL_TEMPLATES[i] if i < n else f"{LABEL_TEMPLATES[i % n]} ({i // n})"
                 for i in range(int(req["templates"]))]
    batch = int(req.get("batch", 32))
    t0 = time.perf_counter()
    emb = label_embeddings(classes, templates, lambda texts: np.concatenate(
        [enc(tokenize(texts[i : i + batch])) for i in range(0, len(texts), batch)]))
    seconds = time.perf_counter() - t0
    prompts = len(classes) * len(templates)
    return {"classes": len(classes), "templates": len(templates), "prompts": prompts, "seconds": round(seconds, 3),
            "prompts_per_s": round(prompts / seconds, 1), "peak_rss_mb": round(high_water_mb(), 1),
            "result_mb": round(emb.nbytes / 1e6, 3)}


def probe_torch(req: dict[str, Any]) -> dict[str, Any]:
    """The torch baseline: load the checkpoint, run each of `encoders` once."""
    from edgeclip._deps import require

    torch: Any = require("torch", purpose="the PyTorch baseline")
    from edgeclip.export.encoders import encoder_module
    from edgeclip.model.checkpoint import load_checkpoint

    if req.get("threads"):
        torch.set_num_threads(int(req["threads"]))
    before = rss_mb()
    model, _ = load_checkpoint(req["checkpoint"])
    bundle = Bundle.open(req["bundle"])
    with torch.inference_mode():
        for encoder in req["encoders"]:
            encoder_module(encoder, model)(torch.from_numpy(_first_input(bundle, encoder)))
    return {"peak_rss_mb": round(high_water_mb(), 1), "rss_before_load_mb": round(before, 1)}


PROBES = {"encoder": probe_encoder, "labels": probe_labels, "torch": probe_torch}


def main(argv: list[str]) -> int:
    req = json.loads(argv[0])
    print(json.dumps(PROBES[req["kind"]](req)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
