#!/usr/bin/env bash
# drctl against what operators would use instead (issue 7), in one run, on the same data
# and the same Garage S3 server, pair by pair:
#
#   1. a volume (BENCH_SIZE_MIB, default 1024: half log-like text, half random) backed up
#      and restored by drctl through the archive API, by drctl on the host fast path, by
#      the raw pipeline (the archive stream straight into S3 with rclone: the ceiling) and
#      by restic (from / to a host folder); beside them, the archive API's own floor;
#   2. a PostgreSQL database (BENCH_PG_MIB, default 1024) by drctl and by
#      `pg_dump -Fc | rclone rcat` / `rclone cat | pg_restore`;
#   3. drctl's peak resident memory in each (and on BENCH_LARGE_MIB, default 4096, volumes
#      with BENCH_LARGE=1);
#   4. `drctl run complete-failure --yes` on a lab stack holding the data above: RTO, and
#      its split into data transfer, waiting for containers and controller overhead.
#
# Prints one markdown table (with the date, the machine and the exact command) and keeps
# it in $BENCH_OUT (default $DRCTL_CACHE/bench/bench-<time>.md).
#
# Environment: BENCH_SIZE_MIB, BENCH_PG_MIB, BENCH_LARGE=1, BENCH_LARGE_MIB,
# BENCH_ENCRYPT=0 (drctl without age encryption; restic always encrypts),
# BENCH_PARTS (comma list of volume,postgres,complete-failure,large; default all but
# large, which BENCH_LARGE=1 adds), BENCH_ROUNDS (volume restores, interleaved; medians
# shown; default 3), BENCH_KEEP=1 (keep the work folder), BENCH_OUT.
#
# Everything it makes (a compose project drctl-bench-<time> with its volumes, a volume
# and containers labelled org.drctl.test=1, S3 prefixes bench-<time>/ and
# restic-bench-<time>/, a work folder) is removed at the end, on failure too.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG=bench

SIZE_MIB="${BENCH_SIZE_MIB:-1024}"
PG_MIB="${BENCH_PG_MIB:-1024}"
LARGE="${BENCH_LARGE:-0}"
LARGE_MIB="${BENCH_LARGE_MIB:-4096}"
ENCRYPT="${BENCH_ENCRYPT:-1}"
PARTS="${BENCH_PARTS:-volume,postgres,complete-failure}"
[ "$LARGE" = 1 ] && PARTS="$PARTS,large"
KEEP="${BENCH_KEEP:-0}"
ROUNDS="${BENCH_ROUNDS:-3}"

# The command as given, with the settings that were in the environment.
COMMAND="scripts/bench.sh"
for v in BENCH_SIZE_MIB BENCH_PG_MIB BENCH_LARGE BENCH_LARGE_MIB BENCH_ENCRYPT BENCH_PARTS BENCH_ROUNDS; do
    if [ -n "${!v:-}" ]; then COMMAND="$v=${!v} $COMMAND"; fi
done

part() { [[ ",$PARTS," == *",$1,"* ]]; }

TS="$(date -u +%Y%m%dt%H%M%S | tr 'T' 't')"
PROJECT="drctl-bench-$TS"
WORK="$(mktemp -d /tmp/drctl-bench.XXXXXX)"
RESULTS="$WORK/results"
: >"$RESULTS"
BENCH_DIR="$DRCTL_ROOT/scripts/bench"
S3_PREFIX="bench-$TS"
RESTIC_PREFIX="restic-bench-$TS"
LARGE_VOL="drctl-bench-$TS-large"
OUT="${BENCH_OUT:-$DRCTL_CACHE/bench/bench-$TS.md}"

result() { printf '%s %s\n' "$1" "$2" >>"$RESULTS"; }

