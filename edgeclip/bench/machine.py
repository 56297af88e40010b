"""The benchmark header: what machine, software and model produced the numbers."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Any

from edgeclip.runtime.timings import cpu_description

PACKAGES = ("edgeclip", "numpy", "pillow", "onnxruntime", "openvino", "torch", "coremltools", "tensorrt",
            "ai-edge-litert", "rknn-toolkit2", "rknn-toolkit-lite2")


def _gpu() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(threads: int | None) -> dict[str, Any]:
    model, flags = cpu_description()
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": model,
        "cpu_flags": list(flags),
        "cores": os.cpu_count(),
        "threads": threads,
        "gpu": _gpu(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "packages": versions,
    }


def rss_mb() -> float:
    """Current resident set size of this process, in MB (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="utf-8") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError):
        return 0.0


def peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak / 1e3
