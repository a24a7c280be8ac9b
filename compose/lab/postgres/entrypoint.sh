#!/bin/sh
# Initialise PGDATA on first start (like the official image), then run postgres in the
# foreground as user postgres. Extra arguments go to postgres (e.g. -c key=value).
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

# Allow `command: postgres -c ...` as with the official image.
if [ "${1:-}" = postgres ]; then shift; fi

mkdir -p "$PGDATA" /run/postgresql
# A restored or fresh volume may carry other owners; postgres refuses a group-readable PGDATA.
find "$PGDATA" /run/postgresql ! -user postgres -exec chown postgres:postgres '{}' +
chmod 700 "$PGDATA"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "drctl-lab-postgres: POSTGRES_PASSWORD must be set to initialise $PGDATA" >&2
        exit 1
    fi
    echo "drctl-lab-postgres: initialising $PGDATA (superuser $POSTGRES_USER, database $POSTGRES_DB)"
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    chown postgres "$pwfile"
    as_pg initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    # Password auth from anywhere (the lab publishes the port on 127.0.0.1 only).
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        # Single-user mode: no server is listening yet, so the healthcheck cannot pass early.
        echo "CREATE DATABASE \"$POSTGRES_DB\";" | as_pg postgres --single -D "$PGDATA" postgres >/dev/null
    fi
    echo "drctl-lab-postgres: initialised"
fi

exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" "$@"
