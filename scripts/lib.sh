# Shared helpers for the lab scripts. Source it; do not run it.
# shellcheck shell=bash

# Repository root, whatever directory the caller runs from.
DRCTL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Everything slow to rebuild (rootfs tarball, garage binary, S3 state) lives here and is
# reused by later runs on the same machine (CI runs on the developer's machine).
DRCTL_CACHE="${DRCTL_CACHE:-$HOME/.cache/drctl}"
export DRCTL_ROOT DRCTL_CACHE

# The Docker 28 CLI on PATH would otherwise ask for the buildx plugin, which is not here;
# the classic builder talks to the 20.10 daemon fine.
export DOCKER_BUILDKIT=0
# Never let apt (or anything) wait for an answer: CI has no stdin.
export DEBIAN_FRONTEND=noninteractive

# Colour only on a terminal (CI logs stay plain).
if [ -t 2 ]; then _b=$'\033[1m' _y=$'\033[1;33m' _r=$'\033[1;31m' _n=$'\033[0m'; else _b='' _y='' _r='' _n=''; fi
log() { printf '%s[%s]%s %s\n' "$_b" "${LOG_TAG:-drctl}" "$_n" "$*" >&2; }
warn() { printf '%s[%s] warning:%s %s\n' "$_y" "${LOG_TAG:-drctl}" "$_n" "$*" >&2; }
die() { printf '%s[%s] error:%s %s\n' "$_r" "${LOG_TAG:-drctl}" "$_n" "$*" >&2; exit 1; }

have() { command -v "$1" >/dev/null 2>&1; }

# apt-get update once per script run, and only when something must be installed.
_apt_updated=0
apt_install() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "need root to install: ${missing[*]}"
    if [ "$_apt_updated" -eq 0 ]; then
        log "apt-get update"
        apt-get update -qq </dev/null || die "apt-get update failed"
        _apt_updated=1
    fi
    log "installing: ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null \
        || die "apt-get install ${missing[*]} failed"
}

# The compose command: v2 plugin when it works (what users mostly have), else v1.
compose_cmd() {
    if docker compose version >/dev/null 2>&1; then
        echo "docker compose"
    elif have docker-compose; then
        echo "docker-compose"
    else
        return 1
    fi
}

docker_ok() { docker info >/dev/null 2>&1; }
