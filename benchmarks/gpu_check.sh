#!/usr/bin/env bash
# One prepared run for a lent NVIDIA GPU (the `device` tool: run `bash benchmarks/gpu_check.sh`;
# results land in $OUT, default ./gpu-results). It uses the machine's own CUDA PyTorch (python3),
# never this repo's CPU venv. edgeclip's pure-Python dependencies that the machine lacks travel as
# wheels in .whl/ (open_clip_torch, ftfy, wcwidth, webdataset, braceexpand; see ENVIRONMENT.md).
#   1. the CUDA trainer tests (tests/train/test_gpu.py: bf16/fp16 autocast, channels-last, compile,
#      a non-finite step skipped inside fused AdamW, the step run under CUDA's sync debug mode "error");
#   2. the throughput goal: ViT-B-32, bf16, batch 256, edgeclip's training step against
#      open_clip's (eager and torch.compile), interleaved, then a torch.profiler table per side.
set -u
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ nvidia-smi; $PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"; } > "$OUT/machine.txt" 2>&1
# -W default: a library's deprecation warning on this machine's torch is reported, not a failure
timeout 200 $PY -m pytest -q -p no:cacheprovider -o addopts="" -W default -rA tests/train/test_gpu.py > "$OUT/test_gpu.txt" 2>&1
echo "tests rc=$?" >> "$OUT/test_gpu.txt"
SIDES=edgeclip,edgeclip+compile
$PY -c "import open_clip" 2>/dev/null && SIDES=edgeclip,edgeclip+compile,open_clip,open_clip+compile
timeout 330 $PY benchmarks/train_throughput.py --device cuda --precision bf16 --batch 256 --models ViT-B-32 \
    --sides "$SIDES" --open-clip-python "$PY" --rounds 6 --steps-per-round 10 --profile "$OUT/profile.txt" \
    --out "$OUT/train_throughput_cuda.json" > "$OUT/train_throughput.log" 2>&1
echo "throughput rc=$?" >> "$OUT/train_throughput.log"
tail -n 25 "$OUT"/*.txt "$OUT"/*.log
