"""Least privilege: client roles see no table, run no admin function, and every function they
can run is SECURITY DEFINER with a fixed search_path."""

import psycopg
import pytest

CLIENT_ROLES = ("anon", "authenticated")
PUBLIC_API = {"jwt", "uid", "role", "session_id", "send_sms_otp", "resend_sms_otp", "signup_sms_otp",
              "verify_sms_otp", "refresh_session", "sign_out", "mfa_enroll", "mfa_challenge", "mfa_verify",
              "mfa_challenge_and_verify", "mfa_unenroll", "mfa_list_factors",
              "mfa_get_authenticator_assurance_level", "signin_mfa_totp", "signin_mfa_recovery_code",
              "mfa_generate_recovery_codes", "get_user", "update_user", "change_phone", "verify_phone_change"}


def auth_tables(db):
    return [r[0] for r in db.q("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                               "WHERE n.nspname = 'auth' AND c.relkind IN ('r', 'v', 'm', 'S')")]


def auth_functions(db):
    return db.q("SELECT p.oid::regprocedure::text, p.proname, p.prosecdef, p.proconfig FROM pg_proc p "
                "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'auth'")


@pytest.mark.parametrize("role", CLIENT_ROLES)
def test_client_roles_cannot_read_any_table(db, role):
    db.sign_in("+15550909090")
    tables = auth_tables(db)
    assert {"users", "secrets", "otp_codes", "sessions", "refresh_tokens", "sms_outbox", "config", "audit_log"} <= set(tables)
    conn = db.connect()
    for t in tables:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with conn.transaction():
                conn.execute(f"SET LOCAL role {role}")
                conn.execute(f"SELECT * FROM auth.{t} LIMIT 1")
    conn.close()


@pytest.mark.parametrize("role", CLIENT_ROLES)
def test_client_roles_can_execute_only_the_public_api(db, role):
    for sig, name, _, _ in auth_functions(db):
        allowed = db.one("SELECT has_function_privilege(%s, %s::regprocedure, 'EXECUTE')", role, sig)
        assert allowed == (name in PUBLIC_API), sig


@pytest.mark.parametrize("call", [
    "auth.settings()", "auth.set_setting('otp_length', '8')", "auth.reset_setting('otp_length')",
    "auth.jwt_secret()", "auth.set_jwt_secret(repeat('x', 40))", "auth.purge_expired()",
    "auth.set_user_disabled(gen_random_uuid())", "auth._random_bytes(32)",
    "auth._signup_sms_otp('+15550000000', '{}')", "auth._unwrap('{}')",
])
def test_admin_and_internal_functions_are_refused(db, call):
    conn = db.connect()
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with conn.transaction():
            conn.execute("SET LOCAL role anon")
            conn.execute(f"SELECT {call}")
    conn.close()


def test_public_functions_are_security_definer_with_fixed_search_path(db):
    public = [f for f in auth_functions(db) if f[1] in PUBLIC_API]
    assert {f[1] for f in public} == PUBLIC_API
    for sig, _, secdef, config in public:
        assert secdef, sig
        assert "search_path=pg_catalog, pg_temp" in (config or []), (sig, config)


def test_secrets_are_strong_and_distinct(db):
    pepper, jwt_secret = db.q("SELECT (SELECT value FROM auth.secrets WHERE name = 'otp_pepper'), "
                              "(SELECT value FROM auth.secrets WHERE name = 'jwt_secret')")[0]
    assert len(pepper) == 32 and len(jwt_secret) == 48 and pepper != jwt_secret
    # Each install gets its own secrets.
    other = f"{db.name}_other"
    db.q(f"CREATE DATABASE {other}")
    with psycopg.connect(db.dsn.replace(db.name, other), autocommit=True) as c:
        c.execute("CREATE EXTENSION pg_otp_auth")
        assert c.execute("SELECT auth.jwt_secret()").fetchone()[0] != db.jwt_secret()
    db.q(f"DROP DATABASE {other}")


def test_api_answers_never_contain_secrets(db):
    s = db.sign_in("+15550909091")
    text = str(s) + str(db.rpc("send_sms_otp", phone="+15550909091"))
    assert db.jwt_secret() not in text
    pepper = db.one("SELECT encode(value, 'hex') FROM auth.secrets WHERE name = 'otp_pepper'")
    assert pepper not in text


@pytest.mark.parametrize("write", [
    "UPDATE auth.users SET phone = '12345'",
    "UPDATE auth.users SET phone = '+15550707070 '",
    "UPDATE auth.users SET metadata = '[1, 2]'",
    "UPDATE auth.sessions SET aal = 'aal3'",
    "UPDATE auth.sms_outbox SET channel = 'email'",
    "UPDATE auth.send_events SET channel = 'voice'",
    "INSERT INTO auth.mfa_factors (user_id, factor_type, phone) SELECT id, 'phone', '555' FROM auth.users",
])
def test_the_value_rules_hold_for_writes_that_bypass_the_api(db, write):
    """The column rules (domains since 0.2.0, table CHECKs before) bind a DBA's direct writes
    too, and a refused write changes nothing."""
    db.sign_in("+15550707070")
    ruled = ("SELECT phone, metadata FROM auth.users", "SELECT aal FROM auth.sessions",
             "SELECT channel FROM auth.sms_outbox", "SELECT channel FROM auth.send_events")
    before = [db.q(q) for q in ruled]
    with pytest.raises(psycopg.errors.CheckViolation):
        db.q(write)
    assert [db.q(q) for q in ruled] == before
    assert db.one("SELECT count(*) FROM auth.mfa_factors") == 0
    # The rules are checked where a value is written, not only on insert: a right value passes.
    db.q("UPDATE auth.sessions SET aal = 'aal2'")
    db.q("UPDATE auth.users SET metadata = '{\"plan\": \"pro\"}'")
