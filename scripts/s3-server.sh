#!/usr/bin/env bash
# A real S3-compatible server for the tests: Garage, as a host process on loopback.
# (MinIO cannot be installed here; an in-process fake would hide client quirks.)
#
#   scripts/s3-server.sh start   build garage if missing, start it (or reuse the running
#                                one), set up layout, key and bucket, write the env file
#   scripts/s3-server.sh stop    stop the server started by `start` (pid file)
#   scripts/s3-server.sh env     print the env file: eval "$(scripts/s3-server.sh env)"
#   scripts/s3-server.sh status  is it running, and the bucket info
#
# Environment: DRCTL_CACHE (default ~/.cache/drctl), DRCTL_S3_DIR (state, default
# $DRCTL_CACHE/s3), DRCTL_S3_PORT (S3 API, default 13900), DRCTL_S3_RPC_PORT (default
# 13901), DRCTL_S3_BUCKET / DRCTL_S3_KEY_NAME (default drctl-test).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG=s3

GARAGE_VERSION="${DRCTL_GARAGE_VERSION:-2.5.0}"
GARAGE_ROOT="$DRCTL_CACHE/garage"
GARAGE="$GARAGE_ROOT/bin/garage"
STATE="${DRCTL_S3_DIR:-$DRCTL_CACHE/s3}"
S3_PORT="${DRCTL_S3_PORT:-13900}"
RPC_PORT="${DRCTL_S3_RPC_PORT:-13901}"
BUCKET="${DRCTL_S3_BUCKET:-drctl-test}"
KEY_NAME="${DRCTL_S3_KEY_NAME:-drctl-test}"
CONFIG="$STATE/garage.toml"
PIDFILE="$STATE/garage.pid"
LOGFILE="$STATE/garage.log"
ENVFILE="$STATE/env"
ENDPOINT="http://127.0.0.1:$S3_PORT"

garage() { "$GARAGE" -c "$CONFIG" "$@"; }

ensure_binary() {
    if [ -x "$GARAGE" ]; then
        return 0
    fi
    have cargo || die "cargo is needed to build garage (cargo install garage)"
    log "building garage $GARAGE_VERSION with cargo install (10 to 20 minutes on 2 cores; done once, kept in $GARAGE_ROOT)"
    local t0=$SECONDS
    mkdir -p "$GARAGE_ROOT"
    # A lock, so that two runs started together do not both build it.
    (
        flock 9
        [ -x "$GARAGE" ] && exit 0
        cargo install garage --version "$GARAGE_VERSION" --locked --root "$GARAGE_ROOT" \
            >"$GARAGE_ROOT/build.log" 2>&1 || {
            tail -n 30 "$GARAGE_ROOT/build.log" >&2
            echo "cargo install garage failed; see $GARAGE_ROOT/build.log" >&2
            exit 1
        }
    ) 9>"$GARAGE_ROOT/.build.lock" || die "garage build failed"
    log "garage built in $((SECONDS - t0))s"
}