# ---------------------------------------------------------------------------------------
# clean-up (trap)
# ---------------------------------------------------------------------------------------
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    log "cleaning up"
    if [ -n "${DRCTL_LAB_PROJECT:-}" ]; then
        bash "$DRCTL_ROOT/scripts/lab.sh" reset >"$WORK/cleanup.log" 2>&1 \
            || warn "lab reset of $PROJECT failed (see $WORK/cleanup.log)"
    fi
    # Containers this run labelled, and drctl's temporary ones for its volumes.
    local ids
    ids=$(docker ps -aq --filter "label=org.drctl.test=1" --filter "name=drctl-bench-$TS" 2>/dev/null)
    for v in "$LARGE_VOL" "${PROJECT}_app-sessions"; do
        ids="$ids $(docker ps -aq --filter "label=org.drctl.volume=$v" 2>/dev/null)"
    done
    # shellcheck disable=SC2086
    [ -n "${ids// /}" ] && docker rm -f -v $ids >/dev/null 2>&1
    docker volume rm -f "$LARGE_VOL" >/dev/null 2>&1
    if have rclone && [ -n "${RCLONE_CONFIG_BENCH_TYPE:-}" ]; then
        rcl purge "bench:$DRCTL_S3_BUCKET/$S3_PREFIX" >/dev/null 2>&1
        rcl purge "bench:$DRCTL_S3_BUCKET/$RESTIC_PREFIX" >/dev/null 2>&1
    fi
    if [ "$KEEP" = 1 ] || [ "$rc" -ne 0 ]; then
        log "work folder kept: $WORK"
        # The restored copies are big; the logs are what a failure needs.
        rm -rf "$WORK/vol.tar"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------
# tools, lab, S3, build
# ---------------------------------------------------------------------------------------
apt_install restic rclone time age curl python3 >&2
have python3 || die "python3 is needed"
bash "$DRCTL_ROOT/scripts/lab.sh" docker >&2
bash "$DRCTL_ROOT/scripts/lab.sh" images >&2
bash "$DRCTL_ROOT/scripts/s3-server.sh" start >&2
eval "$(bash "$DRCTL_ROOT/scripts/s3-server.sh" env)"

# rclone: the bench's S3 remote from the environment. rclone refuses AWS_CA_BUNDLE for a
# plain-http endpoint, so it runs without it.
export RCLONE_CONFIG="$WORK/rclone.conf"
: >"$RCLONE_CONFIG"
export RCLONE_CONFIG_BENCH_TYPE=s3
export RCLONE_CONFIG_BENCH_PROVIDER=Other
export RCLONE_CONFIG_BENCH_ENDPOINT="$DRCTL_S3_ENDPOINT"
export RCLONE_CONFIG_BENCH_REGION="$DRCTL_S3_REGION"
export RCLONE_CONFIG_BENCH_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID"
export RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY"
export RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE=true
# The same part size and concurrency as drctl's (16 MiB, 4).
RCLONE_OPTS=(--s3-chunk-size 16M --s3-upload-concurrency 4)
rcl() { env -u AWS_CA_BUNDLE rclone "$@"; }
export -f rcl

log "building drctl (release)"
(cd "$DRCTL_ROOT" && cargo build --release -p drctl && cargo build --release -p drctl-docker --example restore_tar) \
    >"$WORK/build.log" 2>&1 || { tail -n 30 "$WORK/build.log" >&2; die "cargo build --release failed"; }
DRCTL="${CARGO_TARGET_DIR:-$DRCTL_ROOT/target}/release/drctl"
# drctl's volume restore code fed from a tar file (no decoding): crates/drctl-docker/examples.
RESTORE_TAR="${CARGO_TARGET_DIR:-$DRCTL_ROOT/target}/release/examples/restore_tar"
[ -x "$DRCTL" ] && [ -x "$RESTORE_TAR" ] || die "no drctl binary at $DRCTL"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export DRCTL_LAB_PROJECT="$PROJECT"
DRCTL_LAB_APP_PORT="$(free_port)"
DRCTL_LAB_PG_PORT="$(free_port)"
DRCTL_LAB_REDIS_PORT="$(free_port)"
DRCTL_LAB_QDRANT_PORT="$(free_port)"
export DRCTL_LAB_APP_PORT DRCTL_LAB_PG_PORT DRCTL_LAB_REDIS_PORT DRCTL_LAB_QDRANT_PORT
export DRCTL_LAB_PG_PASSWORD="${DRCTL_LAB_PG_PASSWORD:-drctl-lab}"
log "starting a lab stack as project $PROJECT (work folder $WORK)"
bash "$DRCTL_ROOT/scripts/lab.sh" up >"$WORK/lab-up.log" 2>&1 \
    || { tail -n 30 "$WORK/lab-up.log" >&2; die "lab stack did not come up"; }

