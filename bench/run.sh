#!/usr/bin/env bash
# pg_otp_auth benchmark: one command.
#
#   bash bench/run.sh [--no-build] [--smoke] [--duration SECONDS] [--rounds N] [--clients N] [--clients-high N]
#                     [--preload] [--max-worker-processes N] [--history-sizes 10000,1000000]
#                     [--send-history N] [--dispatcher-messages N] [--only IDS] [--report PATH]
#
# Builds and installs the release extension and dispatcher (unless --no-build), starts a
# throwaway PostgreSQL 15 cluster tuned for benchmarking (fsync and synchronous_commit ON), runs
# every workload with pgbench against three variants side by side (FLOOR: the bare table writes;
# PLPGSQL: the pgcrypto/PL/pgSQL alternative; PRODUCT: pg_otp_auth as clients call it), drives
# pg-otp-dispatcher against a local webhook receiver, prints a table and writes
# docs/BENCHMARKS.md (smoke runs write to a temp file, or $BENCH_REPORT / --report).
#
# --duration: seconds per variant and workload, run in --rounds turns (default duration / 4, at
# most 5) in which the variants take turns (A B C, C B A, ...): noise on a shared machine then
# falls on every variant alike. Refresh and MFA carry state between transactions: one round.
# --smoke: seconds per workload, small N everywhere, no 1M-row history; exits non-zero if a
# workload produced no successful transaction or an unexpected error.
# --only send,signin,...: only these workloads (ids as in the report, a prefix selects a family;
# also send_budget, latency, dispatcher); the partial report goes to a temp file (or --report).
# --preload: adds shared_preload_libraries = 'pg_otp_auth' (recorded in the report).
# Environment: DISPATCHER_BIN (dispatcher binary), BENCH_REPORT (report path), BENCH_PRELOAD=1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
COMMAND="bash bench/run.sh${*:+ $*}"

BUILD=1
SMOKE=0
ONLY=""
PRELOAD="${BENCH_PRELOAD:-0}"
MAX_WORKERS=32
DRIVER_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) BUILD=0 ;;
        --smoke) SMOKE=1; DRIVER_ARGS+=(--smoke) ;;
        --preload) PRELOAD=1 ;;
        --max-worker-processes) MAX_WORKERS="$2"; shift ;;
        --report) BENCH_REPORT="$2"; shift ;;
        --only) ONLY="$2"; DRIVER_ARGS+=("$1" "$2"); shift ;;
        --duration|--rounds|--clients|--clients-high|--history-sizes|--send-history|--dispatcher-messages)
            DRIVER_ARGS+=("$1" "$2"); shift ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
BUILD_MODE="as installed (--no-build)"
if [ "$BUILD" = 1 ]; then
    log "building and installing the extension (release) and the dispatcher (release)"
    . "$HOME/.cargo/env" 2>/dev/null || true
    cargo pgrx install --release --pg-config "$PG_CONFIG"
    cargo build --release -p pg-otp-dispatcher
    BUILD_MODE="release (built by this run)"
fi

if [ -n "${DISPATCHER_BIN:-}" ]; then
    DISPATCHER="$DISPATCHER_BIN"
elif [ -x target/release/pg-otp-dispatcher ]; then
    DISPATCHER="$ROOT/target/release/pg-otp-dispatcher"
else
    DISPATCHER="$ROOT/target/debug/pg-otp-dispatcher"
fi
[ -x "$DISPATCHER" ] || { echo "bench/run.sh: no dispatcher binary at $DISPATCHER" >&2; exit 2; }

PYTHON=python3
if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; fi
"$PYTHON" -c 'import psycopg' 2>/dev/null || {
    echo "bench/run.sh: needs Python with psycopg (python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt)" >&2
    exit 2
}

