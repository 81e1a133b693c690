#!/usr/bin/env bash
# `make compose-smoke`: the docker-compose deployment run for real on a Docker engine, CPU
# profile (docker-compose.yml + docker-compose.cpu.yml): build the images, bring the stack up,
# and through the published API port create a key, register a dataset, store descriptions, run a
# DRM job to completion on the worker container, classify images, then `docker kill` the worker
# mid-job and show the job resumes from its checkpoint and finishes once after
# `docker compose up -d`; then `down -v`. Every step is printed with its time; any failure exits
# non-zero. The steps themselves are scripts/compose-smoke/smoke.py.
#
# Needs a Docker engine and Compose v2 (docker compose, or the docker-compose v2 binary that
# `make install` puts in .venv/bin from the dev extra). Where no engine runs and this is root with
# dockerd installed (Debian: apt-get install docker.io), it starts one at low priority
# (nice 15), and on exit stops it and puts back the network state it changed (iptables rules,
# bridges and veth links, IP forwarding), as snapshotted before. Base images that are absent
# (no registry reachable) are replaced by local stand-ins (scripts/compose-smoke/standins.sh).
#
# Environment: COMPOSE (the compose command), RCS_API_PORT (default: a free port; published on
# 127.0.0.1 only), RCS_SMOKE_PROJECT (compose project, default robust-clip-smoke: never the
# deployment's own volumes), PYTHON_IMAGE / REDIS_IMAGE / POSTGRES_IMAGE (base images),
# RCS_SMOKE_DOCKERD_ARGS (extra dockerd flags), DOCKERD_MTU (default: the default route's MTU).
# The images stay in the engine's store as a build cache for the next run (docker image rm
# robust-clip-api:smoke robust-clip-worker:smoke removes them).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
state=$(mktemp -d /tmp/rcs-compose-smoke.XXXXXX)
started_dockerd=""
t0=$(date +%s)

say() { printf '[%6ss] %s\n' "$(($(date +%s) - t0)).0" "$*"; }

# --- Compose v2 -----------------------------------------------------------------------------
compose_version() { "$@" version --short 2>/dev/null | sed 's/^v//'; }
find_compose() {
    local candidate version
    if [ -n "${COMPOSE:-}" ]; then echo "$COMPOSE"; return; fi
    for candidate in "$root/.venv/bin/docker-compose" "docker compose" "docker-compose"; do
        # shellcheck disable=SC2086
        version=$(compose_version $candidate || true)
        case "$version" in [2-9].* | [1-9][0-9].*)
            echo "$candidate"; return ;;
        esac
    done
    return 1
}
if ! COMPOSE=$(find_compose); then
    echo "compose-smoke: needs Docker Compose v2 (make install puts one in .venv/bin)" >&2
    exit 1
fi
export COMPOSE

# --- the engine, and the network state it changes ------------------------------------------
snapshot_network() {
    iptables-save 2>/dev/null | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//' >"$1.ipt4" || true
    ip6tables-save 2>/dev/null | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//' >"$1.ipt6" || true
    { nft list tables 2>/dev/null || true; } | sort >"$1.nft"
    ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort >"$1.links"
    : >"$1.sysctl"
    local key
    for key in net.ipv4.ip_forward net.ipv6.conf.all.forwarding \
        net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables; do
        [ -e "/proc/sys/${key//.//}" ] && echo "$key=$(sysctl -n "$key")" >>"$1.sysctl"
    done
    return 0
}

