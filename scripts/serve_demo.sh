#!/usr/bin/env bash
# The main job through the real service: API + Celery worker processes on SQLite, a local
# artifact folder and Kombu's SQLite broker (no servers to install). Backbone: RCS_DEMO_ARCH
# (default test-tiny-vit; e.g. RCS_DEMO_ARCH=ViT-B-16 RCS_DEMO_PRETRAINED=openai).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m service.demo "$@"
