#!/usr/bin/env bash
# Runs every test of pg_otp_auth: Rust unit tests, #[pg_test]s, and the integration suite
# against a throwaway PostgreSQL 15 cluster. Installs whatever is missing first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
. "$HOME/.cargo/env" 2>/dev/null || true

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

log "formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

log "unit tests (pure logic and the dispatcher)"
cargo test -p pg_otp_auth_core -p pg-otp-dispatcher

log "#[pg_test]s (cargo pgrx test)"
PGRX_TEST_DIR="$(mktemp -d /tmp/pg_otp_auth-pgtest-XXXXXX)"
chown postgres:postgres "$PGRX_TEST_DIR"
cargo pgrx test pg15 --runas postgres --pgdata "$PGRX_TEST_DIR/data"
rm -rf "$PGRX_TEST_DIR"
# cargo pgrx test installed a build with the #[pg_test] functions; the integration suite (and the
# schema comparison of its upgrade test) runs against the extension as shipped.
bash scripts/setup.sh

export DISPATCHER_BIN="$ROOT/target/debug/pg-otp-dispatcher"

log "integration tests (pytest, real PostgreSQL, fake providers on 127.0.0.1)"
if [ ! -x .venv/bin/pytest ] || ! cmp -s tests/requirements.txt .venv/requirements.txt; then
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
    cp tests/requirements.txt .venv/requirements.txt
fi
. scripts/cluster.sh
# The recommended set-up first: pg_otp_auth preloaded, so wrong guesses go to the recorder.
CLUSTER_OPTIONS="-c shared_preload_libraries=pg_otp_auth" cluster_start test
.venv/bin/pytest -q -p no:cacheprovider tests/integration "$@"
cluster_stop

log "integration tests without preloading (wrong guesses recorded by a worker each)"
cluster_start fallback
.venv/bin/pytest -q -p no:cacheprovider tests/integration/test_signin.py tests/integration/test_mfa.py \
    tests/integration/test_mfa_assurance.py tests/integration/test_sessions.py tests/integration/test_recorder.py \
    tests/integration/test_upgrade.py "$@"
