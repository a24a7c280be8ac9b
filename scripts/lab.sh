#!/usr/bin/env bash
# The drctl lab: a local Docker engine, locally built images (no registry is reachable) and
# the lab compose stack (compose/lab.yml) that the tests and the demo run against.
#
#   scripts/lab.sh docker   ensure a Docker engine answers (install + start dockerd if needed)
#   scripts/lab.sh images   build the lab images that are missing or out of date
#   scripts/lab.sh up       start the lab stack and wait until every service is healthy
#   scripts/lab.sh down     stop and remove the lab stack (volumes kept)
#   scripts/lab.sh reset    stop and remove the lab stack and its volumes
#   scripts/lab.sh setup    docker + images + up
#   scripts/lab.sh env      print `export` lines for a test harness (eval "$(lab.sh env)")
#   scripts/lab.sh clean    remove leftovers of test runs (label org.drctl.test=1)
#   scripts/lab.sh status   show images and stack containers
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG=lab

LAB_PROJECT="${DRCTL_LAB_PROJECT:-drctl-lab}"
LAB_FILE="$DRCTL_ROOT/compose/lab.yml"
LAB_DIR="$DRCTL_ROOT/compose/lab"
LAB_CACHE="$DRCTL_CACHE/lab"

BASE_IMAGE=drctl-lab-base:1
# Packages of the base image. Changing this list changes the cached rootfs name, so a stale
# tarball is never reused.
BASE_PACKAGES=postgresql-15,redis-server,ca-certificates,curl,busybox
BASE_SUITE=bookworm
BASE_MIRROR="${DRCTL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

DOCKER_START_TIMEOUT=60
HEALTH_TIMEOUT="${DRCTL_LAB_HEALTH_TIMEOUT:-120}"