write_config() {
    mkdir -p "$STATE/meta" "$STATE/data"
    chmod 700 "$STATE"
    # The RPC secret is generated once and kept: the node's metadata is tied to nothing
    # else, but keeping it makes the config file stable across runs.
    if [ ! -s "$STATE/rpc_secret" ]; then
        (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$STATE/rpc_secret")
    fi
    local secret tmp
    secret=$(cat "$STATE/rpc_secret")
    tmp="$CONFIG.tmp"
    (umask 077 && cat >"$tmp" <<EOF
# Written by scripts/s3-server.sh; regenerated on every start.
metadata_dir = "$STATE/meta"
data_dir = "$STATE/data"
db_engine = "sqlite"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:$RPC_PORT"
rpc_public_addr = "127.0.0.1:$RPC_PORT"
rpc_secret = "$secret"

[s3_api]
api_bind_addr = "127.0.0.1:$S3_PORT"
s3_region = "garage"
EOF
    )
    mv "$tmp" "$CONFIG"
}

running_pid() {
    local pid
    [ -s "$PIDFILE" ] || return 1
    pid=$(cat "$PIDFILE")
    # The pid must be alive *and* be our garage (pids are reused after a reboot).
    kill -0 "$pid" 2>/dev/null || return 1
    [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "$GARAGE")" ] || return 1
    echo "$pid"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_server() {
    local pid
    if pid=$(running_pid); then
        log "garage already running (pid $pid), reusing it"
        return 0
    fi
    rm -f "$PIDFILE"
    local p
    for p in "$S3_PORT" "$RPC_PORT"; do
        port_busy "$p" && die "port 127.0.0.1:$p is taken by another process; stop it or set DRCTL_S3_PORT / DRCTL_S3_RPC_PORT"
    done
    # Keep the log from growing without bound across many runs.
    if [ -f "$LOGFILE" ] && [ "$(stat -c %s "$LOGFILE")" -gt $((20 * 1024 * 1024)) ]; then
        mv -f "$LOGFILE" "$LOGFILE.old"
    fi
    log "starting garage on 127.0.0.1:$S3_PORT (state $STATE, log $LOGFILE)"
    # setsid + nohup: it must outlive this script (test.sh starts it, cargo test uses it).
    # 8>&- : the server must not inherit (and hold forever) the start lock.
    RUST_LOG="${RUST_LOG:-garage=info}" setsid nohup "$GARAGE" -c "$CONFIG" server \
        >>"$LOGFILE" 2>&1 </dev/null 8>&- &
    echo $! >"$PIDFILE"
}

wait_rpc() {
    local i
    for ((i = 0; i < 60; i++)); do
        if garage status >/dev/null 2>&1; then
            return 0
        fi
        # Only liveness here: just after the fork, /proc/PID/exe may still be bash.
        if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
            tail -n 20 "$LOGFILE" >&2 || true
            die "garage exited during start-up; see $LOGFILE"
        fi
        sleep 0.5
    done
    tail -n 20 "$LOGFILE" >&2 || true
    die "garage did not answer on its RPC port within 30s; see $LOGFILE"
}

setup_layout() {
    local version node
    version=$(garage layout show | sed -n 's/^Current cluster layout version: *//p')
    if [ "${version:-0}" != 0 ]; then
        return 0
    fi
    node=$(garage node id -q 2>/dev/null | cut -d@ -f1)
    [ -n "$node" ] || die "could not read the garage node id"
    log "first start: assigning the single-node layout"
    garage layout assign -z dc1 -c 10G "$node" >/dev/null
    garage layout apply --version 1 >/dev/null
}

wait_healthy() {
    local i
    for ((i = 0; i < 60; i++)); do
        if garage bucket list >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    garage status >&2 || true
    die "garage cluster did not become usable within 30s; see $LOGFILE"
}

setup_key_and_bucket() {
    # Key names are not unique in garage: create only when absent, then always reuse.
    if ! garage key info "$KEY_NAME" --key-id >/dev/null 2>&1; then
        log "creating key $KEY_NAME"
        garage key create "$KEY_NAME" >/dev/null
    fi
    if ! garage bucket info "$BUCKET" >/dev/null 2>&1; then
        log "creating bucket $BUCKET"
        garage bucket create "$BUCKET" >/dev/null
    fi
    garage bucket allow --read --write --owner "$BUCKET" --key "$KEY_NAME" >/dev/null
}

write_env() {
    local key_id secret
    key_id=$(garage key info "$KEY_NAME" --key-id)
    secret=$(garage key info "$KEY_NAME" --secret-key)
    [[ "$key_id" == GK* ]] || die "unexpected key id from garage: $key_id"
    (umask 077 && cat >"$ENVFILE.tmp" <<EOF
export DRCTL_S3_ENDPOINT=$ENDPOINT
export DRCTL_S3_BUCKET=$BUCKET
export DRCTL_S3_REGION=garage
export AWS_ACCESS_KEY_ID=$key_id
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_REGION=garage
EOF
    )
    mv "$ENVFILE.tmp" "$ENVFILE"
}

verify() {
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$ENDPOINT/") || true
    case "$code" in
        2?? | 3?? | 4??) ;;
        *) die "S3 endpoint $ENDPOINT does not answer HTTP (got '${code:-nothing}'); see $LOGFILE" ;;
    esac
    garage bucket info "$BUCKET" >/dev/null || die "bucket $BUCKET is not readable through garage"
    # A signed round trip with the written credentials (curl >= 7.75 signs SigV4 itself).
    if curl --help all 2>/dev/null | grep -q -- --aws-sigv4; then
        local key_id secret url body
        key_id=$(garage key info "$KEY_NAME" --key-id)
        secret=$(garage key info "$KEY_NAME" --secret-key)
        url="$ENDPOINT/$BUCKET/.s3-server-probe"
        body="probe $$"
        s3curl() {
            curl -sS --fail --max-time 10 --aws-sigv4 "aws:amz:garage:s3" \
                --user "$key_id:$secret" "$@"
        }
        s3curl -X PUT --data-binary "$body" -H "x-amz-content-sha256: $(printf '%s' "$body" | sha256sum | cut -d' ' -f1)" \
            "$url" >/dev/null || die "signed PUT to $url failed"
        [ "$(s3curl -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$url")" = "$body" ] \
            || die "signed GET of $url did not return what was written"
        s3curl -X DELETE -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$url" >/dev/null \
            || die "signed DELETE of $url failed"
    fi
    log "S3 ready: $ENDPOINT bucket $BUCKET (anonymous GET / answers HTTP $code); env in $ENVFILE"
}

cmd_start() {
    have curl || apt_install curl
    ensure_binary
    mkdir -p "$STATE"
    # One start at a time per state dir.
    exec 8>"$STATE/.lock"
    flock 8
    write_config
    start_server
    wait_rpc
    setup_layout
    wait_healthy
    setup_key_and_bucket
    write_env
    verify
}

cmd_stop() {
    local pid i
    if ! pid=$(running_pid); then
        log "garage is not running"
        rm -f "$PIDFILE"
        return 0
    fi
    log "stopping garage (pid $pid)"
    kill -TERM "$pid"
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        warn "garage did not stop within 10s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
}

cmd_env() {
    [ -s "$ENVFILE" ] || die "no env file yet ($ENVFILE); run: scripts/s3-server.sh start"
    cat "$ENVFILE"
}

cmd_status() {
    local pid
    if pid=$(running_pid); then
        log "garage running (pid $pid) on $ENDPOINT"
        garage bucket info "$BUCKET"
    else
        log "garage not running"
        return 1
    fi
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) cmd_env ;;
    status) cmd_status ;;
    *)
        awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
        exit 2
        ;;
esac
