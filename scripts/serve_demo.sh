#!/usr/bin/env bash
# The main job through the real service: API + Celery worker processes on SQLite, a local
# artifact folder and Kombu's SQLite broker (no servers to install). Backbone: RCS_DEMO_ARCH
# (default offline-lite0-minilm, built on first use; test-tiny-vit with --tiny; e.g.
# RCS_DEMO_ARCH=ViT-B-16 RCS_DEMO_PRETRAINED=openai where those weights are cached).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# In a terminal the API, worker and dashboard stay up after the run (Ctrl-C stops them); run
# without one (CI, a pipe) or with RCS_DEMO_EXIT=1, the demo exits when it has printed its table.
KEEP=()
if [ -t 0 ] && [ -t 1 ] && [ -z "${RCS_DEMO_EXIT:-}" ]; then
    KEEP=(--keep-serving)
fi
exec "$PY" -m tools.demo "${KEEP[@]}" "$@"
