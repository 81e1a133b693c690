#!/usr/bin/env bash
# A/B in one sitting on a quiet machine: our server alone, 2 processes of one torch thread,
# multipart, our generator, 32 and 64 clients. Variants: the listening socket (shared, uvicorn's
# way, or one per process: RCS_API_REUSE_PORT) and the decoding threads per process
# (RCS_PREDICT_DECODE_THREADS: 0 is min(4, cores) = 2 here, or 1). Alternated, two rounds.
set -e
D=bench/results/peer-2026-12-07-s12/ab
for round in 1 2; do
  for reuse in false true; do
    for decode in 0 1; do
      name=reuse-$reuse-decode-$decode-round-$round
      RCS_API_REUSE_PORT=$reuse RCS_PREDICT_DECODE_THREADS=$decode .venv/bin/python bench/peer.py \
        --servers ours --generators ours --formats multipart --clients 32,64 --requests 1024 \
        --workers 2 --torch-threads 1 --json $D/$name.json > $D/$name.txt 2>&1
      uptime >> $D/conditions.txt
    done
  done
done
