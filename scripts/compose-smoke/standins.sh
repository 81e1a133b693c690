#!/usr/bin/env bash
# Test scaffolding for `make compose-smoke`, not part of the deployment: local stand-ins for the
# three base images (Python, Redis, PostgreSQL) on a machine that reaches no image registry.
#
#   bash scripts/compose-smoke/standins.sh PYTHON_TAG REDIS_TAG POSTGRES_TAG
#
# The Python stand-in is a minimal Debian root filesystem made by debootstrap (Debian's
# python3 3.11, venv, ca-certificates, and the host's CA bundle so pip reaches the package index
# the host reaches), imported as an image. Redis and PostgreSQL are Debian's packages on top of
# it (redis.Dockerfile, postgres.Dockerfile), with entrypoints that honour what the compose file
# uses of the official images. The Debian mirror is the host's own apt source (DEBIAN_MIRROR
# overrides it). Needs root, debootstrap and a running Docker engine; an existing tag is kept.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python_tag=$1 redis_tag=$2 postgres_tag=$3
suite=${DEBIAN_SUITE:-bookworm}

have() { docker image inspect "$1" >/dev/null 2>&1; }

mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    local uri
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' \
        /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$uri" ] || { echo "no Debian mirror found in /etc/apt; set DEBIAN_MIRROR" >&2; exit 1; }
    echo "$uri"
}

if ! have "$python_tag"; then
    command -v debootstrap >/dev/null || { echo "debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
    rootfs=$(mktemp -d /var/tmp/rcs-standin-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    echo "   debootstrap $suite (python3, venv) into $rootfs"
    nice -n 15 debootstrap --variant=minbase \
        --include=python3,python3-venv,python-is-python3,ca-certificates \
        "$suite" "$rootfs" "$(mirror)" >"$rootfs.log" 2>&1 \
        || { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
    rm -f "$rootfs.log"
    # The host's CA bundle: the package index is reached the way the host reaches it.
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    # No service starts while a package installs in a container.
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod +x "$rootfs/usr/sbin/policy-rc.d"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["python3"]' \
        - "$python_tag" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
fi
build() {
    local log
    log=$(mktemp)
    echo "   docker build $1 (Debian's package on $python_tag)"
    if ! nice -n 15 docker build -t "$1" --build-arg BASE="$python_tag" -f "$here/$2" "$here" \
        >"$log" 2>&1; then
        tail -30 "$log" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
}
have "$redis_tag" || build "$redis_tag" redis.Dockerfile
have "$postgres_tag" || build "$postgres_tag" postgres.Dockerfile