# The throwaway cluster (as scripts/cluster.sh, with a benchmarking configuration). The benchmark
# is of the PostgreSQL 15 build, whatever PG_BIN the caller's environment (a test run) has.
. scripts/cluster.sh
PG_BIN="${BENCH_PG_BIN:-/usr/lib/postgresql/15/bin}"
CLUSTER_DIR="$(mktemp -d /tmp/pg_otp_auth-bench-XXXXXX)"
chown postgres:postgres "$CLUSTER_DIR"
chmod 755 "$CLUSTER_DIR"
export PGDATA="$CLUSTER_DIR/data" PGHOST=127.0.0.1 PGPORT="$(free_port)" PGUSER=postgres PGDATABASE=bench
BG_PIDS_FILE="$CLUSTER_DIR/background.pids"
DRIVER_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$DRIVER_PID" ] && kill -0 "$DRIVER_PID" 2>/dev/null; then
        kill -TERM "$DRIVER_PID" 2>/dev/null || true
        wait "$DRIVER_PID" 2>/dev/null || true
    fi
    # Whatever the driver started (dispatcher, receiver, pgbench) and left behind, by pid.
    if [ -f "$BG_PIDS_FILE" ]; then
        while read -r pid; do
            [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
        done <"$BG_PIDS_FILE"
    fi
    if [ -d "$PGDATA" ]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast stop >/dev/null 2>&1 || true
    fi
    if [ "$rc" != 0 ] && [ -f "$CLUSTER_DIR/server.log" ]; then
        local keep
        keep="$(mktemp -d /tmp/pg_otp_auth-bench-failed-XXXXXX)"
        cp "$CLUSTER_DIR/server.log" "$keep/" 2>/dev/null || true
        cp "$CLUSTER_DIR"/driver/*.log "$keep/" 2>/dev/null || true
        echo "bench/run.sh: failed (exit $rc); server and dispatcher logs kept in $keep" >&2
    fi
    rm -rf "$CLUSTER_DIR"
    # A smoke run's temporary report that was never written.
    if [ -n "${REPORT:-}" ] && [ ! -s "$REPORT" ]; then rm -f "$REPORT"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting a throwaway PostgreSQL 15 cluster on 127.0.0.1:$PGPORT ($CLUSTER_DIR)"
runuser -u postgres -- "$PG_BIN/initdb" -D "$PGDATA" -U postgres -A trust --no-sync >/dev/null
cat >>"$PGDATA/postgresql.conf" <<EOF

# --- bench/run.sh ---
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$CLUSTER_DIR'
max_connections = 100
shared_buffers = 256MB
max_worker_processes = $MAX_WORKERS
fsync = on
synchronous_commit = on
full_page_writes = on
max_wal_size = 8GB
checkpoint_timeout = 30min
maintenance_work_mem = 256MB
EOF
if [ "$PRELOAD" = 1 ]; then
    echo "shared_preload_libraries = 'pg_otp_auth'" >>"$PGDATA/postgresql.conf"
fi
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$CLUSTER_DIR/server.log" -w start >/dev/null
"$PG_BIN/psql" -X -q -d postgres -c "CREATE DATABASE bench"

if [ "$SMOKE" = 1 ] || [ -n "$ONLY" ]; then
    REPORT="${BENCH_REPORT:-$(mktemp /tmp/pg_otp_auth-bench-report-XXXXXX.md)}"
else
    REPORT="${BENCH_REPORT:-$ROOT/docs/BENCHMARKS.md}"
fi

export PG_BIN BG_PIDS_FILE CLUSTER_DIR
"$PYTHON" bench/driver.py --dispatcher "$DISPATCHER" --report "$REPORT" --preload "$PRELOAD" \
    --build-mode "$BUILD_MODE" --command "$COMMAND" ${DRIVER_ARGS[@]+"${DRIVER_ARGS[@]}"} &
DRIVER_PID=$!
set +e
wait "$DRIVER_PID"
RC=$?
set -e
DRIVER_PID=""
exit "$RC"
