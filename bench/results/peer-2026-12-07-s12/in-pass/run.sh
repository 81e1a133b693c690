#!/usr/bin/env bash
# A/B in one sitting: our server, 2 processes of one torch thread, one listening socket each,
# decoding on the decoding threads as requests arrive (RCS_PREDICT_DECODE_IN_PASS=false) or on
# the inference thread just before each pass (true); both formats, our generator, 32 and 64
# clients, 1,024 requests per level; alternated, three rounds.
set -e
D=bench/results/peer-2026-12-07-s12/in-pass
for round in 1 2 3; do
  for in_pass in true false; do
    name=ab-in-pass-$in_pass-round-$round
    RCS_API_REUSE_PORT=true RCS_PREDICT_DECODE_IN_PASS=$in_pass .venv/bin/python bench/peer.py \
      --servers ours --generators ours --formats multipart,json --clients 32,64 --requests 1024 \
      --workers 2 --torch-threads 1 --json $D/$name.json > $D/$name.txt 2>&1
    uptime >> $D/conditions.txt
  done
done
