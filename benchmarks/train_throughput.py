"""edgeclip's training step against open_clip's on the same model, batch, precision and data.

    .venv/bin/python benchmarks/train_throughput.py [--models ViT-B-32,edge-vit] [--batch 32] [--rounds 4]
    # on a GPU (the issue's goal: ViT-B-32, bf16, batch 256, against open_clip eager bf16):
    python benchmarks/train_throughput.py --device cuda --precision bf16 --batch 256 --models ViT-B-32 \
        --sides edgeclip,edgeclip+compile,open_clip,open_clip+compile --open-clip-python python --rounds 6

open_clip needs torchvision, which does not import beside this venv's CPU torch 2.13, so open_clip
runs in its own venv (default /tmp/ocenv: `torch==2.14.1 torchvision==0.29.1 open_clip_torch`,
created on first use, ~5.6 GB, about a minute from this machine's local wheels). Each side runs in
a persistent worker process; the script alternates them round by round (interleaved, so machine
drift cancels in the ratio) and prints samples/s and the ratio as JSON
(also written to benchmarks/results/train_throughput.json).

"Same model": ViT-B-32 as both define it; "edge-vit" is edge-tiny's size with a patch-16 stem
(open_clip has no conv stem); it is a benchmark-only config, not a `--model` name. Both use fp32
AdamW and the same loss. Two caption rows per model (`--captions`):
- `generated`: 8-20 tokens padded to the context length. edgeclip's trainer drops the all-padding
  columns before the text tower (a real speed-up, and the reason for part of the ratio); open_clip
  runs the full context length.
- `full`: every caption fills the whole context length, so trimming gives edgeclip nothing.
Each row names the torch version each side ran (open_clip lives in another venv).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EDGE_VIT = {  # edge-tiny's dimensions with a patch stem, as an open_clip config
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 128, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 24, "vocab_size": 1024, "width": 128, "heads": 4, "layers": 2},
}


def _batch(batch: int, image_size: int, ctx: int, vocab: int, captions: str):  # type: ignore[no-untyped-def]
    import torch

    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, image_size, image_size, generator=g)
    ids = torch.zeros(batch, ctx, dtype=torch.long)
    if captions == "full":  # no padding at all: trimming has nothing to drop
        lengths = torch.full((batch,), ctx)
    else:
        lengths = torch.randint(8, min(20, ctx - 1), (batch,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        ids[i, 0] = vocab - 2
        ids[i, 1 : n - 1] = torch.randint(1, vocab - 2, (n - 2,), generator=g)
        ids[i, n - 1] = vocab - 1  # EOT: the highest id, where both pool
    return images, ids


def worker(side: str, model_name: str, batch: int, threads: int, device: str, precision: str,
           captions: str) -> None:
    """Build the model, then answer lines 'N' with the seconds N training steps took.
    `side` is edgeclip or open_clip, with "+compile" for torch.compile."""
    import contextlib

    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    side, _, compiled = side.partition("+")
    autocast = (torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # both trainers' default for fp32 on CUDA
        torch.backends.cudnn.allow_tf32 = True
    if side == "edgeclip":
        sys.path.insert(0, str(HERE.parent))
        from edgeclip.model.clip import CLIP
        from edgeclip.model.config import ModelConfig, get_config
        from edgeclip.train.loop import apply_gradients
        from edgeclip.train.loss import clip_loss
        from edgeclip.train.nonfinite import NonFiniteSkipper
        from edgeclip.train.recipe import param_groups

        cfg = get_config(model_name) if model_name != "edge-vit" else ModelConfig.from_dict(
            {**EDGE_VIT, "vision_cfg": {**{k: v for k, v in EDGE_VIT["vision_cfg"].items() if k != "head_width"},
                                        "heads": 4}}, name="edge-vit")
        model = CLIP(cfg).train().to(dev)
        # the trainer's step: fused AdamW, then apply_gradients (norm, non-finite step skipped, clamp)
        opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, fused=True)
        scaler, skipper = torch.amp.GradScaler(dev.type, enabled=False), NonFiniteSkipper(dev)
        images, ids = _batch(batch, cfg.vision_cfg.image_size, cfg.text_cfg.context_length, cfg.text_cfg.vocab_size,
                              captions)
        ids = ids[:, : int(ids.argmax(1).max()) + 1]  # the trainer drops all-padding columns (on the host)
        images, ids = images.to(dev), ids.to(dev)
        forward = torch.compile(model) if compiled else model
        params = [p for p in model.parameters() if p.requires_grad]

        def step() -> None:
            with autocast:
                img, txt, scale = forward(images, ids)
            loss = clip_loss(img, txt, scale)
            loss.backward()
            apply_gradients(model, opt, scaler, skipper, loss, params, None)
    else:
        import open_clip
        from open_clip.loss import ClipLoss

        if model_name == "edge-vit":
            cfg_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "edgeclip_oc_cfg"
            cfg_dir.mkdir(exist_ok=True)
            (cfg_dir / "edge-vit.json").write_text(json.dumps(EDGE_VIT))
            open_clip.add_model_config(cfg_dir)
        model = open_clip.create_model(model_name).train().to(dev)
        ctx, vocab = model.context_length, model.vocab_size
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
        images, ids = (t.to(dev) for t in _batch(batch, size, ctx, vocab, captions))
        loss_fn = ClipLoss()
        forward = torch.compile(model) if compiled else model  # open_clip's --torchcompile

        def step() -> None:  # open_clip's train_one_epoch, without its data loader
            with autocast:
                out = forward(images, ids)
                loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"]) \
                    if isinstance(out, dict) else loss_fn(*out[:3])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3 if compiled else 1):  # warm-up: allocator, kernels, compilation
        step()
    sync()
    print(f"ready torch {torch.__version__}", flush=True)
    for line in sys.stdin:
        if line.startswith("profile "):  # append where this side's step spends its time
            path, _, row = line.split(" ", 1)[1].rstrip("\n").partition("\t")
            _profile(step, sync, f"{side}{'+compile' if compiled else ''} {row}", path)
            print("done", flush=True)
            continue
        n = int(line)
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        sync()
        print(f"{time.perf_counter() - t0:.6f}", flush=True)


def _profile(step, sync, label: str, path: str) -> None:  # type: ignore[no-untyped-def]
    """Five steps under torch.profiler; the top operators by device time, appended to `path`."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for _ in range(5):
            step()
        sync()
    sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    with open(path, "a") as f:
        f.write(f"\n=== {label}: 5 steps ===\n")
        f.write(prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=60))


