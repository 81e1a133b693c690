#!/usr/bin/env bash
# System (Debian) packages the project needs that pip cannot install: the real images the
# offline backbone is aligned on and benchmarked with, and the browser the dashboard is tested
# in. Idempotent: installs only what is absent.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
fi

# Fashion-MNIST as IDX gz files under /usr/share/datasets/fashion-mnist/.
dpkg -s dataset-fashion-mnist >/dev/null 2>&1 \
    || ($SUDO apt-get update && $SUDO apt-get install -y dataset-fashion-mnist)
# Headless Chromium and its WebDriver for the dashboard's browser tests (tests/ui).
dpkg -s chromium chromium-driver >/dev/null 2>&1 \
    || ($SUDO apt-get update && $SUDO apt-get install -y chromium chromium-driver)
# wrk, bench/peer.py's second load generator (and its test in tests/bench/test_peer.py).
command -v wrk >/dev/null 2>&1 \
    || ($SUDO apt-get update && $SUDO apt-get install -y wrk)
