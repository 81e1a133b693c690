#!/usr/bin/env bash
# One prepared GPU check, under 8 minutes on one GPU, no network needed:
#   1. training images/s of flyp and drm (weight, cached p_c) steps, ViT-B-16 (random init)
#      in bf16, through the real training loop (bench/train_step.py);
#   2. POST /predict throughput of the real API process against the model's own limit, with
#      dynamic batching and without (bench/serve.py).
# Results (markdown and JSON) go to --out (default runs/gpu-check/<UTC time>); the figures
# belong in docs/benchmarks/training.md ("GPU check") with the date and the GPU.
#
#   bench/gpu_check.sh                       # on a GPU machine, from the repository root
#   bench/gpu_check.sh --device cpu --tiny   # a dry run of the same steps on CPU (a few minutes)
set -euo pipefail

DEVICE=cuda
TINY=0
OUT=""
PYTHON=${PYTHON:-.venv/bin/python}
while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --tiny) TINY=1; shift ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-check/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
# Nothing may reach the network: every model here is random-init or already on disk.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

if [[ $TINY == 1 ]]; then
    ARCH=test-tiny-vit; BATCH=8; STEPS=3; CLIENTS=1,8; REQUESTS=32; MAX_BATCH=8; LIMIT_S=1
    TRAIN_BUDGET=600; SERVE_BUDGET=900
else
    ARCH=ViT-B-16; BATCH=128; STEPS=10; CLIENTS=1,32,64; REQUESTS=512; MAX_BATCH=64; LIMIT_S=10
    TRAIN_BUDGET=200; SERVE_BUDGET=240
fi
AMP=bf16
[[ $DEVICE == cpu ]] && AMP=none  # bf16 on CPU is measured by bench/train_step.py --epoch

{
    echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "device: $DEVICE; arch: $ARCH; commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    if [[ $DEVICE == cuda* ]] && command -v nvidia-smi >/dev/null; then
        echo "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
    fi
    "$PYTHON" -c 'import torch; print(f"torch {torch.__version__}, cuda {torch.version.cuda}")'
    echo
} | tee "$OUT/summary.md"

echo "## training step ($ARCH, batch $BATCH, amp $AMP)" | tee -a "$OUT/summary.md"
timeout "$TRAIN_BUDGET" "$PYTHON" bench/train_step.py --device "$DEVICE" --amp "$AMP" \
    --arch "$ARCH" --batch-size "$BATCH" --steps "$STEPS" --warmup 2 --variants flyp,drm \
    --json "$OUT/train_step.json" | tee -a "$OUT/summary.md"

echo | tee -a "$OUT/summary.md"
echo "## /predict ($ARCH, max batch $MAX_BATCH)" | tee -a "$OUT/summary.md"
timeout "$SERVE_BUDGET" "$PYTHON" bench/serve.py --device "$DEVICE" --models "$ARCH" \
    --clients "$CLIENTS" --requests "$REQUESTS" --max-batch "$MAX_BATCH" \
    --limit-seconds "$LIMIT_S" --json "$OUT/serve.json" | tee -a "$OUT/summary.md"

echo "results in $OUT"
