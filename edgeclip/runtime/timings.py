"""Which of a bundle's precisions runs fastest here, from latencies measured on this host.

A bundle may hold one encoder at several precisions for one backend, and which is fastest depends
on the device: on the x86 CPU of docs/bench-mobileclip2-s0.md, MobileCLIP2's MCi image tower ran
slower in int8 than in fp32 on onnxruntime and on OpenVINO, while its text tower ran faster in int8.
So the backends' fixed preference (int8 first) gives way to a precision that a comparison
measured here found more than MARGIN faster:

- `edgeclip bench` records every encoder it timed at batch 1 in more than one precision;
- `ZeroShotClassifier.load(precision="fastest")` (CLI: `--precision fastest`) times the candidates
  at load and records them.

A record is one interleaved comparison (the host's speed drifts between runs, so latencies from
different runs are never compared). It lives in a JSON file outside the bundle, which stays as
exported and signed: `$EDGECLIP_TIMINGS`, else ~/.cache/edgeclip/timings.json. It applies only to
the same set of artifacts (by content hash) under the same host key: CPU model and flags, cores,
the backend's SDK version (as installed, whether imported yet or not), threads, device and
precision hint. A missing or unreadable file, or a malformed record, means no records, and a file
that cannot be written means none kept: a warning at most, never a failed load or bench.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip._io import write_json
from edgeclip.bundle import Artifact
from edgeclip.runtime.backends import backend_class
from edgeclip.runtime.backends.base import NP_DTYPES, BackendOptions

log = logging.getLogger(__name__)

FASTEST = "fastest"  # the `precision` that measures the candidates at load
NOT_MEASURED = ("the backend's preference; no precision was timed here with these settings "
                "(`edgeclip bench`, or precision='fastest', measures them)")
FORMAT = 1
MAX_RECORDS = 500  # comparisons kept in the file, newest first (a few hundred bytes each)
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
             "asimd", "sve")
# another precision must be this much faster to displace the backend's preferred one: two
# interleaved runs of the same ViT-B/32 rows here differed by up to 4 % (7.01x torch in
# docs/bench-vit-b-32.md, 6.72x in benchmarks/results/bench_vit_b32_rerun.md)
MARGIN = 0.05
ROUNDS, WARMUP, RUNS = 3, 3, 5  # precision="fastest": per candidate and round, warm-up and timed calls


def timings_path() -> Path | None:
    """$EDGECLIP_TIMINGS, else ~/.cache/edgeclip/timings.json; None without a home folder (no HOME and
    no passwd entry, as for a bare container user): then nothing is read or written."""
    env = os.environ.get("EDGECLIP_TIMINGS")
    if env:
        return Path(env).expanduser()
    try:
        return Path.home() / ".cache" / "edgeclip" / "timings.json"
    except RuntimeError:
        return None


@functools.cache  # read once per process: every load computes a host key
def cpu_description() -> tuple[str, tuple[str, ...]]:
    """(CPU model, the SIMD flags of CPU_FLAGS it has): /proc/cpuinfo on Linux, platform elsewhere."""
    model = platform.processor() or platform.machine()
    flags: tuple[str, ...] = ()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Hardware") and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    present = set(value.split())
                    flags = tuple(fl for fl in CPU_FLAGS if fl in present)
    except OSError:
        pass
    return model, flags


def host_key(backend: str, options: BackendOptions) -> str:
    """What decides an artifact's speed here, besides the artifact itself."""
    model, flags = cpu_description()
    version = sdk_version(getattr(backend_class(backend), "sdk", ""))
    return (f"{model} [{' '.join(flags)}] x{os.cpu_count()} | {backend} {version} | threads={options.threads} "
            f"device={options.device} hint={options.precision_hint}")


@functools.cache
def sdk_version(module: str) -> str:
    """The installed version of the SDK `module`, from package metadata, so that it reads the same
    before the SDK is imported (a plain load looks up records before it creates a backend) as after
    (bench and precision="fastest" record with the SDK loaded)."""
    try:
        return metadata.version(module)
    except (metadata.PackageNotFoundError, ValueError):
        pass
    for dist in metadata.packages_distributions().get(module, []):  # e.g. onnxruntime-gpu, rknn-toolkit-lite2
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "?"


def comparison_key(artifacts: Sequence[Artifact]) -> str:
    """The same artifacts, by content, whatever bundle or folder they sit in."""
    digests = sorted(hashlib.sha256("".join(sorted(a.files.values())).encode()).hexdigest() for a in artifacts)
    return hashlib.sha256(" ".join(digests).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Choice:
    artifact: Artifact
    reason: str


def _read() -> dict[str, Any]:
    """The timings file, {} when it is missing or unusable (a warning then: never a failed load)."""
    path = timings_path()
    try:
        if path is None or not path.exists():
            return {}
        if not path.is_file():  # a folder, a device, a pipe (reading one would wait forever)
            raise ValueError("not a regular file")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("hosts"), dict):
            raise ValueError("not an edgeclip timings file of this format")
        return data
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep to parse
        log.warning("ignoring the timing records in %s (%s); delete the file to start afresh", path, e)
        return {}


