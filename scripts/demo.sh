#!/usr/bin/env bash
# A short demonstration on the lab stack: bring the lab up, build drctl, check the
# environment and show the plan of a complete-failure recovery (changing nothing).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG=demo
cd "$DRCTL_ROOT"

header() {
    printf '\n%s\n' "==================================================================="
    printf '  %s\n' "$*"
    printf '%s\n\n' "==================================================================="
}

header "1. Lab: Docker engine, images, stack (compose/lab.yml, project ${DRCTL_LAB_PROJECT:-drctl-lab})"
bash scripts/lab.sh setup
lab_env=$(bash scripts/lab.sh env) || die "scripts/lab.sh env failed"
eval "$lab_env"

header "2. Build drctl (release)"
cargo build --release

header "3. drctl doctor: is everything drctl needs reachable?"
target/release/drctl --config drctl.yml doctor

header "4. drctl plan complete-failure: what a recovery would do (nothing is changed)"
target/release/drctl --config drctl.yml plan complete-failure

header "Done. Stop the lab with: scripts/lab.sh down"
