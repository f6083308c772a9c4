"""Upgrades that keep every user: 0.1.0, installed from the script it was released with
(sql/pg_otp_auth--0.1.0.sql), populated, then `ALTER EXTENSION pg_otp_auth UPDATE`.

pg_dump writes an extension's member objects as one `CREATE EXTENSION` line, so the schema
comparison reads the catalogs instead: every member object with its definition, privileges,
options and `pg_extension_config_dump` registration."""

import base64
import os
import subprocess
import time
import uuid

import psycopg
import pytest

from conftest import Db, dsn, raises_auth
from test_dispatcher import BIN, wait_until
from test_mfa import User, oathtool

OLD, NEW = "0.1.0", "0.2.0"


@pytest.fixture
def make_db():
    made = []

    def make(version=None):
        name = "u_" + uuid.uuid4().hex[:12]
        with psycopg.connect(dsn("postgres"), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        d = Db(name)
        d.q(f"CREATE EXTENSION pg_otp_auth VERSION '{version}'" if version else "CREATE EXTENSION pg_otp_auth")
        for role in ("anon", "authenticated"):
            d.q(f"DO $$ BEGIN CREATE ROLE {role} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()
        with psycopg.connect(dsn("postgres"), autocommit=True) as c:
            c.execute(f"DROP DATABASE {d.name} WITH (FORCE)")


def update(db):
    db.q("ALTER EXTENSION pg_otp_auth UPDATE")
    assert db.one("SELECT extversion FROM pg_extension WHERE extname = 'pg_otp_auth'") == NEW


# Every member object of the extension, described without OIDs, so two databases compare equal
# exactly when their extension schemas are the same.
SCHEMA_QUERY = """
WITH members AS (
    SELECT d.classid, d.objid FROM pg_depend d
    JOIN pg_extension e ON e.oid = d.refobjid AND d.refclassid = 'pg_extension'::regclass
    WHERE e.extname = 'pg_otp_auth' AND d.deptype = 'e')
SELECT 'function ' || p.oid::regprocedure::text,
       pg_get_functiondef(p.oid) || ' acl=' || coalesce(p.proacl::text, '-')
FROM members m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
UNION ALL
SELECT 'relation ' || c.oid::regclass::text,
       c.relkind::text || ' acl=' || coalesce(c.relacl::text, '-') || ' columns=' || coalesce((
           SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                             || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                             || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')
                             || coalesce(' acl=' || a.attacl::text, ''), ', ' ORDER BY a.attnum)
           FROM pg_attribute a LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
           WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '')
FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
UNION ALL
SELECT 'constraint ' || con.conrelid::regclass::text || ' ' || con.conname, pg_get_constraintdef(con.oid)
FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace WHERE n.nspname = 'auth'
UNION ALL
SELECT 'index ' || i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'auth'
UNION ALL
SELECT 'trigger ' || t.tgrelid::regclass::text || ' ' || t.tgname, pg_get_triggerdef(t.oid)
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'auth' AND NOT t.tgisinternal
UNION ALL
SELECT 'member ' || pg_describe_object(m.classid, m.objid, 0), '' FROM members m
UNION ALL
SELECT 'config_dump', (SELECT string_agg(x::regclass::text, ', ' ORDER BY x::regclass::text)
                       FROM pg_extension e, unnest(e.extconfig) x WHERE e.extname = 'pg_otp_auth')
UNION ALL
SELECT 'schema auth', 'owner=' || pg_get_userbyid(nspowner) || ' acl=' || coalesce(nspacl::text, '-')
FROM pg_namespace WHERE nspname = 'auth'
ORDER BY 1, 2
"""


def schema_of(db):
    return db.q(SCHEMA_QUERY)


def test_the_upgraded_schema_is_a_fresh_install(make_db):
    """Every schema change needs its upgrade script: this fails until the script has it."""
    fresh = make_db()
    upgraded = make_db(OLD)
    update(upgraded)
    a, b = dict(schema_of(fresh)), dict(schema_of(upgraded))
    assert len(a) > 100
    missing = sorted(set(a) - set(b))
    extra = sorted(set(b) - set(a))
    changed = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    assert (missing, extra, changed) == ([], [], []), "upgrade script out of step with a fresh install"
    assert pg_dump_schema(fresh) == pg_dump_schema(upgraded)


def pg_dump_schema(db):
    out = subprocess.run(["pg_dump", "--schema-only", "--schema=auth", "-h", "127.0.0.1", "-p", os.environ["PGPORT"],
                          "-U", "postgres", db.name], capture_output=True, text=True, check=True).stdout
    # \restrict carries a random key per dump (PostgreSQL 15.14+).
    return [line for line in out.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))]


def test_the_released_script_is_kept_and_the_update_path_is_declared(make_db):
    old = make_db(OLD)
    assert old.one("SELECT extversion FROM pg_extension WHERE extname = 'pg_otp_auth'") == OLD
    assert old.q("SELECT source, target, path FROM pg_extension_update_paths('pg_otp_auth') "
                 "WHERE source = %s AND target = %s", OLD, NEW) == [(OLD, NEW, f"{OLD}--{NEW}")]
    assert old.one("SELECT default_version FROM pg_available_extensions WHERE name = 'pg_otp_auth'") == NEW