restore_network() {
    local link table family name key value
    # Links the engine made (docker0, br-*, veth*).
    for link in $(comm -13 "$state/before.links" <(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort)); do
        ip link delete "$link" 2>/dev/null || true
    done
    # Rules: every table as it was; tables that did not exist are emptied and, with nft, removed.
    for family in 4 6; do
        local save=iptables-save restore=iptables-restore tool=iptables
        [ "$family" = 6 ] && save=ip6tables-save restore=ip6tables-restore tool=ip6tables
        command -v "$save" >/dev/null || continue
        for table in filter nat mangle raw; do
            "$tool" -t "$table" -F 2>/dev/null || true
            "$tool" -t "$table" -X 2>/dev/null || true
            for chain in INPUT FORWARD OUTPUT PREROUTING POSTROUTING; do
                "$tool" -t "$table" -P "$chain" ACCEPT 2>/dev/null || true
            done
        done
        if [ -s "$state/before.ipt$family" ]; then "$restore" <"$state/before.ipt$family"; fi
    done
    if command -v nft >/dev/null; then
        while read -r _ family name; do
            if [ -n "$name" ]; then nft delete table "$family" "$name" 2>/dev/null || true; fi
        done < <(comm -13 "$state/before.nft" <(nft list tables 2>/dev/null | sort))
    fi
    while IFS='=' read -r key value; do
        sysctl -q -w "$key=$value" >/dev/null || true
    done <"$state/before.sysctl"
    snapshot_network "$state/after"
    local differs=""
    for part in ipt4 ipt6 nft links sysctl; do
        if ! cmp -s "$state/before.$part" "$state/after.$part"; then
            differs="$differs $part"
            diff "$state/before.$part" "$state/after.$part" >&2 || true
        fi
    done
    if [ -n "$differs" ]; then
        say "network state NOT restored:$differs"
        return 1
    fi
    say "network state restored (iptables, nft tables, links, forwarding as before)"
}

stop_dockerd() {
    local pid
    # dockerd's own pid file; the process started, if it never wrote one.
    pid=$(cat "$state/dockerd.pid" 2>/dev/null || echo "$started_dockerd")
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; sleep 1; fi
    # dockerd's own containerd, when it started one (its child, by process id).
    if [ -n "${containerd_pid:-}" ] && kill -0 "$containerd_pid" 2>/dev/null; then
        kill -TERM "$containerd_pid" 2>/dev/null || true
        sleep 2
    fi
    say "dockerd (pid $pid) stopped"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -f "$state/env" ] && docker info >/dev/null 2>&1; then
        # The driver brings the stack down itself; this is for an interrupted run.
        # shellcheck disable=SC2086,SC1091
        (set -a; . "$state/env"; $COMPOSE -p "$RCS_SMOKE_PROJECT" -f docker-compose.yml \
            -f docker-compose.cpu.yml ${RCS_SMOKE_EXTRA_FILES:-} down -v --remove-orphans \
            >/dev/null 2>&1) || true
    fi
    if [ -n "$started_dockerd" ]; then
        stop_dockerd
        restore_network || rc=1
    fi
    rm -rf "$state"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if docker info >/dev/null 2>&1; then
    say "using the running Docker engine ($(docker version -f '{{.Server.Version}}'))"
else
    if [ "$(id -u)" != 0 ] || ! command -v dockerd >/dev/null; then
        echo "compose-smoke: no Docker engine runs, and none can be started here (root and dockerd needed)" >&2
        exit 1
    fi
    snapshot_network "$state/before"
    mtu=${DOCKERD_MTU:-$(ip route show default | awk '{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1); exit}' | xargs -r -I{} cat /sys/class/net/{}/mtu)}
    # Low priority: its containers and builds inherit it.
    # shellcheck disable=SC2086
    nice -n 15 setsid dockerd --mtu "${mtu:-1500}" --pidfile "$state/dockerd.pid" \
        ${RCS_SMOKE_DOCKERD_ARGS:-} >"$state/dockerd.log" 2>&1 &
    started_dockerd=$!
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$started_dockerd" 2>/dev/null || break
        sleep 1
    done
    if ! docker info >/dev/null 2>&1; then
        tail -20 "$state/dockerd.log" >&2
        echo "compose-smoke: dockerd did not come up" >&2
        exit 1
    fi
    containerd_pid=$(pgrep -P "$(cat "$state/dockerd.pid")" containerd || true)
    say "started dockerd $(docker version -f '{{.Server.Version}}') (pid $(cat "$state/dockerd.pid"), nice 15, mtu ${mtu:-1500})"
fi
# shellcheck disable=SC2086 # "docker compose" is two words
say "compose: $COMPOSE ($(compose_version $COMPOSE))"

py=python3
[ -x "$root/.venv/bin/python" ] && py="$root/.venv/bin/python"
# RCS_SMOKE_S3=1 (make compose-smoke-s3): the object-storage variant, scripts/compose-smoke/smoke_s3.py.
driver=scripts/compose-smoke/smoke.py
[ -n "${RCS_SMOKE_S3:-}" ] && driver=scripts/compose-smoke/smoke_s3.py
RCS_SMOKE_T0=$t0 nice -n 10 "$py" "$driver" --state "$state"
