#!/usr/bin/env bash
# Regenerates the lock the images install from (requirements/deploy.txt): every package of the
# project's dependencies and its `offline` extra, pinned with hashes, for Linux x86_64 and
# Python 3.11 (the images' platform), whatever machine this runs on. Run it after changing
# pyproject.toml's dependencies or the offline extra; it needs uv (`pip install uv`) and a
# reachable package index, and changes nothing else. The pins already in the file are kept;
# `bash requirements/lock.sh --upgrade` (or `--upgrade-package NAME`) moves them. Other extras
# (dev, peer) stay out of it.
# animal-mnist is not resolved here: requirements/no-deps.txt pins it by hand (see there).
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
"$UV" pip compile pyproject.toml --extra offline \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --generate-hashes --no-emit-package robust-clip \
    --custom-compile-command "bash requirements/lock.sh" \
    "$@" \
    -o requirements/deploy.txt
