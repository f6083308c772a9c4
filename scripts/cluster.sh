#!/usr/bin/env bash
# Throwaway PostgreSQL clusters (15 from Debian; PG_BIN picks another installation, such as the
# PostgreSQL 18 that scripts/setup.sh --for-tests installs), run as the postgres OS user
# (PostgreSQL refuses root).
# Source this file; then `cluster_start NAME` exports PGHOST/PGPORT/PGDATA/PGUSER and
# `cluster_stop` stops and deletes the cluster. CLUSTER_OPTIONS adds server options, e.g.
# "-c shared_preload_libraries=pg_otp_auth".

PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

cluster_start() {
    local name="$1"
    CLUSTER_DIR="$(mktemp -d "/tmp/pg_otp_auth-$name-XXXXXX")"
    chown postgres:postgres "$CLUSTER_DIR"
    chmod 755 "$CLUSTER_DIR"
    export PGDATA="$CLUSTER_DIR/data" PGHOST="$CLUSTER_DIR" PGPORT="$(free_port)" PGUSER=postgres
    runuser -u postgres -- "$PG_BIN/initdb" -D "$PGDATA" -U postgres -A trust --no-sync >/dev/null
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$CLUSTER_DIR/server.log" -w \
        -o "-p $PGPORT -k $CLUSTER_DIR -c listen_addresses=127.0.0.1 -c fsync=off ${CLUSTER_OPTIONS:-}" \
        start >/dev/null
    trap cluster_stop EXIT
}

cluster_stop() {
    if [ -n "${PGDATA:-}" ] && [ -d "$PGDATA" ]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$CLUSTER_DIR"
    fi
}
