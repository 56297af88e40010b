"""What the open_clip parity benchmarks share: the separate venv, the perturbed random model, the driver.

open_clip and timm cannot run beside edgeclip's torch (they need torchvision), so they run in
their own venv, created on first use and reused after (torch==2.14.1 torchvision==0.29.1
open_clip_torch, ~5.6 GB). A benchmark's worker runs there (`script --worker DIR ...`) and writes
open_clip's weights and embeddings into DIR; its driver, here, imports and compares them.
This module imports neither torch nor open_clip at top level: both venvs load it.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

OCENV_PACKAGES = ["torch==2.14.1", "torchvision==0.29.1", "open_clip_torch", "safetensors"]
TOLERANCE = 1e-5  # issues 15 and 16: image and text embeddings within 1e-5 after import


def ensure_ocenv(ocenv: Path) -> Path:
    """The open_clip venv's python, creating the venv if it is missing or broken."""
    python = ocenv / "bin" / "python"
    check = [str(python), "-c", "import open_clip, safetensors"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(ocenv)], check=True)
    subprocess.run([str(ocenv / "bin" / "pip"), "install", "-q", *OCENV_PACKAGES], check=True)
    return python


def perturbed(build: Callable[[], Any], seed: int) -> Any:
    """A model from `build()` with seed `seed`, in eval mode, every parameter moved off its init
    (layer scales `gamma` by 0.2, so that every branch matters; the rest by 0.02) and BatchNorm
    statistics made non-trivial. Worker side."""
    import torch

    torch.manual_seed(seed)
    model = build()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.2 if name.endswith("gamma") else 0.02))
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                buf.normal_(0, 0.1)
    return model.eval()


def image_size(model: Any) -> int:
    """The square input size of an open_clip model's image tower."""
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def max_abs(a: Any, b: Any) -> float:
    import numpy as np

    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def run(script: str, python: Path, worker_args: list[str], compare: Callable[[Path], dict[str, Any]],
        ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run `script`'s worker in the open_clip venv on a temporary directory, then `compare` on it
    here; returns (the worker's peer versions, the per-case results)."""
    with tempfile.TemporaryDirectory(prefix="oc-parity-") as tmp:
        work = Path(tmp)
        subprocess.run([str(python), script, "--worker", str(work), *worker_args], check=True)
        peer = json.loads((work / "worker.json").read_text())
        return peer, compare(work)


def write_report(path: Path, what: str, peer: dict[str, Any], cases: dict[str, Any], keys: tuple[str, ...],
                 **extra: Any) -> dict[str, Any]:
    """Write the results file: every case's `keys` (max abs diffs) against TOLERANCE."""
    worst = max(c[k] for c in cases.values() for k in keys if k in c)
    passed = worst < TOLERANCE and all(extra.get(k, True) for k in extra if isinstance(extra[k], bool))
    report = {"what": what, "peer": peer, "machine": platform.machine(), "cases": cases, "worst_max_abs": worst,
              "tolerance": TOLERANCE, **extra, "passed": passed}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"worst max abs diff {worst:.2e}; wrote {path}")
    return report


def models_main(script: str, doc: str, models: list[str], worker: Callable[[Path, list[str]], None],
                compare: Callable[[Path, list[str]], dict[str, Any]], result: Path, what: str,
                keys: tuple[str, ...]) -> None:
    """The command line of a per-model parity script: `--models`, `--ocenv`, and the hidden `--worker`
    entry that runs inside the open_clip venv."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--ocenv", default="/tmp/ocenv", help="venv for open_clip (created if missing)")
    parser.add_argument("--models", nargs="+", default=models)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker), args.models)
        return
    sys.path.insert(0, str(Path(script).resolve().parents[1]))
    peer, cases = run(script, ensure_ocenv(Path(args.ocenv)), ["--models", *args.models],
                      lambda work: compare(work, args.models))
    write_report(result, what, peer, cases, keys)
