#!/usr/bin/env bash
# The project's one test command (README, CI): prepares the lab (Docker engine, lab images,
# a real Garage S3 server), then runs fmt, clippy, build and the whole test suite.
#
#   scripts/test.sh [ARGS...]     ARGS go to `cargo test --workspace` (e.g. a filter)
#
# Slow things are cached in ${DRCTL_CACHE:-~/.cache/drctl} and reused: the lab rootfs and
# images, the garage binary. Tests start the containers they need themselves (labelled
# org.drctl.test=1) and say which suites they skipped in $DRCTL_CACHE/skipped.txt.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG="test"
cd "$DRCTL_ROOT"

T0=$SECONDS
STEP=start
section() {
    STEP=$*
    log "== $* ($((SECONDS - T0))s)"
}

SKIPPED="$DRCTL_CACHE/skipped.txt"
report_skipped() {
    local status=$?
    if [ -s "$SKIPPED" ]; then
        log "skipped suites: $(sort -u "$SKIPPED" | paste -sd ';' - | sed 's/;/; /g')"
    else
        log "skipped suites: none"
    fi
    # The lab stack is not left running by a test run that found it down.
    if [ "${LAB_WAS_UP:-1}" = 0 ] && docker_ok \
        && [ -n "$(docker ps -aq --filter "label=com.docker.compose.project=${DRCTL_LAB_PROJECT:-drctl-lab}")" ]; then
        bash scripts/lab.sh reset >/dev/null 2>&1 || warn "could not take the lab stack down"
    fi
    if [ "$status" -eq 0 ]; then
        log "all checks passed in $((SECONDS - T0))s"
    else
        log "FAILED at step '$STEP' (exit $status) after $((SECONDS - T0))s"
    fi
    exit "$status"
}
trap report_skipped EXIT

section "lab: docker engine"
bash scripts/lab.sh docker
section "lab: images"
bash scripts/lab.sh images
section "lab: clean leftovers of earlier runs"
bash scripts/lab.sh clean
LAB_WAS_UP=1
[ -n "$(docker ps -aq --filter "label=com.docker.compose.project=${DRCTL_LAB_PROJECT:-drctl-lab}")" ] || LAB_WAS_UP=0
section "S3 server (garage)"
bash scripts/s3-server.sh start

# Lab and S3 settings for the tests (ports, project, compose command, S3 endpoint/keys).
lab_env=$(bash scripts/lab.sh env) || die "scripts/lab.sh env failed"
eval "$lab_env"
export DRCTL_LAB=1
mkdir -p "$DRCTL_CACHE"
: >"$SKIPPED"
export DRCTL_SKIPPED_FILE="$SKIPPED"

section "cargo fmt --check"
cargo fmt --all -- --check
section "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
section "cargo build"
cargo build --workspace --all-targets
section "cargo test"
cargo test --workspace "$@"
section "cleaning test leftovers"
bash scripts/lab.sh clean
