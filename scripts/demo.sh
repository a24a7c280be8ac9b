#!/usr/bin/env bash
# The outage demo on the lab stack: build the lab if needed, seed data, back up to the local
# repository (the embedded default), destroy the stack's containers AND volumes, run
# `drctl run complete-failure`, print the report, and show that the data is back.
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
COMPOSE=${DRCTL_LAB_COMPOSE:-docker-compose}
P=${DRCTL_LAB_PROJECT:-drctl-lab}

header "2. Build drctl (release)"
cargo build --release
DRCTL="target/release/drctl --config drctl.yml"

header "3. drctl doctor"
$DRCTL doctor || true

header "4. Seed data: 100,000 rows in PostgreSQL, 1,000 Redis keys, session files"
pg() { docker exec "${P}_postgres_1" psql -U postgres -d app -v ON_ERROR_STOP=1 -Atc "$1"; }
pg "drop table if exists orders; create table orders(id int primary key, customer text, total numeric, note text);
    insert into orders select g, 'customer-' || (g % 977), (g % 1000) / 7.0, repeat(md5(g::text), 4) from generate_series(1, 100000) g;" >/dev/null
docker exec "${P}_redis_1" sh -c 'for i in $(seq 1 1000); do echo "SET session:$i user-$i"; done | redis-cli >/dev/null'
for s in alice bob carol; do curl -fsS "http://127.0.0.1:${DRCTL_LAB_APP_PORT}/cgi-bin/session?$s" >/dev/null; done
state() {
    # Assignments, so that a failing query stops the demo (set -e) instead of printing nothing.
    local rows keys files
    rows=$(pg "select count(*) || ' rows, md5 ' || md5(string_agg(md5(o::text), '' order by id)) from orders o")
    keys=$(docker exec "${P}_redis_1" redis-cli dbsize)
    files=$(docker exec "${P}_app_1" sh -c 'ls /data/sessions | tr "\n" " "')
    echo "  postgres orders: $rows"
    echo "  redis keys:      $keys"
    echo "  session files:   $files"
}
state | tee /tmp/drctl-demo-before.txt

header "5. drctl backup: a backup set in the local repository (.drctl/repo)"
$DRCTL backup --tag demo
$DRCTL backups list

header "6. The outage: every container AND volume of the stack is destroyed"
$COMPOSE -p "$P" -f compose/lab.yml down -v
docker ps -a --filter "label=com.docker.compose.project=$P" --format '  {{.Names}}' | grep . || echo "  (no containers left)"
docker volume ls --filter "label=com.docker.compose.project=$P" --format '  {{.Name}}' | grep . || echo "  (no volumes left)"

header "7. drctl run complete-failure --yes"
$DRCTL run complete-failure --yes

header "8. The data is back"
state | tee /tmp/drctl-demo-after.txt
if diff -q /tmp/drctl-demo-before.txt /tmp/drctl-demo-after.txt >/dev/null; then
    echo; echo "  identical to before the outage."
else
    die "the data differs from before the outage (see above)"
fi
header "Done. The report: target/release/drctl report; stop the lab with: scripts/lab.sh down"
