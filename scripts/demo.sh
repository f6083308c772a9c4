#!/usr/bin/env bash
# The main job of pg_otp_auth, end to end, on a throwaway local cluster: an app asks for a code
# for a phone, the SMS waits in the outbox, the user types the code, the app gets a session.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
. scripts/cluster.sh
cluster_start demo

step() { printf '\n\033[1;36m%s\033[0m\n' "$*"; }
# Calls go through a non-superuser role, as they would through PostgREST.
as_client() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -c "SET role anon" "$@"; }

psql -X -q -h 127.0.0.1 -c "CREATE EXTENSION pg_otp_auth" -c "CREATE ROLE anon NOLOGIN" \
    -c "CREATE ROLE otp_dispatcher LOGIN" -c "SELECT auth.grant_dispatcher('otp_dispatcher')" >/dev/null
PHONE='+1 (555) 010-4242'

step "1. The app asks for a code:  SELECT auth.send_sms_otp(phone => '$PHONE')"
as_client -c "SELECT jsonb_pretty(auth.send_sms_otp(phone => '$PHONE'))"

step "2. The SMS waits in the outbox (only the extension owner can read it)"
psql -X -h 127.0.0.1 -c "SELECT id, phone, channel, status, body, expires_at FROM auth.sms_outbox"

step "3. pg-otp-dispatcher (log provider, as role otp_dispatcher) delivers it: the phone receives"
target/debug/pg-otp-dispatcher --provider log --metrics-addr off \
    --database-url "host=127.0.0.1 port=$PGPORT user=otp_dispatcher dbname=postgres" \
    >"$CLUSTER_DIR/phone.txt" 2>"$CLUSTER_DIR/dispatcher.log" &
DISPATCHER=$!
trap 'kill $DISPATCHER 2>/dev/null || true; cluster_stop' EXIT
for _ in $(seq 100); do grep -q "code" "$CLUSTER_DIR/phone.txt" && break; sleep 0.1; done
cat "$CLUSTER_DIR/phone.txt"
CODE=$(grep -o '[0-9]\{6\}' "$CLUSTER_DIR/phone.txt" | tail -1)
psql -X -h 127.0.0.1 -c "SELECT id, status, attempts, body, provider_message_id FROM auth.sms_outbox"

step "4. A wrong code is refused with SQLSTATE PT401 (PostgREST: HTTP 401), and the attempt is counted"
as_client -c "\\set VERBOSITY verbose" -c "SELECT auth.verify_sms_otp(phone => '$PHONE', otp => '000000')" 2>&1 | grep -E 'ERROR|DETAIL' || true
psql -X -h 127.0.0.1 -c "SELECT subject AS phone, attempts FROM auth.otp_codes"

step "5. The user types $CODE:  SELECT auth.verify_sms_otp(phone => '$PHONE', otp => '$CODE')"
SESSION=$(as_client -At -c "SELECT auth.verify_sms_otp(phone => '$PHONE', otp => '$CODE')")
printf '%s' "$SESSION" | python3 -m json.tool

step "6. The access token, verified with auth.jwt_secret() (the secret PostgREST is given)"
SECRET=$(psql -X -At -h 127.0.0.1 -c "SELECT auth.jwt_secret()")
python3 - "$SESSION" "$SECRET" <<'PY'
import base64, hashlib, hmac, json, sys
token = json.loads(sys.argv[1])["session"]["access_token"]
header, payload, sig = token.split(".")
unb64 = lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
ok = hmac.compare_digest(unb64(sig), hmac.new(sys.argv[2].encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest())
print("header:", json.dumps(json.loads(unb64(header))))
print("signature valid (HS256):", ok)
print(json.dumps(json.loads(unb64(payload)), indent=2))
sys.exit(0 if ok else 1)
PY

step "7. The refresh token rotates:  SELECT auth.refresh_session(refresh_token => ...)"
REFRESH=$(printf '%s' "$SESSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["session"]["refresh_token"])')
as_client -At -c "SELECT jsonb_build_object('new_refresh_token_id', s->'refresh_token_id', 'expires_in', s->'expires_in') FROM auth.refresh_session(refresh_token => '$REFRESH') s"

step "8. Client roles cannot read the extension's tables"
as_client -c "SELECT * FROM auth.users" 2>&1 | grep ERROR || true

kill -TERM $DISPATCHER && wait $DISPATCHER || true
printf '\n\033[1mDemo finished; the throwaway cluster is being removed.\033[0m\n'
