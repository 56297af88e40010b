"""`edgeclip bench`: latency, size and accuracy per encoder x backend x precision x batch size,
with a PyTorch eager fp32 baseline measured in the same run, interleaved with the other rows."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.bench.evalset import EvalImages, bundle_label_rows, load_eval_set
from edgeclip.bench.inputs import CAMERA_SIZES, camera_jpeg, model_size_jpegs, uint8_feed
from edgeclip.bench.machine import machine_info, peak_rss_mb, rss_mb
from edgeclip.bench.probe import encoder_request, measure
from edgeclip.bench.simulated import runs_simulated, simulated_rows
from edgeclip.bench.stats import interleave
from edgeclip.bundle import Artifact, Bundle
from edgeclip.errors import ConfigError
from edgeclip.export.capabilities import CAPABILITIES
from edgeclip.runtime.backends import backend_class
from edgeclip.runtime.backends.base import BackendOptions, DescribeInfo, fell_back_to_cpu
from edgeclip.runtime.classifier import Encoder, ZeroShotClassifier
from edgeclip.runtime.labels import Labels, label_embeddings
from edgeclip.runtime.preprocess import preprocess
from edgeclip.runtime.scoring import scoring_from_manifest
from edgeclip.runtime.similarity import cosine_rows
from edgeclip.runtime.timings import record, timings_path
from edgeclip.runtime.tokenizer import TextTokenizer

SCHEMA = "edgeclip-bench"
SCHEMA_VERSION = 2  # 2: OpenVINO rows keyed by the precision that ran (bf16-hint rows apart)
# the fields of what ran each row, copied from Backend.describe() (runtime/backends/base.py)
RAN_FIELDS = ("device", "providers", "precision_hint", "compute_layers")
NOISY_SPREAD = 1.5  # p90 / median above this marks a row as noisy
PROBE_TEXTS = ("a photo of a dog.", "a red circle", "something blue on the left", "an image of a star.")


@dataclass
class BenchConfig:
    bundle: Path
    backends: list[str] | None = None  # None: every installed backend the bundle has artifacts for
    precisions: list[str] | None = None
    encoders: list[str] = field(default_factory=lambda: ["image", "text"])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    threads: int | None = None
    runs: int | None = None
    min_time_s: float | None = 2.0
    warmup: int = 3
    baseline: str = "torch"  # "torch" | "none"
    checkpoint: Path | None = None
    eval_data: str | None = None  # builtin:shapes or an image folder with one sub-folder per class
    eval_size: int = 240
    end_to_end: bool = True
    # end-to-end rows on camera-size JPEGs (width, height), batch 1
    camera_sizes: list[tuple[int, int]] = field(default_factory=lambda: list(CAMERA_SIZES))
    max_accuracy_drop: float = 1.0  # points of top-1
    device: str = "CPU"  # BackendOptions.device: rows say when an accelerator asked for left the CPU to run it
    memory: bool = True  # peak RSS of load + first prediction, each row in a fresh process
    label_classes: int = 1000  # the labels table: classes x templates prompts through each text artifact
    label_templates: int = 7

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ConfigError("--batch-sizes must be positive integers, e.g. 1,8")
        if self.runs is not None and self.runs < 1:
            raise ConfigError("--runs must be >= 1")
        if self.baseline not in ("torch", "none"):
            raise ConfigError("--baseline must be 'torch' or 'none'")
        if self.label_classes < 0 or self.label_templates < 1:
            raise ConfigError("--label-classes must be >= 0 (0: no labels table) and --label-templates >= 1")
        for e in self.encoders:
            if e not in ("image", "text"):
                raise ConfigError(f"unknown encoder '{e}'", fix="use image, text or image,text")


# artifact precision -> the inference precision that runs it as named, with no hint needed
NATIVE_PRECISION = {"fp32": "f32", "fp16": "f16"}


@dataclass
class Candidate:
    encoder: str
    backend: str
    precision: str  # the artifact's precision, as in the manifest
    run: Callable[[np.ndarray], np.ndarray]
    size_mb: float
    cold_start_ms: float
    rss_delta_mb: float
    # the precision float layers actually ran in: read from the compiled model where the SDK has a
    # hint (OpenVINO), "f32" for torch eager, None where the artifact's precision is all there is
    inference_precision: str | None = None
    ran: DescribeInfo = field(default_factory=dict)  # Backend.describe(): what ran it
    float_layers: int | None = None  # INT8: layers the manifest's calibration record left in float
    peak_rss_mb: float | None = None  # load + first prediction, in a fresh process
    probe: dict[str, Any] | None = None  # the request that measures it in a fresh process
    loaded: Encoder | None = None  # the artifact's encoder (None for the torch baseline): end-to-end rows use it
    options: BackendOptions | None = None  # what it was loaded with (None for the torch baseline)

    @property
    def label(self) -> str:
        """`backend-precision`, plus `(bf16-hint)` etc. whenever the hint in effect is not the artifact's
        own precision: an fp32 artifact that ran in bf16 must not read as fp32."""
        ran = self.inference_precision
        if ran is None or NATIVE_PRECISION.get(self.precision) == ran:
            return f"{self.backend}-{self.precision}"
        return f"{self.backend}-{self.precision}({ran}-hint)"


def _image_inputs(bundle: Bundle, n: int) -> tuple[list[bytes], np.ndarray]:
    """n JPEG files (as bytes, 2x the model size) and their preprocessed pixels."""
    jpegs = model_size_jpegs(bundle.manifest.preprocess.image_size, n)
    return jpegs, np.stack([preprocess(j, bundle.manifest.preprocess) for j in jpegs])


def _load_candidate(bundle: Bundle, artifact: Artifact, backend: str, options: BackendOptions,
                    probe: np.ndarray) -> Candidate:
    rss0 = rss_mb()
    t0 = time.perf_counter()
    enc = Encoder(backend_class(backend)(bundle.artifact_path(artifact), artifact, options), artifact, "bench")
    uint8_input = artifact.inputs[0].dtype == "uint8"  # --image-input uint8: normalised inside the graph
    run = uint8_feed(enc, bundle.manifest.preprocess) if uint8_input else enc
    run(probe[:1])
    cold = (time.perf_counter() - t0) * 1000
    size = sum(bundle.resolve(f).stat().st_size for f in artifact.files) / 1e6
    hint = getattr(enc.backend, "precision_hint", None)  # OpenVINO: the hint the compiled model uses
    describe = getattr(enc.backend, "describe", None)
    ran: DescribeInfo = describe() if describe else {"requested": options.device, "device": None}
    cal = artifact.calibration
    return Candidate(artifact.encoder, backend, artifact.precision, run, size, cold, rss_mb() - rss0,
                     str(hint) if hint is not None else None, ran,
                     len(cal.excluded_layers) if cal is not None else None,
                     probe=encoder_request("encoder", bundle, artifact.key, backend, options), loaded=enc,
                     options=options)


def _load_candidates(bundle: Bundle, artifact: Artifact, backend: str, options: BackendOptions,
                     probe: np.ndarray) -> list[Candidate]:
    """The artifact under the device's default hint and, when that default is not f32 (bf16 on CPUs
    with AVX-512 BF16 or AMX), once more with the f32 hint, so a true-f32 row always exists."""
    first = _load_candidate(bundle, artifact, backend, options, probe)
    if first.inference_precision in (None, "f32"):
        return [first]
    forced = _load_candidate(bundle, artifact, backend, replace(options, precision_hint="f32"), probe)
    return [first] if forced.label == first.label else [first, forced]


def _torch_baseline(cfg: BenchConfig, bundle: Bundle, options: BackendOptions, probes: dict[str, np.ndarray]
                    ) -> dict[str, Candidate]:
    from edgeclip._deps import require

    torch: Any = require("torch", purpose="the PyTorch baseline (or pass --baseline none)")
    from edgeclip.export.encoders import encoder_module
    from edgeclip.model.checkpoint import load_checkpoint

    if cfg.checkpoint is None:
        raise ConfigError("--baseline torch needs --checkpoint CKPT", fix="pass the checkpoint or --baseline none")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rss0 = rss_mb()
    t0 = time.perf_counter()
    model, _ = load_checkpoint(cfg.checkpoint)
    # one probe for every tower: the baseline process loads the whole checkpoint, whichever it runs
    probe = {"kind": "torch", "checkpoint": str(cfg.checkpoint), "encoders": cfg.encoders, "bundle": str(bundle.root),
             "threads": cfg.threads}
    out = {}
    for e in cfg.encoders:
        module = encoder_module(e, model)

        def run(x: np.ndarray, module: Any = module) -> np.ndarray:
            with torch.inference_mode():
                return np.asarray(module(torch.from_numpy(x)).numpy())

        run(probes[e][:1])
        size = sum(p.numel() * p.element_size() for p in module.parameters()) / 1e6
        out[e] = Candidate(e, "torch", "fp32", run, size, (time.perf_counter() - t0) * 1000, rss_mb() - rss0, "f32",
                           {"requested": "CPU", "device": "CPU", "precision_hint": "f32"},
                           probe=probe)
    return out


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    bundle = Bundle.open(cfg.bundle)
    bundle.verify()
    options = BackendOptions(threads=cfg.threads, device=cfg.device)
    jpegs, pixels = _image_inputs(bundle, max(cfg.batch_sizes))
    tok = TextTokenizer(bundle.tokenizer_path(), bundle.manifest.tokenizer)
    texts = [PROBE_TEXTS[i % len(PROBE_TEXTS)] for i in range(max(cfg.batch_sizes))]
    probes = {"image": pixels, "text": tok(texts)}
    cands, skipped = _candidates(cfg, bundle, options, probes, log)
    baseline = _torch_baseline(cfg, bundle, options, probes) if cfg.baseline == "torch" else {}
    all_cands = list(baseline.values()) + cands
    if not all_cands:
        raise ConfigError("nothing to benchmark: no usable artifact matched", fix="check --backends/--precisions")
    if cfg.memory:
        _peak_memory(all_cands, log)
    # accuracy: embedding cosine against torch fp32 (or the fp32 artifact when torch is absent)
    accuracy = _accuracy(cfg, bundle, all_cands, baseline, probes, tok)
    refs = {e: (ref.run, ref.label) for e in cfg.encoders if (ref := _reference(e, cands, baseline))}
    simulated, sim_skipped = simulated_rows(cfg, bundle, probes, refs, accuracy.get("labels"))
    skipped = [s for s in skipped if s["row"].split("-")[0] not in {r["backend"] for r in simulated}] + sim_skipped
    rows = [row for bs in cfg.batch_sizes
            for row in _latency_rows(cfg, bs, all_cands, probes, jpegs, bundle, accuracy, log)]
    _ratios(rows)
    recorded = _record_timings(cands, rows, log)
    label_rows = _label_rows(cfg, cands, log)
    report = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(cfg.threads),
        "bundle": {"path": str(bundle.root), "model": bundle.manifest.model_name,
                   "image_size": bundle.manifest.preprocess.image_size, "embed_dim": bundle.manifest.embed_dim},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "rows": rows, "skipped": skipped, "peak_rss_mb": round(peak_rss_mb(), 1),
        "simulated": simulated,  # accuracy only (bench/simulated.py)
        "timings_recorded": recorded,
    }
    if label_rows:
        report["labels"] = label_rows
    if accuracy.get("eval"):
        report["eval"] = accuracy["eval"]
    report["warnings"] = warnings_for(report, cfg.max_accuracy_drop)
    return report


def _candidates(cfg: BenchConfig, bundle: Bundle, options: BackendOptions, probes: dict[str, np.ndarray],
                log: Callable[[str], None]) -> tuple[list[Candidate], list[dict[str, str]]]:
    """The rows to time: every artifact the bundle has for the requested encoders, backends and
    precisions that this machine can run; the rest are listed as skipped, with the reason."""
    skipped: list[dict[str, str]] = []
    cands: list[Candidate] = []
    for a in bundle.manifest.artifacts:
        if a.encoder not in cfg.encoders:
            continue
        backend = CAPABILITIES[a.target].backend if a.target in CAPABILITIES else a.target
        if (cfg.backends and backend not in cfg.backends) or (cfg.precisions and a.precision not in cfg.precisions):
            continue
        if runs_simulated(backend):  # never timed: bench/simulated.py gives its accuracy row
            continue
        if not backend_class(backend).available():
            skipped.append({"row": f"{a.key} on {backend}", "reason": f"{backend} is not usable on this machine"})
            continue
        log(f"loading {a.key} on {backend}")
        cands += _load_candidates(bundle, a, backend, options, probes[a.encoder])
    for b in cfg.backends or []:
        for p in cfg.precisions or [None]:  # type: ignore[list-item]
            if not any(c.backend == b and (p is None or c.precision == p) for c in cands):
                skipped.append({"row": f"{b}" + (f"-{p}" if p else ""),
                                "reason": "the bundle has no artifact for it, or its SDK is missing"})
    return cands, skipped


def _latency_rows(cfg: BenchConfig, bs: int, cands: list[Candidate], probes: dict[str, np.ndarray],
                  jpegs: list[bytes], bundle: Bundle, accuracy: dict[str, Any],
                  log: Callable[[str], None]) -> list[dict[str, Any]]:
    """One batch size: every row timed interleaved with the others (machine drift hits all alike).
    Camera-size end-to-end rows run at batch 1: a camera frame or a photo at a time."""
    calls: dict[str, Callable[[], object]] = {}
    of: dict[str, tuple[Candidate, str]] = {}
    labels = accuracy.get("labels")
    for c in cands:
        name = f"{c.encoder}/{c.label}/b{bs}"
        calls[f"{name}/model"], of[f"{name}/model"] = partial(c.run, probes[c.encoder][:bs]), (c, "model")
        if not (cfg.end_to_end and c.encoder == "image"):
            continue
        calls[f"{name}/end_to_end"] = _end_to_end(c, jpegs[:bs], bundle, labels)
        of[f"{name}/end_to_end"] = (c, "end_to_end")
        for w, h in cfg.camera_sizes if bs == 1 else []:
            mode = f"end_to_end_{w}x{h}"
            calls[f"{name}/{mode}"] = _end_to_end(c, [camera_jpeg(w, h)], bundle, labels)
            of[f"{name}/{mode}"] = (c, mode)
    log(f"timing batch size {bs}: {len(calls)} rows interleaved")
    timings = interleave(calls, warmup=cfg.warmup, runs=cfg.runs, min_time_s=cfg.min_time_s)
    rows = []
    for key, t in timings.items():
        c, mode = of[key]
        rows.append({
            "key": key, "encoder": c.encoder, "backend": c.backend, "precision": c.precision,
            "label": c.label, "inference_precision": c.inference_precision, "batch_size": bs,
            "mode": mode, **t.summary(bs), "cold_start_ms": round(c.cold_start_ms, 2),
            "size_mb": round(c.size_mb, 3), "rss_delta_mb": round(c.rss_delta_mb, 1),
            **_ran_fields(c), **accuracy["rows"].get(f"{c.encoder}/{c.label}", {}),
        })
        if mode != "model":  # the JPEG decode path: the training transform for torch, the bundle's for edgeclip
            rows[-1]["decode"] = "exact" if c.backend == "torch" else bundle.manifest.preprocess.decode
    return rows


def _record_timings(cands: list[Candidate], rows: list[dict[str, Any]], log: Callable[[str], None]) -> list[str]:
    """Each encoder timed at batch 1 in several precisions on one backend, under one set of options:
    recorded as one comparison, from which the runtime picks the fastest precision on this host
    (runtime/timings.py). Returns what was recorded, as "encoder/backend: precision ms, ..."."""
    by_label = {(c.encoder, c.label): c for c in cands}
    groups: dict[tuple[str, str, BackendOptions], dict[str, tuple[Artifact, float]]] = {}
    for r in rows:
        c = by_label.get((r["encoder"], r["label"]))
        if c is None or c.loaded is None or c.options is None or r["batch_size"] != 1 or r["mode"] != "model":
            continue
        groups.setdefault((c.encoder, c.backend, c.options), {})[c.loaded.artifact.key] = (
            c.loaded.artifact, r["median_ms"])
    recorded = []
    for (encoder, backend, options), latencies in groups.items():
        if len(latencies) > 1 and record(backend, options, latencies, by="edgeclip bench"):
            hint = f" (hint {options.precision_hint})" if options.precision_hint else ""
            recorded.append(f"{encoder}/{backend}{hint}: " + ", ".join(
                f"{a.precision} {ms:.2f} ms" for a, ms in sorted(latencies.values(), key=lambda am: am[1])))
    if recorded:
        log(f"recorded for the runtime's precision choice on this host ({timings_path()}): " + "; ".join(recorded))
    return recorded


def _ran_fields(c: Candidate) -> dict[str, Any]:
    """What ran the row (Backend.describe()), the manifest's float layers, and peak memory."""
    out: dict[str, Any] = {f"ran_{k}" if k == "device" else k: c.ran.get(k) for k in RAN_FIELDS}
    out["requested_device"] = c.ran.get("requested")
    out["fell_back_to_cpu"] = fell_back_to_cpu(c.ran)
    out["float_layers"] = c.float_layers
    out["peak_rss_mb"] = c.peak_rss_mb
    return out