cid() { docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" --filter "label=com.docker.compose.service=$1" | head -n1; }
APP="$(cid app)"
PG="$(cid postgres)"
REDIS="$(cid redis)"
VOL="${PROJECT}_app-sessions"
MP="$(docker volume inspect -f '{{.Mountpoint}}' "$VOL")"

# ---------------------------------------------------------------------------------------
# drctl configurations: one per part, each with its own repository prefix (so that
# `latest` is the set that part took) and its own state folder.
# ---------------------------------------------------------------------------------------
if [ "$ENCRYPT" = 1 ]; then
    age-keygen -o "$WORK/key.txt" 2>/dev/null
    ENC_LINE="  encryption: { key_file: $WORK/key.txt }"
else
    ENC_LINE=""
fi

# config NAME TARGETS_YAML: $WORK/NAME/drctl.yml and a runbook `restore` for its targets.
config() {
    local name=$1 targets=$2 restore_targets=$3
    local repo="  url: s3://$DRCTL_S3_BUCKET/$S3_PREFIX/$name
  endpoint: $DRCTL_S3_ENDPOINT
  region: $DRCTL_S3_REGION"
    # A local-folder repository: the same restore without the S3 server's work.
    [ "${4:-}" = local ] && repo="  url: $WORK/$name/repo"
    mkdir -p "$WORK/$name/runbooks"
    cat >"$WORK/$name/drctl.yml" <<EOF
version: 1
stack:
  project: $PROJECT
  compose_files: [$DRCTL_ROOT/compose/lab.yml]
repository:
$repo
$ENC_LINE
runbooks_dir: runbooks
state_dir: state
objectives: { rto: 1h, rpo: 1h }
targets:
$targets
EOF
    cat >"$WORK/$name/runbooks/restore.yml" <<EOF
version: 1
name: restore
description: Restore $restore_targets from the newest set (bench).
objectives: { rto: 1h }
backup: latest
steps:
  - { id: restore, kind: restore, targets: [$restore_targets], safety_backup: false }
EOF
}
config vol "  vol: { type: volume, volume: app-sessions }" vol
config vollocal "  vol: { type: volume, volume: app-sessions }" vol local
config pg "  postgres: { type: postgres, service: postgres, password_env: DRCTL_LAB_PG_PASSWORD }" postgres
config large "  big: { type: volume, volume: $LARGE_VOL }" big
config stack "  sessions: { type: volume, volume: app-sessions, stop: [app] }
  postgres: { type: postgres, service: postgres, password_env: DRCTL_LAB_PG_PASSWORD }
  redis: { type: redis, service: redis }" "sessions, postgres, redis"
cp "$DRCTL_ROOT/runbooks/complete-failure.yml" "$WORK/stack/runbooks/"

# ---------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------
now() { date +%s.%N; }

# CPU seconds used so far by the processes named $1 and their reaped children (dockerd's
# untar helpers, for one), from /proc.
proc_cpu() {
    local pids
    pids=$(pgrep -x "$1" | tr '\n' ' ')
    [ -n "$pids" ] || { echo 0; return; }
    python3 - "$(getconf CLK_TCK)" $pids <<'PY'
import sys
tck, total = int(sys.argv[1]), 0
for pid in sys.argv[2:]:
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += sum(int(x) for x in f[11:15])
    except OSError:
        pass
print(f"{total / tck:.2f}")
PY
}

# measure KEY CMD...: wall seconds, peak RSS (KiB) and CPU seconds of CMD (from GNU time),
# and those of dockerd and Garage meanwhile; its output goes to $WORK/log.KEY. Writes back
# dirty pages first, so one run's writeback does not slow the next.
measure() {
    local key=$1
    shift
    sync
    local t0 t1 d0 g0
    d0=$(proc_cpu dockerd)
    g0=$(proc_cpu garage)
    t0=$(now)
    if ! /usr/bin/time -f '%e %M %U %S' -o "$WORK/time.$key" "$@" >"$WORK/log.$key" 2>&1; then
        tail -n 40 "$WORK/log.$key" >&2
        die "$key failed (log kept in $WORK/log.$key)"
    fi
    t1=$(now)
    result "$key.dockerd_cpu_s" "$(python3 -c "print(f'{$(proc_cpu dockerd) - $d0:.2f}')")"
    result "$key.garage_cpu_s" "$(python3 -c "print(f'{$(proc_cpu garage) - $g0:.2f}')")"
    local rss
    rss=$(awk 'END {print $2}' "$WORK/time.$key")
    result "$key.s" "$(python3 -c "print(f'{$t1 - $t0:.2f}')")"
    result "$key.rss_kib" "$rss"
    result "$key.cpu_s" "$(awk 'END {printf "%.2f", $3 + $4}' "$WORK/time.$key")"
    echo "$t0 $t1" >"$WORK/span.$key"
    log "$key: $(python3 -c "print(f'{$t1 - $t0:.1f}')") s, peak RSS $((rss / 1024)) MiB"
}

# drctl_run KEY CONFIG ARGS...: `drctl ARGS` with a configuration, measured; then the
# journal split of a `run`.
drctl_in() { local c=$1; shift; env DRCTL_CONFIG="$WORK/$c/drctl.yml" "$DRCTL" "$@"; }
journal() {
    local key=$1 conf=$2
    local run
    run=$(ls -1t "$WORK/$conf/state/runs" | head -n1)
    read -r t0 t1 <"$WORK/span.$key"
    python3 "$BENCH_DIR/journal.py" "$WORK/$conf/state/runs/$run" "$t0" "$t1" \
        | while read -r k v; do result "$key.$k" "$v"; done
    drctl_in "$conf" report "$run" --format json >"$WORK/report.$key.json" 2>/dev/null || true
}

empty_volume() { find "$1" -mindepth 1 -delete; }
archive_url() { echo "http://docker/containers/$1/archive?path=$2"; }

# The floor while drctl decodes and checks the same object from the local-folder repository
# beside it (`backups verify`: read, SHA-256, age, zstd, nothing written): what sharing the
# cores with that work alone costs the archive API. A script for `measure` (GNU time).
floor_contended() {
    cat <<EOF
curl -sfS --unix-socket /var/run/docker.sock -X PUT -T '$WORK/vol.tar' '$(archive_url "$APP" /data/sessions)' &
up=\$!
DRCTL_CONFIG='$WORK/vollocal/drctl.yml' '$DRCTL' backups verify '$LOCAL_SET' >/dev/null || exit 1
wait \$up
EOF
}

# ---------------------------------------------------------------------------------------
# 1. volume
# ---------------------------------------------------------------------------------------
bench_volume() {
    log "generating $SIZE_MIB MiB in volume $VOL"
    docker stop -t 10 "$APP" >/dev/null
    empty_volume "$MP"
    python3 "$BENCH_DIR/gendata.py" "$MP" "$SIZE_MIB"
    chown -R 999:999 "$MP/logs" "$MP/blobs" "$MP/sessions"
    local bytes
    bytes=$(du -sb --apparent-size "$MP" | cut -f1)
    result vol.bytes "$bytes"
    result vol.files "$(find "$MP" -type f | wc -l)"
    local want
    want=$(cd "$MP" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)

    # The archive API alone.
    measure floor_backup bash -c "curl -sfS --unix-socket /var/run/docker.sock '$(archive_url "$APP" /data/sessions/.)' >/dev/null"
    curl -sfS --unix-socket /var/run/docker.sock "$(archive_url "$APP" /data/sessions/.)" >"$WORK/vol.tar"
    result vol.tar_bytes "$(stat -c %s "$WORK/vol.tar")"
    empty_volume "$MP"
    measure floor_restore curl -sfS --unix-socket /var/run/docker.sock -X PUT -T "$WORK/vol.tar" \
        "$(archive_url "$APP" /data/sessions)"
    # The same file sent chunked, as any streamed source must (it cannot announce a size).
    empty_volume "$MP"
    measure floor_chunked_restore bash -c "cat '$WORK/vol.tar' | curl -sfS --unix-socket /var/run/docker.sock -X PUT -T - '$(archive_url "$APP" /data/sessions)'"

    # Raw pipeline: the archive stream into S3 and back, nothing else.
    measure raw_backup bash -c "set -o pipefail; curl -sfS --unix-socket /var/run/docker.sock '$(archive_url "$APP" /data/sessions/.)' \
        | rcl rcat ${RCLONE_OPTS[*]} bench:$DRCTL_S3_BUCKET/$S3_PREFIX/raw/vol.tar"
    empty_volume "$MP"
    measure raw_restore bash -c "set -o pipefail; rcl cat bench:$DRCTL_S3_BUCKET/$S3_PREFIX/raw/vol.tar \
        | curl -sfS --unix-socket /var/run/docker.sock -X PUT -T - '$(archive_url "$APP" /data/sessions)'"
    check_tree raw_restore "$want"

    # restic, from and to host folders (its normal use). It restores into the emptied
    # volume's folder, like every other restore here: on a filesystem where creating files
    # right after deleting many is slow (ext4 without a journal checks each recently freed
    # inode), a restore elsewhere would dodge a cost the others pay.
    export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR="$WORK/restic-cache"
    local repo="s3:$DRCTL_S3_ENDPOINT/$DRCTL_S3_BUCKET/$RESTIC_PREFIX"
    restic -r "$repo" init >"$WORK/log.restic_init" 2>&1 || { cat "$WORK/log.restic_init" >&2; die "restic init failed"; }
    measure restic_backup restic -r "$repo" backup --host bench "$MP"
    empty_volume "$MP"
    measure restic_restore restic -r "$repo" restore latest --target "$MP/.restic"
    local got
    got=$(cd "$MP/.restic$MP" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
    [ "$got" = "$want" ] || die "restic restored different data"
    # Back in place for drctl's backups.
    local top
    for top in "$MP/.restic$MP"/*; do mv "$top" "$MP/"; done
    rm -rf "$MP/.restic"
    check_tree restic_restore "$want"

    # drctl through the archive API, then on the host path.
    local mode
    for mode in api host; do
        local fast=0
        [ "$mode" = host ] && fast=1
        measure "${mode}_backup" env DRCTL_VOLUME_FAST_PATH=$fast DRCTL_CONFIG="$WORK/vol/drctl.yml" "$DRCTL" -v backup
        if [ "$mode" = api ]; then
            # The same through the API with a local-folder repository (no S3 server).
            drctl_in vollocal backup >"$WORK/log.local_backup" 2>&1 \
                || { tail -n 30 "$WORK/log.local_backup" >&2; die "the local-folder backup failed"; }
            LOCAL_SET=$(drctl_in vollocal backups list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
            empty_volume "$MP"
            measure floor_contended_restore bash -c "$(floor_contended)"
            empty_volume "$MP"
            measure tarfile_restore "$RESTORE_TAR" "$VOL" "$WORK/vol.tar"
            check_tree tarfile_restore "$want"
            measure decode_only env DRCTL_CONFIG="$WORK/vollocal/drctl.yml" "$DRCTL" backups verify "$LOCAL_SET"
            empty_volume "$MP"
            measure local_restore env DRCTL_VOLUME_FAST_PATH=0 DRCTL_CONFIG="$WORK/vollocal/drctl.yml" "$DRCTL" -v run restore --yes
            check_tree local_restore "$want"
            result vol.stored_bytes "$(rcl size --json "bench:$DRCTL_S3_BUCKET/$S3_PREFIX/vol" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes"])')"
        fi
        empty_volume "$MP"
        measure "${mode}_restore" env DRCTL_VOLUME_FAST_PATH=$fast DRCTL_CONFIG="$WORK/vol/drctl.yml" "$DRCTL" -v run restore --yes
        journal "${mode}_restore" vol
        check_tree "${mode}_restore" "$want"
        grep -Eq "path=\"?$mode" "$WORK/log.${mode}_restore" \
            || warn "$mode: drctl's log does not name the $mode path (see $WORK/log.${mode}_restore)"
    done

    # The restores again, interleaved, so that the drift of a shared machine falls on all
    # of them alike; the table shows each one's median. (Backups are measured once: a
    # second restic backup of the same data is incremental.)
    local round
    for round in $(seq 2 "$ROUNDS"); do
        log "restore round $round of $ROUNDS"
        empty_volume "$MP"
        measure "floor_restore.r$round" curl -sfS --unix-socket /var/run/docker.sock -X PUT -T "$WORK/vol.tar" \
            "$(archive_url "$APP" /data/sessions)"
        empty_volume "$MP"
        measure "floor_chunked_restore.r$round" bash -c "cat '$WORK/vol.tar' | curl -sfS --unix-socket /var/run/docker.sock -X PUT -T - '$(archive_url "$APP" /data/sessions)'"
        empty_volume "$MP"
        measure "floor_contended_restore.r$round" bash -c "$(floor_contended)"
        empty_volume "$MP"
        measure "tarfile_restore.r$round" "$RESTORE_TAR" "$VOL" "$WORK/vol.tar"
        check_tree "tarfile_restore.r$round" "$want"
        measure "decode_only.r$round" env DRCTL_CONFIG="$WORK/vollocal/drctl.yml" "$DRCTL" backups verify "$LOCAL_SET"
        empty_volume "$MP"
        measure "raw_restore.r$round" bash -c "set -o pipefail; rcl cat bench:$DRCTL_S3_BUCKET/$S3_PREFIX/raw/vol.tar \
            | curl -sfS --unix-socket /var/run/docker.sock -X PUT -T - '$(archive_url "$APP" /data/sessions)'"
        empty_volume "$MP"
        measure "restic_restore.r$round" restic -r "$repo" restore latest --target "$MP/.restic"
        empty_volume "$MP"
        empty_volume "$MP"
        measure "local_restore.r$round" env DRCTL_VOLUME_FAST_PATH=0 DRCTL_CONFIG="$WORK/vollocal/drctl.yml" "$DRCTL" -v run restore --yes
        check_tree "local_restore.r$round" "$want"
        for mode in api host; do
            local fast=0
            [ "$mode" = host ] && fast=1
            empty_volume "$MP"
            measure "${mode}_restore.r$round" env DRCTL_VOLUME_FAST_PATH=$fast DRCTL_CONFIG="$WORK/vol/drctl.yml" "$DRCTL" -v run restore --yes
            check_tree "${mode}_restore.r$round" "$want"
        done
    done
    rm -f "$WORK/vol.tar"
    python3 - "$RESULTS" "$ROUNDS" floor_restore floor_chunked_restore floor_contended_restore tarfile_restore decode_only raw_restore restic_restore local_restore api_restore host_restore <<'PY'
import statistics, sys
path, rounds, keys = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
r = dict(l.rstrip("\n").partition(" ")[::2] for l in open(path))
with open(path, "a") as out:
    for k in keys:
        xs = [float(r[f"{k}.s"])] + [float(r[f"{k}.r{i}.s"]) for i in range(2, rounds + 1) if f"{k}.r{i}.s" in r]
        out.write(f"{k}.rounds {','.join(f'{x:.1f}' for x in xs)}\n")
        out.write(f"{k}.s {statistics.median(xs):.2f}\n")
        rss = [int(r[f"{k}.rss_kib"])] + [int(r[f"{k}.r{i}.rss_kib"]) for i in range(2, rounds + 1) if f"{k}.r{i}.rss_kib" in r]
        out.write(f"{k}.rss_kib {max(rss)}\n")
PY
}

check_tree() {
    local key=$1 want=$2 got
    got=$(cd "$MP" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
    [ "$got" = "$want" ] || die "$key: the restored volume differs from the original"
}

# ---------------------------------------------------------------------------------------
# 2. PostgreSQL
# ---------------------------------------------------------------------------------------
psql_c() { docker exec -i -e PGPASSWORD="$DRCTL_LAB_PG_PASSWORD" "$PG" psql -v ON_ERROR_STOP=1 -qtA -h 127.0.0.1 -U postgres "$@"; }

bench_postgres() {
    log "generating a database of $PG_MIB MiB in $PG"
    docker stop -t 10 "$APP" >/dev/null 2>&1 || true
    psql_c -d app -c "CREATE TABLE IF NOT EXISTS bench_events (id bigint PRIMARY KEY, at timestamptz NOT NULL, kind text NOT NULL, payload text NOT NULL)" >/dev/null
    local target=$((PG_MIB * 1048576)) size next=1 batch=1000000
    size=$(psql_c -d app -c "SELECT pg_database_size('app')")
    while [ "$size" -lt "$target" ]; do
        # About 280 bytes a row on disk; the last batch is sized to land just past the target.
        batch=$(( (target - size) / 280 + 1000 ))
        [ "$batch" -gt 2000000 ] && batch=2000000
        psql_c -d app -c "INSERT INTO bench_events SELECT g, timestamptz '2026-01-01' + g * interval '1 second', (ARRAY['order','login','view','cart','pay'])[1 + g % 5], md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) || ' status=ok region=eu-west-1 ' || md5((g % 1000)::text) FROM generate_series($next, $((next + batch - 1))) g" >/dev/null
        next=$((next + batch))
        size=$(psql_c -d app -c "SELECT pg_database_size('app')")
    done
    psql_c -d app -c "VACUUM ANALYZE bench_events" >/dev/null
    psql_c -d postgres -c "CHECKPOINT" >/dev/null
    result pg.bytes "$size"
    result pg.rows "$(psql_c -d app -c 'SELECT count(*) FROM bench_events')"
    local sum
    sum=$(psql_c -d app -c "SELECT md5(string_agg(md5(b::text), '' ORDER BY id)) FROM bench_events b")

    measure pg_raw_backup bash -c "set -o pipefail; docker exec -e PGPASSWORD='$DRCTL_LAB_PG_PASSWORD' '$PG' pg_dump -Fc -w -h 127.0.0.1 -U postgres -d app \
        | rcl rcat ${RCLONE_OPTS[*]} bench:$DRCTL_S3_BUCKET/$S3_PREFIX/raw/app.dump"
    result pg.raw_stored_bytes "$(rcl size --json "bench:$DRCTL_S3_BUCKET/$S3_PREFIX/raw/app.dump" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes"])')"
    measure pg_drctl_backup env DRCTL_CONFIG="$WORK/pg/drctl.yml" "$DRCTL" -v backup
    result pg.drctl_stored_bytes "$(rcl size --json "bench:$DRCTL_S3_BUCKET/$S3_PREFIX/pg" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes"])')"

    # Restores: each drops the database and restores it (as drctl does: pg_restore --create).
    measure pg_raw_restore bash -c "set -o pipefail; docker exec -e PGPASSWORD='$DRCTL_LAB_PG_PASSWORD' '$PG' psql -qtA -h 127.0.0.1 -U postgres -d postgres -c 'DROP DATABASE app WITH (FORCE)' \
        && rcl cat bench:$DRCTL_S3_BUCKET/$S3_PREFIX/raw/app.dump \
        | docker exec -i -e PGPASSWORD='$DRCTL_LAB_PG_PASSWORD' '$PG' pg_restore --create --exit-on-error -w -h 127.0.0.1 -U postgres -d postgres"
    [ "$(psql_c -d app -c "SELECT md5(string_agg(md5(b::text), '' ORDER BY id)) FROM bench_events b")" = "$sum" ] \
        || die "the raw restore brought back different rows"
    measure pg_drctl_restore env DRCTL_CONFIG="$WORK/pg/drctl.yml" "$DRCTL" -v run restore --yes
    journal pg_drctl_restore pg
    [ "$(psql_c -d app -c "SELECT md5(string_agg(md5(b::text), '' ORDER BY id)) FROM bench_events b")" = "$sum" ] \
        || die "drctl's restore brought back different rows"
}

# ---------------------------------------------------------------------------------------
# 3. a large volume (peak memory must not grow with the size)
# ---------------------------------------------------------------------------------------
bench_large() {
    log "generating $LARGE_MIB MiB in volume $LARGE_VOL"
    docker volume create --label org.drctl.test=1 "$LARGE_VOL" >/dev/null
    local lmp
    lmp=$(docker volume inspect -f '{{.Mountpoint}}' "$LARGE_VOL")
    python3 "$BENCH_DIR/gendata.py" "$lmp" "$LARGE_MIB"
    result large.bytes "$(du -sb --apparent-size "$lmp" | cut -f1)"
    local mode fast
    for mode in api host; do
        fast=0
        [ "$mode" = host ] && fast=1
        measure "large_${mode}_backup" env DRCTL_VOLUME_FAST_PATH=$fast DRCTL_CONFIG="$WORK/large/drctl.yml" "$DRCTL" -v backup
        empty_volume "$lmp"
        measure "large_${mode}_restore" env DRCTL_VOLUME_FAST_PATH=$fast DRCTL_CONFIG="$WORK/large/drctl.yml" "$DRCTL" -v run restore --yes
        journal "large_${mode}_restore" large
    done
    docker volume rm -f "$LARGE_VOL" >/dev/null
}

# ---------------------------------------------------------------------------------------
# 4. complete-failure on the stack holding the data above
# ---------------------------------------------------------------------------------------
bench_complete_failure() {
    log "complete-failure on $PROJECT"
    docker exec -i "$REDIS" sh -c 'i=0; while [ $i -lt 20000 ]; do echo "SET bench:$i value-$i-$(date +%N)"; i=$((i+1)); done | redis-cli --pipe' >/dev/null
    docker start "$APP" >/dev/null
    # Healthy before the backup, as in production.

    for _ in $(seq 1 60); do
        [ "$(docker inspect -f '{{.State.Health.Status}}' "$APP")" = healthy ] && break
        sleep 1
    done
    measure cf_backup env DRCTL_CONFIG="$WORK/stack/drctl.yml" "$DRCTL" -v backup
    measure cf_run env DRCTL_CONFIG="$WORK/stack/drctl.yml" "$DRCTL" -v run complete-failure --yes
    journal cf_run stack
}

part volume && bench_volume
part postgres && bench_postgres
part large && bench_large
part complete-failure && bench_complete_failure

# ---------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------
{
    echo "date $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc $(nproc)"
    echo "mem_mib $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)"
    echo "cpu $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo | tr ' ' '_')"
    echo "docker $(docker version -f '{{.Server.Version}}')"
    echo "restic $(restic version | awk '{print $2}')"
    echo "rclone $(rclone version | awk 'NR==1 {print $2}')"
    echo "load $(cut -d' ' -f1-3 /proc/loadavg | tr ' ' '/')"
    echo "encrypt $ENCRYPT"
    echo "size_mib $SIZE_MIB"
    echo "pg_mib $PG_MIB"
    echo "large_mib $LARGE_MIB"
} >>"$RESULTS"
mkdir -p "$(dirname "$OUT")"
python3 "$BENCH_DIR/render.py" "$RESULTS" "$COMMAND" | tee "$OUT"
cp "$RESULTS" "${OUT%.md}.results"
log "table kept in $OUT (raw numbers: ${OUT%.md}.results)"
