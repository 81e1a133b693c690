#!/usr/bin/env bash
# A/B in one sitting: our server with 2 processes, one shared listening socket (RCS_API_REUSE_PORT=false,
# uvicorn's way) against one socket per process (true), alternated twice, multipart, our generator.
set -e
D=bench/results/peer-2026-12-07-reuseport/ab
for round in 1 2; do
  for reuse in false true; do
    RCS_API_REUSE_PORT=$reuse .venv/bin/python bench/peer.py --servers ours --generators ours \
      --formats multipart --clients 32,64 --requests 1024 --workers 2 --torch-threads 1 \
      --json $D/reuse-port-$reuse-round-$round.json > $D/reuse-port-$reuse-round-$round.txt 2>&1
  done
done
