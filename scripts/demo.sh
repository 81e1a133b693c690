#!/usr/bin/env bash
# The main job, end to end from the CLI: make a small shift dataset, fine-tune with DRM,
# sweep WiSE-FT, then classify held-out out-of-distribution images with the artifact.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

$PY -m models synthetic runs/demo/data --per-class 24 --size 32
$PY -m models finetune --config configs/demo.yaml
echo
echo "== predict on three out-of-distribution images (background no longer matches) =="
$PY -m models predict runs/demo/model \
    runs/demo/data/ood_test/circle/0000.png \
    runs/demo/data/ood_test/square/0000.png \
    runs/demo/data/ood_test/triangle/0000.png --top-k 2
