#!/usr/bin/env bash
# The 2-epoch runs of bench/shift/PLAN-issue24.md (short lanes), started 2026-12-07.
cd /work/main
export PYTHONPATH=$PWD:$PWD/offline OMP_NUM_THREADS=1
M=flyp,drm-weight,drm-soft,drm-soft-default,ce
C="--methods $M --seeds 0,1,2,3,4 --fine-alphas --threads 1 --descriptions bench/shift/descriptions/v2.json"
run() { .venv/bin/python -m bench.shift "$@" $C; }
( run --tasks fashion-spurious --out runs/i24/short-fashion-spurious ) > runs/i24/lane1.log 2>&1 &
echo $! > runs/i24/lane1.pid
( run --tasks animals-corruption --out runs/i24/short-animals-corruption
  run --tasks digits-natural --out runs/i24/short-digits-natural ) > runs/i24/lane2.log 2>&1 &
echo $! > runs/i24/lane2.pid