def _peak_memory(cands: list[Candidate], log: Callable[[str], None]) -> None:
    """Peak RSS of load + first prediction, each candidate in a fresh process (candidates with the
    same request, the torch baseline's towers, share one)."""
    answers: dict[str, dict[str, Any]] = {}
    for c in cands:
        if c.probe is None:
            continue
        request = json.dumps(c.probe, sort_keys=True)
        if request not in answers:
            log(f"peak memory of {c.encoder}/{c.label} in a fresh process")
            answers[request] = measure(c.probe)
        answer = answers[request]
        c.peak_rss_mb = answer.get("peak_rss_mb")
        if "error" in answer:
            c.ran = {**c.ran, "memory_probe_error": answer["error"]}


def _label_rows(cfg: BenchConfig, cands: list[Candidate], log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Prompts per second and peak RSS of a label set (classes x templates), per text artifact and
    backend (and precision hint), each in a fresh process."""
    rows = []
    for c in cands:
        if c.encoder != "text" or c.probe is None or cfg.label_classes == 0:
            continue
        log(f"labels: {cfg.label_classes} classes x {cfg.label_templates} templates on {c.label}")
        answer = measure({**c.probe, "kind": "labels", "classes": cfg.label_classes,
                          "templates": cfg.label_templates})
        rows.append({"key": f"text/{c.label}/labels", "backend": c.backend, "precision": c.precision,
                     "label": c.label, "ran_device": c.ran.get("device"), "precision_hint": c.ran.get("precision_hint"),
                     "float_layers": c.float_layers, **answer})
    return rows


def _end_to_end(c: Candidate, jpegs: list[bytes], bundle: Bundle, labels: np.ndarray | None) -> Callable[[], object]:
    """Decode + preprocess + infer + postprocess, as an app does: an edgeclip row through the
    classifier's public path (the decode path the bundle was validated with, its scoring rule over
    `labels`); the torch baseline with the training transform, then the same scoring."""
    if c.loaded is not None:
        classes = [str(i) for i in range(len(labels))] if labels is not None else []
        clf = ZeroShotClassifier(bundle, c.loaded, Labels("bench", classes, labels) if labels is not None else None,
                                 BackendOptions())
        return partial(clf.classify, jpegs, top_k=5) if labels is not None else partial(clf.embed_images, jpegs)
    return partial(_torch_end_to_end, c, jpegs, bundle, labels)


def _torch_end_to_end(c: Candidate, jpegs: list[bytes], bundle: Bundle, labels: np.ndarray | None) -> object:
    x = np.stack([preprocess(j, bundle.manifest.preprocess) for j in jpegs])
    emb = c.run(x)
    if labels is None:
        return emb
    m = bundle.manifest
    p = scoring_from_manifest(m.model_config, m.logit_scale).probabilities(emb @ labels.T)
    return np.argsort(-p, axis=1)[:, :5]


def _reference(encoder: str, cands: list[Candidate], baseline: dict[str, Candidate]) -> Candidate | None:
    """torch eager fp32, else an fp32 artifact that ran in f32."""
    return baseline.get(encoder) or next((c for c in cands if c.encoder == encoder and c.precision == "fp32"
                                          and c.inference_precision in (None, "f32")), None)


def _labels(cfg: BenchConfig, bundle: Bundle, cands: list[Candidate], baseline: dict[str, Candidate],
            tokenize: TextTokenizer) -> tuple[np.ndarray | None, EvalImages | None, dict[str, Any]]:
    """(label embeddings in the eval classes' order, eval set, what they came from)."""
    if cfg.eval_data is None:
        first = next(iter(bundle.manifest.labels), None)  # only for the end-to-end postprocess
        return (bundle.label_set(first)[0] if first else None), None, {}
    evalset = load_eval_set(cfg.eval_data, bundle, cfg.eval_size)
    info: dict[str, Any] = {"source": cfg.eval_data, "classes": len(evalset.classes),
                            "images": len(evalset.targets)}
    text_ref = _reference("text", cands, baseline) if "text" in cfg.encoders else None
    if text_ref is not None:
        info["labels"] = f"text encoder {text_ref.label} on the source's class names and templates"
        labels = label_embeddings(evalset.classes, evalset.templates, lambda t: text_ref.run(tokenize(t)))
        return labels, evalset, info
    labels, name = bundle_label_rows(bundle, evalset)
    info["labels"] = f"the bundle's label set '{name}', matched by class name"
    return labels, evalset, info


def _accuracy(cfg: BenchConfig, bundle: Bundle, cands: list[Candidate], baseline: dict[str, Candidate],
              probes: dict[str, np.ndarray], tokenize: TextTokenizer) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": {}}
    refs: dict[str, tuple[np.ndarray, str]] = {}
    for e in cfg.encoders:
        ref = _reference(e, cands, baseline)
        if ref is not None:
            refs[e] = (ref.run(probes[e]), ref.label)
    labels, evalset, out["eval"] = _labels(cfg, bundle, cands, baseline, tokenize)
    out["labels"] = labels
    base_top1: float | None = None
    ref_image = _reference("image", cands, baseline)
    for c in sorted(cands, key=lambda c: c is not ref_image):  # the reference first: deltas are against it
        row: dict[str, Any] = {}
        if c.encoder in refs:
            cos = cosine_rows(c.run(probes[c.encoder]), refs[c.encoder][0])
            row.update(cosine_min=round(float(cos.min()), 6), cosine_mean=round(float(cos.mean()), 6),
                       cosine_ref=refs[c.encoder][1])
        if evalset is not None and labels is not None and c.encoder == "image":
            pixels, targets = evalset.pixels, evalset.targets
            emb = np.concatenate([c.run(pixels[i : i + 32]) for i in range(0, len(pixels), 32)])
            # labels[k] is the eval source's class k, so argmax indexes the same list as targets
            top1 = float(((emb @ labels.T).argmax(1) == targets).mean() * 100)
            if base_top1 is None:
                base_top1 = top1
            row.update(top1=round(top1, 2), top1_delta=round(top1 - base_top1, 2), eval_images=len(targets))
        out["rows"][f"{c.encoder}/{c.label}"] = row
    return out


def _ratios(rows: list[dict[str, Any]]) -> None:
    """Speed-up against the torch row and the plain onnxruntime fp32 row, and end-to-end over
    model-only; always the same encoder, batch size and mode."""
    by = {(r["encoder"], r["label"], r["batch_size"], r["mode"]): r for r in rows}
    for r in rows:
        for name, ref_label in (("speedup_vs_baseline", "torch-fp32"),
                                ("speedup_vs_onnxruntime_fp32", "onnxruntime-fp32")):
            ref = by.get((r["encoder"], ref_label, r["batch_size"], r["mode"]))
            if ref:
                r[name] = round(ref["median_ms"] / r["median_ms"], 3)
        if r["mode"].startswith("end_to_end"):
            model = by.get((r["encoder"], r["label"], r["batch_size"], "model"))
            if model:
                r["end_to_end_over_model"] = round(r["median_ms"] / model["median_ms"], 3)


def warnings_for(report: dict[str, Any], max_drop: float) -> list[str]:
    out = []
    rows = [r for r in report["rows"] if r["mode"] == "model"]
    for r in rows:
        if r.get("fell_back_to_cpu"):
            out.append(f"{r['key']}: {r['requested_device']} was asked for, but the CPU ran it ({r['ran_device']})")
        if r["precision"].startswith("int8"):
            for ref in rows:
                same = all(ref.get(k) == r.get(k) for k in ("encoder", "backend", "batch_size", "inference_precision"))
                if same and ref["precision"] in ("fp32", "fp16") and r["median_ms"] >= ref["median_ms"]:
                    out.append(f"{r['key']}: INT8 is not faster than {ref['precision']} "
                               f"({r['median_ms']:.2f} ms vs {ref['median_ms']:.2f} ms)")
        if r.get("top1_delta") is not None and r["top1_delta"] < -max_drop:
            out.append(f"{r['key']}: zero-shot top-1 drops {-r['top1_delta']:.2f} points (budget {max_drop})")
        if r["p90_ms"] > NOISY_SPREAD * r["median_ms"]:
            out.append(f"{r['key']}: noisy (p90 {r['p90_ms']:.2f} ms > {NOISY_SPREAD}x median); rerun when quiet")
    return out