def record(backend: str, options: BackendOptions, latencies: dict[str, tuple[Artifact, float]], by: str) -> bool:
    """Record one interleaved comparison: artifact key -> (artifact, median ms at batch 1). Needs two
    or more precisions of one encoder; replaces an earlier record of the same artifacts here. Returns
    whether it was written: a file that cannot be written costs a warning, never the caller's load or
    bench."""
    if len({a.precision for a, _ in latencies.values()}) < 2:
        return False
    data = _read() or {"format": FORMAT, "hosts": {}}
    arts = [a for a, _ in latencies.values()]
    entry = {"measured": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "by": by,
             "ms": {a.precision: round(ms, 4) for a, ms in latencies.values()}}
    host = data["hosts"].get(key := host_key(backend, options))
    if not isinstance(host, dict):  # missing, or not a mapping: this host's records start afresh
        host = data["hosts"][key] = {}
    host.pop(comparison := comparison_key(arts), None)  # re-inserted last: the newest
    host[comparison] = entry
    _prune(data["hosts"])
    path = timings_path()
    try:
        if path is None:
            raise OSError("no home folder")
        if path.exists() and not path.is_file():  # never replace a device or a folder with the records
            raise OSError("not a regular file")
        write_json(path, data)
    except OSError as e:
        log.warning("could not record the timings in %s (%s); set EDGECLIP_TIMINGS to a writable file", path, e)
        return False
    return True


def _prune(hosts: dict[str, Any]) -> None:
    """Keep the file small (every load reads it): at most MAX_RECORDS comparisons, the oldest dropped
    first (by when they were measured, then by the order they were written)."""
    entries = sorted((str(e.get("measured", "")) if isinstance(e, dict) else "", i, host, key)
                     for host, records in hosts.items() if isinstance(records, dict)
                     for i, (key, e) in enumerate(records.items()))
    for *_, host, key in entries[: max(0, len(entries) - MAX_RECORDS)]:
        del hosts[host][key]
    for host in [h for h, records in hosts.items() if records == {}]:
        del hosts[host]


def recorded_choice(candidates: Sequence[Artifact], backend: str, options: BackendOptions) -> Choice | None:
    """The fastest of `candidates` (one encoder, one backend, distinct precisions) by a record made on
    this host for exactly these artifacts, or None. On a tie, the first of `candidates`."""
    if len(candidates) < 2:
        return None
    host = _read().get("hosts", {}).get(host_key(backend, options))
    entry = host.get(comparison_key(candidates)) if isinstance(host, dict) else None
    if entry is None:
        return None
    ms = _latencies(entry, candidates)
    if ms is None:
        log.warning("ignoring a malformed timing record in %s (for %s)", timings_path(),
                    ", ".join(a.key for a in candidates))
        return None
    best = _pick(candidates, ms)
    return Choice(best, _reason(ms, best.precision, f"{entry['by']}, {entry['measured']}"))


def _pick(ranked: Sequence[Artifact], ms: dict[str, float]) -> Artifact:
    """The fastest of `ranked` (the backend's preference first), unless the preferred one is within
    MARGIN of it: a difference that small is within the noise of one measurement."""
    fastest = min(ranked, key=lambda a: ms[a.precision])
    return fastest if ms[fastest.precision] < (1 - MARGIN) * ms[ranked[0].precision] else ranked[0]


def _latencies(entry: object, candidates: Sequence[Artifact]) -> dict[str, float] | None:
    """precision -> ms for each candidate from a stored record, or None unless the record is as
    `record` writes it: who measured and when, and every candidate's latency a finite positive
    number (the file is the user's to edit, and NaN would make the choice arbitrary)."""
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("by", "measured")):
        return None
    ms = entry.get("ms")
    if not isinstance(ms, dict):
        return None
    out = {}
    for a in candidates:
        v = ms.get(a.precision)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            return None
        out[a.precision] = float(v)
    return out


def _reason(ms: dict[str, float], best: str, source: str) -> str:
    times = ", ".join(f"{p} {t:.2f} ms" for p, t in sorted(ms.items(), key=lambda kv: kv[1]))
    why = ("the fastest here" if ms[best] == min(ms.values())
           else f"the backend's preference, within {MARGIN:.0%} of the fastest here")
    return f"{best}: {why} at batch 1 ({times}; measured by {source})"


def zero_input(artifact: Artifact) -> np.ndarray:
    """A batch-1 input of the artifact's first input: zeros (pixels or token ids; speed alone is measured)."""
    spec = artifact.inputs[0]
    return np.zeros([1, *(int(d) for d in spec.shape[1:])], dtype=NP_DTYPES[spec.dtype])


def median_ms(run: Callable[[np.ndarray], object], x: np.ndarray, warmup: int = WARMUP, runs: int = RUNS) -> float:
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def interleaved_ms(calls: Sequence[tuple[Callable[[np.ndarray], object], np.ndarray]], rounds: int = ROUNDS,
                   warmup: int = WARMUP, runs: int = RUNS) -> list[float]:
    """Each (run, input)'s latency in ms: the median over `rounds` interleaved rounds (a drift of the
    host's speed hits every call alike) of its `median_ms` in that round."""
    per_round: list[list[float]] = [[] for _ in calls]
    for _ in range(rounds):
        for i, (run, x) in enumerate(calls):
            per_round[i].append(median_ms(run, x, warmup, runs))
    return [statistics.median(t) for t in per_round]


def fastest_now(runs: dict[str, tuple[Artifact, Callable[[np.ndarray], object]]], backend: str,
                options: BackendOptions) -> Choice:
    """Time the loaded candidates (artifact key -> (artifact, run), the backend's preference first)
    interleaved, record the comparison, and return the fastest (`_pick`)."""
    times = interleaved_ms([(run, zero_input(a)) for a, run in runs.values()])
    latencies = {k: (a, t) for (k, (a, _)), t in zip(runs.items(), times, strict=True)}
    record(backend, options, latencies, by="load(precision='fastest')")
    ms = {a.precision: t for a, t in latencies.values()}
    best = _pick([a for a, _ in runs.values()], ms)
    return Choice(best, _reason(ms, best.precision, "this load"))