def test_an_upgrade_keeps_every_user_session_factor_message_and_setting(make_db):
    db = make_db(OLD)
    db.setting("resend_cooldown", 0)
    db.setting("otp_ttl", 900)
    db.setting("mfa_signin_requires_totp", True)
    db.q("DO $$ BEGIN CREATE ROLE otp_dispatcher LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    db.q("SELECT auth.grant_dispatcher('otp_dispatcher')")
    plain = User(db, "+15554040001")  # a session and its refresh token
    totp_user = User(db, "+15554040002")
    factor = totp_user.activate_totp()
    recovery = totp_user.call("mfa_generate_recovery_codes")
    phone_user = User(db, "+15554040003")
    pf = phone_user.call("mfa_enroll", factor_type="phone", phone="+15554049003")
    ch = phone_user.call("mfa_challenge", factor_id=pf["id"])
    phone_user.adopt(phone_user.call("mfa_verify", factor_id=pf["id"], challenge_id=ch["id"],
                                     code=db.last_code("+15554049003")))
    db.q("UPDATE auth.sms_outbox SET status = 'sent', body = NULL, sent_at = now(), provider_message_id = 'pre-upgrade'")
    queued = db.rpc("send_sms_otp", phone="+15554040004")["message_id"]
    before = db.counts()
    audit_before = db.one("SELECT count(*) FROM auth.audit_log")

    update(db)

    assert db.counts() == before
    # Settings and secrets are kept: tokens signed before verify after.
    assert db.one("SELECT value FROM auth.settings() WHERE name = 'otp_ttl'") == 900
    assert db.decode(plain.session["access_token"])["sub"] == plain.claims["sub"]
    # The old refresh token refreshes.
    refreshed = db.rpc("refresh_session", refresh_token=plain.session["refresh_token"])
    assert db.decode(refreshed["access_token"])["sub"] == plain.claims["sub"]
    assert plain.call("mfa_list_factors") == {"all": [], "totp": [], "phone": []}
    # The TOTP factor verifies at sign-in, and a recovery code works.
    db.rpc("send_sms_otp", phone=totp_user.phone)
    ticket = db.rpc("verify_sms_otp", phone=totp_user.phone, otp=db.last_code(totp_user.phone))["mfa"]["ticket"]
    out = db.rpc("signin_mfa_totp", ticket=ticket, otp=oathtool(factor["totp"]["secret"], time.time() + 30))
    assert db.claims_of(out["session"])["aal"] == "aal2"
    db.rpc("send_sms_otp", phone=totp_user.phone)
    ticket = db.rpc("verify_sms_otp", phone=totp_user.phone, otp=db.last_code(totp_user.phone))["mfa"]["ticket"]
    out = db.rpc("signin_mfa_recovery_code", ticket=ticket, code=recovery[0])
    assert [a["method"] for a in db.claims_of(out["session"])["amr"]] == ["sms", "recovery"]
    # The phone factor's aal2 session is still aal2 and refreshes.
    assert phone_user.call("mfa_get_authenticator_assurance_level")["current_level"] == "aal2"
    assert db.decode(db.rpc("refresh_session", refresh_token=phone_user.session["refresh_token"])["access_token"])["aal"] == "aal2"
    # The message queued before the upgrade is delivered after it.
    d = subprocess.Popen([BIN, "--database-url", f"host=127.0.0.1 port={os.environ['PGPORT']} user=otp_dispatcher dbname={db.name}",
                          "--provider", "log", "--metrics-addr", "off", "--poll-seconds", "0.2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: db.one("SELECT status FROM auth.sms_outbox WHERE id = %s", queued) == "sent", what="delivery")
    finally:
        d.terminate()
        out, _ = d.communicate(timeout=30)
    assert "+15554040004" in out
    assert db.one("SELECT count(*) FROM auth.sms_outbox WHERE provider_message_id = 'pre-upgrade'") == before["sms_outbox"] - 1
    assert db.one("SELECT count(*) FROM auth.audit_log") > audit_before


def test_the_upgrade_repairs_what_0_1_0_let_through(make_db):
    """Two verified TOTP factors (the planted-factor attack) and aal1 refresh tokens of a session
    that rose to aal2 (they minted aal2 access tokens in 0.1.0)."""
    db = make_db(OLD)
    db.setting("resend_cooldown", 0)
    u = User(db, "+15554040009")
    owners = u.enroll_totp()
    planted_secret = base64.b32decode("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")
    planted = db.one("INSERT INTO auth.mfa_factors (user_id, factor_type, secret, status, created_at) "
                     "VALUES (%s, 'totp', %s, 'verified', now() - interval '1 hour') RETURNING id::text",
                     u.claims["sub"], planted_secret)
    db.q("UPDATE auth.mfa_factors SET status = 'verified' WHERE id = %s", owners["id"])
    # A session that rose to aal2 an hour ago, with a refresh token from before the rise.
    stale = "A" * 43
    db.q("UPDATE auth.sessions SET aal = 'aal2', amr = amr || jsonb_build_array(jsonb_build_object("
         "'method', 'totp', 'timestamp', floor(extract(epoch FROM now() - interval '1 hour'))::bigint)) WHERE id = %s",
         u.claims["session_id"])
    db.q("INSERT INTO auth.refresh_tokens (session_id, token_hash, created_at, expires_at) "
         "VALUES (%s, sha256(convert_to(%s, 'UTF8')), now() - interval '2 hours', now() + interval '1 day')",
         u.claims["session_id"], stale)
    after_rise = db.rpc("refresh_session", refresh_token=u.session["refresh_token"])  # issued now: after the rise

    update(db)

    statuses = dict(db.q("SELECT id::text, status FROM auth.mfa_factors WHERE user_id = %s", u.claims["sub"]))
    assert statuses == {owners["id"]: "verified", planted: "unverified"}
    assert db.one("SELECT detail ->> 'factor_id' FROM auth.audit_log WHERE event = 'mfa_factor_demoted'") == planted
    with raises_auth(401, "invalid-refresh-token"):
        db.rpc("refresh_session", refresh_token=stale)
    assert db.decode(db.rpc("refresh_session", refresh_token=after_rise["refresh_token"])["access_token"])["aal"] == "aal2"