# ---------------------------------------------------------------------------------------
# docker
# ---------------------------------------------------------------------------------------
cmd_docker() {
    if docker_ok; then
        log "docker engine answers ($(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?'))"
        ensure_compose
        return 0
    fi
    # A DOCKER_HOST pointing elsewhere is the caller's choice: we cannot start that daemon.
    if [ -n "${DOCKER_HOST:-}" ] && [[ "$DOCKER_HOST" != unix:///var/run/docker.sock ]] \
        && [[ "$DOCKER_HOST" != unix:///run/docker.sock ]]; then
        die "DOCKER_HOST=$DOCKER_HOST does not answer (docker info failed); start that daemon or unset DOCKER_HOST"
    fi
    have dockerd || apt_install docker.io
    have docker || apt_install docker.io
    ensure_compose

    mkdir -p "$DRCTL_CACHE"
    local dlog="$DRCTL_CACHE/dockerd.log"
    if pgrep -x dockerd >/dev/null; then
        log "dockerd is running but not answering yet; waiting"
    else
        log "starting dockerd in the background (log: $dlog)"
        # setsid + nohup: the daemon must outlive this script (and the test run's shell).
        # A stale /var/run/docker.pid from a killed daemon is handled by dockerd itself.
        setsid nohup dockerd >>"$dlog" 2>&1 </dev/null &
    fi
    local i
    for ((i = 0; i < DOCKER_START_TIMEOUT; i++)); do
        if docker_ok; then
            log "docker engine answers after ${i}s ($(docker version -f '{{.Server.Version}}'))"
            return 0
        fi
        sleep 1
    done
    tail -n 20 "$dlog" >&2 || true
    die "dockerd did not answer within ${DOCKER_START_TIMEOUT}s; see $dlog (last lines above)"
}

ensure_compose() {
    compose_cmd >/dev/null || apt_install docker-compose
    compose_cmd >/dev/null || die "neither 'docker compose' nor 'docker-compose' works"
}

# ---------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------
image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# Content hash of a build context directory (plus extra strings), stored as an image label
# so that an edited Dockerfile or entrypoint triggers a rebuild instead of a stale image.
context_hash() {
    local dir=$1
    shift
    {
        (cd "$dir" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
        printf '%s\n' "$@"
    } | sha256sum | cut -c1-16
}

build_base() {
    local key tarball
    key=$(printf '%s %s %s' "$BASE_SUITE" "$BASE_PACKAGES" v2 | sha256sum | cut -c1-12)
    tarball="$LAB_CACHE/rootfs-$BASE_SUITE-$key.tar"
    if image_exists "$BASE_IMAGE" \
        && [ "$(docker image inspect -f '{{index .Config.Labels "org.drctl.lab.hash"}}' "$BASE_IMAGE")" = "$key" ]; then
        log "$BASE_IMAGE present"
        return 0
    fi
    mkdir -p "$LAB_CACHE"
    if [ ! -s "$tarball" ]; then
        apt_install debootstrap
        local rootfs="$LAB_CACHE/rootfs.tmp"
        # Leftover of an interrupted run: unmount its /proc etc. before deleting it.
        umount_below "$rootfs"
        rm -rf --one-file-system "$rootfs"
        log "debootstrap $BASE_SUITE with $BASE_PACKAGES (about a minute)"
        local t0=$SECONDS
        debootstrap --variant=minbase --include="$BASE_PACKAGES" "$BASE_SUITE" "$rootfs" "$BASE_MIRROR" \
            >"$LAB_CACHE/debootstrap.log" 2>&1 || {
            tail -n 30 "$LAB_CACHE/debootstrap.log" >&2
            umount_below "$rootfs"
            die "debootstrap failed; see $LAB_CACHE/debootstrap.log"
        }
        # Package scripts may have started daemons inside the chroot or left mounts.
        kill_chroot_processes "$rootfs"
        umount_below "$rootfs"
        # The package's default cluster is not used (the entrypoint runs its own initdb in
        # PGDATA); dropping it keeps pg_wrapper from pointing at it. Caches only cost size.
        rm -rf "$rootfs"/etc/postgresql/15/main "$rootfs"/var/lib/postgresql/15/main \
            "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
            "$rootfs"/var/log/*.log "$rootfs"/run/postgresql/* "$rootfs"/run/redis/* \
            "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
            "$rootfs"/usr/share/locale/*
        tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf --one-file-system "$rootfs"
        log "rootfs built in $((SECONDS - t0))s, cached at $tarball"
    else
        log "re-importing cached rootfs $tarball"
    fi
    docker import \
        --change 'LABEL org.drctl.lab=1' \
        --change "LABEL org.drctl.lab.hash=$key" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        "$tarball" "$BASE_IMAGE" >/dev/null
    # Older tarballs of other package lists are of no use any more.
    find "$LAB_CACHE" -maxdepth 1 -name 'rootfs-*.tar' ! -name "$(basename "$tarball")" -delete
    log "$BASE_IMAGE imported"
}

kill_chroot_processes() {
    local root pid link
    root=$(readlink -f "$1")
    for pid in /proc/[0-9]*; do
        link=$(readlink "$pid/root" 2>/dev/null) || continue
        if [ "$link" = "$root" ]; then
            warn "killing process ${pid#/proc/} left running in the chroot"
            kill -9 "${pid#/proc/}" 2>/dev/null || true
        fi
    done
}

umount_below() {
    local root
    root=$(readlink -f "$1" 2>/dev/null) || return 0
    # Deepest first.
    awk -v r="$root" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r \
        | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

# build_image NAME CONTEXT_DIR [EXTRA_HASH_INPUT...]
build_image() {
    local name=$1 ctx=$2
    shift 2
    local hash
    hash=$(context_hash "$ctx" "$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE")" "$@")
    if image_exists "$name" \
        && [ "$(docker image inspect -f '{{index .Config.Labels "org.drctl.lab.hash"}}' "$name")" = "$hash" ]; then
        log "$name present"
        return 0
    fi
    log "building $name"
    local blog="$LAB_CACHE/build-${name%%:*}.log"
    mkdir -p "$LAB_CACHE"
    docker build --label org.drctl.lab=1 --label "org.drctl.lab.hash=$hash" \
        -t "$name" "$ctx" >"$blog" 2>&1 || {
        tail -n 30 "$blog" >&2
        die "docker build of $name failed (context $ctx, log $blog)"
    }
}

cmd_images() {
    docker_ok || die "docker engine does not answer; run: scripts/lab.sh docker"
    local t0=$SECONDS
    # One build at a time (test.sh and demo.sh may run together).
    mkdir -p "$LAB_CACHE"
    exec 7>"$LAB_CACHE/.images.lock"
    flock 7
    build_base
    build_image drctl-lab-postgres:1 "$LAB_DIR/postgres"
    build_image drctl-lab-redis:1 "$LAB_DIR/redis"
    build_image drctl-lab-app:1 "$LAB_DIR/app"
    # No registry ships the Qdrant server: the image exists only when a qdrant binary does.
    local qbin
    if qbin=$(command -v qdrant); then
        qbin=$(readlink -f "$qbin")
        local ctx
        ctx=$(mktemp -d)
        cp -a "$LAB_DIR/qdrant/." "$ctx/"
        cp "$qbin" "$ctx/qdrant"
        build_image drctl-lab-qdrant:1 "$ctx"
        rm -rf "$ctx"
    else
        log "no qdrant binary on PATH: drctl-lab-qdrant:1 not built (the qdrant profile is unavailable)"
    fi
    # Superseded builds of lab images (now untagged) only take disk space.
    docker image prune -f --filter label=org.drctl.lab=1 >/dev/null || true
    log "images ready in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------------------------------
# up / down / reset
# ---------------------------------------------------------------------------------------
compose() {
    local c
    c=$(compose_cmd) || die "neither 'docker compose' nor 'docker-compose' works; run: scripts/lab.sh docker"
    # shellcheck disable=SC2086 # "docker compose" is two words on purpose
    $c -p "$LAB_PROJECT" -f "$LAB_FILE" "$@"
}

# The qdrant service is behind a profile; enable it only when its image exists.
profile_args() {
    if image_exists drctl-lab-qdrant:1; then echo "--profile qdrant"; fi
}

cmd_up() {
    docker_ok || die "docker engine does not answer; run: scripts/lab.sh docker"
    local img
    for img in drctl-lab-postgres:1 drctl-lab-redis:1 drctl-lab-app:1; do
        image_exists "$img" || die "image $img missing; run: scripts/lab.sh images"
    done
    log "starting lab stack (project $LAB_PROJECT)"
    # docker-compose 1.29 gives up at once when a dependency is "unhealthy" at that moment
    # (e.g. just restarted, before its next check passes) instead of waiting: retry a few times.
    local attempt
    for attempt in 1 2 3 4; do
        # shellcheck disable=SC2046
        compose $(profile_args) up -d --remove-orphans && break
        if [ "$attempt" -eq 4 ]; then
            print_states
            die "compose up failed for project $LAB_PROJECT (service states above)"
        fi
        warn "compose up failed (attempt $attempt); retrying in 5s"
        sleep 5
    done
    wait_healthy
}

print_states() {
    docker ps -a --filter "label=com.docker.compose.project=$LAB_PROJECT" \
        --format '  {{.Label "com.docker.compose.service"}}: {{.Status}}' >&2 || true
}

wait_healthy() {
    local t0=$SECONDS ids id name state pending
    while :; do
        ids=$(docker ps -aq --filter "label=com.docker.compose.project=$LAB_PROJECT")
        [ -n "$ids" ] || die "no containers of project $LAB_PROJECT"
        pending=()
        for id in $ids; do
            name=$(docker inspect -f '{{index .Config.Labels "com.docker.compose.service"}}' "$id")
            state=$(docker inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")
            case "$state" in
                running/healthy | running/none) ;;
                exited/* | dead/*)
                    docker logs --tail 20 "$id" >&2 || true
                    die "service $name stopped ($state); its last log lines are above"
                    ;;
                *) pending+=("$name($state)") ;;
            esac
        done
        if [ "${#pending[@]}" -eq 0 ]; then
            log "all services healthy after $((SECONDS - t0))s"
            return 0
        fi
        if ((SECONDS - t0 >= HEALTH_TIMEOUT)); then
            for id in $ids; do
                docker inspect -f '{{.Name}}: {{if .State.Health}}{{range .State.Health.Log}}{{.Output}}{{end}}{{end}}' "$id" >&2 || true
            done
            die "not healthy after ${HEALTH_TIMEOUT}s: ${pending[*]}"
        fi
        sleep 1
    done
}

cmd_down() {
    docker_ok || die "docker engine does not answer"
    log "stopping lab stack (project $LAB_PROJECT)"
    compose --profile qdrant down --remove-orphans "$@"
}

cmd_reset() { cmd_down -v; }

cmd_setup() {
    cmd_docker
    cmd_images
    cmd_up
}

# ---------------------------------------------------------------------------------------
# env
# ---------------------------------------------------------------------------------------
cmd_env() {
    local c
    c=$(compose_cmd 2>/dev/null || echo docker-compose)
    [ -n "${DOCKER_HOST:-}" ] && printf 'export DOCKER_HOST=%q\n' "$DOCKER_HOST"
    printf 'export DRCTL_CACHE=%q\n' "$DRCTL_CACHE"
    printf 'export DRCTL_LAB_PROJECT=%q\n' "$LAB_PROJECT"
    printf 'export DRCTL_LAB_COMPOSE_FILE=%q\n' "$LAB_FILE"
    printf 'export DRCTL_LAB_COMPOSE=%q\n' "$c"
    printf 'export DRCTL_LAB_APP_PORT=%q\n' "${DRCTL_LAB_APP_PORT:-18080}"
    printf 'export DRCTL_LAB_PG_PORT=%q\n' "${DRCTL_LAB_PG_PORT:-15432}"
    printf 'export DRCTL_LAB_REDIS_PORT=%q\n' "${DRCTL_LAB_REDIS_PORT:-16379}"
    printf 'export DRCTL_LAB_QDRANT_PORT=%q\n' "${DRCTL_LAB_QDRANT_PORT:-16333}"
    printf 'export DRCTL_LAB_PG_USER=%q\n' "${DRCTL_LAB_PG_USER:-postgres}"
    printf 'export DRCTL_LAB_PG_PASSWORD=%q\n' "${DRCTL_LAB_PG_PASSWORD:-drctl-lab}"
    printf 'export DRCTL_LAB_PG_DB=%q\n' "${DRCTL_LAB_PG_DB:-app}"
    if image_exists drctl-lab-qdrant:1; then
        printf 'export DRCTL_LAB_QDRANT=1\n'
    fi
    if [ -f "$DRCTL_CACHE/s3/env" ]; then
        cat "$DRCTL_CACHE/s3/env"
    fi
}

# ---------------------------------------------------------------------------------------
# clean: leftovers of earlier test runs
# ---------------------------------------------------------------------------------------
cmd_clean() {
    docker_ok || die "docker engine does not answer; run: scripts/lab.sh docker"
    local ids
    # Containers first (they hold volumes and networks). Also compose projects named
    # drctl-test-* (scratch stacks of tests whose own resources may lack the test label).
    ids=$( {
        docker ps -aq --filter label=org.drctl.test=1
        docker ps -a --format '{{.ID}} {{.Label "com.docker.compose.project"}}' | awk '$2 ~ /^drctl-test-/ { print $1 }'
    } | sort -u)
    if [ -n "$ids" ]; then
        log "removing $(wc -w <<<"$ids") test container(s)"
        # shellcheck disable=SC2086
        docker rm -f -v $ids >/dev/null
    fi
    ids=$( {
        docker volume ls -q --filter label=org.drctl.test=1
        docker volume ls --format '{{.Name}} {{.Label "com.docker.compose.project"}}' | awk '$2 ~ /^drctl-test-/ { print $1 }'
    } | sort -u)
    if [ -n "$ids" ]; then
        log "removing $(wc -w <<<"$ids") test volume(s)"
        # shellcheck disable=SC2086
        docker volume rm -f $ids >/dev/null
    fi
    ids=$( {
        docker network ls -q --filter label=org.drctl.test=1
        docker network ls --format '{{.ID}} {{.Label "com.docker.compose.project"}}' | awk '$2 ~ /^drctl-test-/ { print $1 }'
    } | sort -u)
    if [ -n "$ids" ]; then
        log "removing $(wc -w <<<"$ids") test network(s)"
        # shellcheck disable=SC2086
        docker network rm $ids >/dev/null || warn "some test networks could not be removed"
    fi
    log "clean: no test leftovers remain"
}

cmd_status() {
    docker images --filter label=org.drctl.lab=1
    compose --profile qdrant ps
}

usage() {
    # The header comment of this file, without the '#'.
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

case "${1:-}" in
    docker) cmd_docker ;;
    images) cmd_images ;;
    up) cmd_up ;;
    down) cmd_down ;;
    reset) cmd_reset ;;
    setup) cmd_setup ;;
    env) cmd_env ;;
    clean) cmd_clean ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
esac
