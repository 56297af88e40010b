#!/usr/bin/env bash
# One prepared run for a lent NVIDIA GPU (the `device` tool: run `bash benchmarks/gpu_check.sh`;
# results land in $OUT, default ./gpu-results). It uses the machine's own CUDA PyTorch, never this
# repo's CPU venv, and needs edgeclip's pure-Python dependencies importable there
# (tokenizers, safetensors, click, rich, pillow, numpy); open_clip rows need open_clip_torch.
#   1. the CUDA trainer tests (tests/test_gpu.py: bf16/fp16 autocast, channels-last, compile,
#      a non-finite step skipped inside fused AdamW, the step run under CUDA's sync debug mode "error");
#   2. #3's throughput goal: ViT-B-32, bf16, batch 256, edgeclip's training step against
#      open_clip's (eager and torch.compile), interleaved.
set -u
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi; $PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"; } > "$OUT/machine.txt" 2>&1
timeout 240 $PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_gpu.py > "$OUT/test_gpu.txt" 2>&1
echo "tests rc=$?" >> "$OUT/test_gpu.txt"
SIDES=edgeclip,edgeclip+compile
$PY -c "import open_clip" 2>/dev/null && SIDES=edgeclip,edgeclip+compile,open_clip,open_clip+compile
timeout 300 $PY benchmarks/train_throughput.py --device cuda --precision bf16 --batch 256 --models ViT-B-32 \
    --sides "$SIDES" --open-clip-python "$PY" --rounds 6 --steps-per-round 10 \
    --out "$OUT/train_throughput_cuda.json" > "$OUT/train_throughput.log" 2>&1
echo "throughput rc=$?" >> "$OUT/train_throughput.log"
tail -n 40 "$OUT"/*.txt "$OUT"/*.log
