#!/bin/sh
# The app is healthy only when its session directory is writable.
set -eu
mkdir -p /data/sessions
touch /data/sessions/.probe && rm -f /data/sessions/.probe
printf 'ok\n' >/srv/www/health
# httpd must not be PID 1: PID 1 ignores SIGTERM without a handler, so `docker stop` would
# wait the whole grace period. This shell forwards the signal and exits promptly.
busybox httpd -f -v -p 0.0.0.0:8080 -h /srv/www &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"; exit 0' TERM INT
wait "$pid"