def ensure_open_clip_env(venv: Path) -> Path:
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import open_clip, torch; print(torch.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"setting up open_clip's environment in {venv} (torch 2.14.1 + torchvision 0.29.1) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "torch==2.14.1", "torchvision==0.29.1",
                    "open_clip_torch"], check=True)
    return python


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="edge-vit,ViT-B-32")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast, as both trainers do")
    ap.add_argument("--sides", default="edgeclip,open_clip",
                    help="comma list of edgeclip, open_clip, edgeclip+compile, open_clip+compile")
    ap.add_argument("--captions", default="generated,full",
                    help="comma list: generated (8-20 tokens, padded) and/or full (the whole context length)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps-per-round", type=int, default=2)
    ap.add_argument("--open-clip-venv", default="/tmp/ocenv")
    ap.add_argument("--open-clip-python", default=None,
                    help="an interpreter that imports open_clip (e.g. this one on a GPU machine); "
                         "default: the --open-clip-venv, created if missing")
    ap.add_argument("--out", default=str(HERE / "results" / "train_throughput.json"))
    ap.add_argument("--profile", default=None,
                    help="after the timed rounds, append each side's torch.profiler table (5 steps) to this file")
    ap.add_argument("--worker", default=None)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.model, args.batch, args.threads, args.device, args.precision, args.captions)
        return
    sides = args.sides.split(",")
    oc_python = None
    if any(s.startswith("open_clip") for s in sides):
        oc_python = args.open_clip_python or str(ensure_open_clip_env(Path(args.open_clip_venv)))
    results: list[dict[str, object]] = []
    report = {"benchmark": "train_throughput", "device": _device_name(args.device), "results": results,
              "note": "median over interleaved rounds; synthetic random-init model and batch on the device "
                      "(no data loading); torch versions per side in each row"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for model in args.models.split(","):
        for captions in args.captions.split(","):
            results.append(_measure(args, model, captions, sides, oc_python))
            tmp = out.with_suffix(".tmp")  # written after every row: a run cut short keeps what it measured
            tmp.write_text(json.dumps(report, indent=2) + "\n")
            tmp.replace(out)
    print(json.dumps(report, indent=2))


def _ready(p: subprocess.Popen) -> str:  # type: ignore[type-arg]
    """Wait for a worker's 'ready torch X' line; returns its torch version."""
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    assert line.startswith("ready"), line
    return line.split("torch ", 1)[1]


def _measure(args: argparse.Namespace, model: str, captions: str, sides: list[str],
             oc_python: str | None) -> dict[str, object]:
    """One interleaved row: every side runs `rounds` x `steps_per_round` steps, alternating."""
    procs, torch_versions = {}, {}
    for side in sides:
        python = oc_python if side.startswith("open_clip") else sys.executable
        procs[side] = subprocess.Popen(
            [str(python), __file__, "--worker", side, "--model", model, "--batch", str(args.batch),
             "--threads", str(args.threads), "--device", args.device, "--precision", args.precision,
             "--captions", captions],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        if args.device == "cuda":  # one process on the GPU at a time while it builds
            torch_versions[side] = _ready(procs[side])
    for side, p in procs.items():
        if side not in torch_versions:
            torch_versions[side] = _ready(p)
    times: dict[str, list[float]] = {s: [] for s in procs}
    for _ in range(args.rounds):
        for side, p in procs.items():  # alternate: drift hits both sides alike
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write(f"{args.steps_per_round}\n")
            p.stdin.flush()
            times[side].append(float(p.stdout.readline()))
    if args.profile:
        for p in procs.values():
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write(f"profile {Path(args.profile).resolve()}\t[{model}, {captions} captions]\n")
            p.stdin.flush()
            assert p.stdout.readline().strip() == "done"
    for p in procs.values():
        p.stdin.close()  # type: ignore[union-attr]
        p.wait()
    sps = {s: args.batch * args.steps_per_round / sorted(t)[len(t) // 2] for s, t in times.items()}
    row: dict[str, object] = {
        "model": model, "captions": captions, "batch": args.batch, "threads": args.threads,
        "precision": args.precision, "torch": torch_versions,
        "samples_per_s": {k: round(v, 1) for k, v in sps.items()}, "round_seconds": times}
    if "open_clip" in sps:
        row["ratio_over_open_clip_eager"] = {k: round(v / sps["open_clip"], 3) for k, v in sps.items()
                                             if k != "open_clip"}
    return row


def _device_name(device: str) -> str:
    import platform

    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return f"{platform.processor() or platform.machine()} CPU (torch {torch.__version__})"


if __name__ == "__main__":
    main()
