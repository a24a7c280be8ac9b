#!/bin/sh
# redis-server in the foreground as user redis, data in /data, AOF per REDIS_APPENDONLY
# (default yes). Extra arguments are appended (later options win), e.g. `--appendonly no`.
set -eu
if [ "${1:-}" = redis-server ]; then shift; fi
mkdir -p /data
# A restored volume may carry other owners.
find /data ! -user redis -exec chown redis:redis '{}' +
exec setpriv --reuid=redis --regid=redis --init-groups \
    redis-server --port 6379 --bind 0.0.0.0 --protected-mode no --daemonize no \
    --dir /data --appendonly "${REDIS_APPENDONLY:-yes}" "$@"
