#!/usr/bin/env bash
# System (Debian) packages the project needs that pip cannot install: the real images the
# offline backbone is aligned on and benchmarked with. Idempotent: installs only what is absent.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
fi

# Fashion-MNIST as IDX gz files under /usr/share/datasets/fashion-mnist/.
dpkg -s dataset-fashion-mnist >/dev/null 2>&1 \
    || ($SUDO apt-get update && $SUDO apt-get install -y dataset-fashion-mnist)
