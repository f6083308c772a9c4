"""Upgrades that keep every user: 0.1.0, installed from the script it was released with
(sql/pg_otp_auth--0.1.0.sql) and populated by the 0.1.0 library itself (built from its commit by
scripts/setup.sh), then the new library is installed and `ALTER EXTENSION pg_otp_auth UPDATE`
runs, as a package upgrade does it.

pg_dump writes an extension's member objects as one `CREATE EXTENSION` line, so the schema
comparison reads the catalogs instead: every member object with its definition, privileges,
options and `pg_extension_config_dump` registration."""

import os
import shutil
import subprocess
import time
import uuid

import psycopg
import pytest

from conftest import PG_BIN, Db, dsn, raises_auth
from test_dispatcher import BIN, wait_until
from test_mfa import User, oathtool

OLD, NEW = "0.1.0", "0.2.0"
OLD_LIBRARY = os.environ.get("PG_OTP_AUTH_0_1_0_LIBRARY",
                             os.path.expanduser("~/.cache/pg_otp_auth/pg_otp_auth-0.1.0.so"))
LIBDIR = subprocess.check_output([f"{PG_BIN}/pg_config", "--pkglibdir"], text=True).strip()
INSTALLED = os.path.join(LIBDIR, "pg_otp_auth.so")


@pytest.fixture
def released_library(tmp_path):
    """Installs the 0.1.0 library in place of the new one (new backends load it); calling the
    fixture's value puts the new one back, as a package upgrade does, and so does the teardown."""
    with psycopg.connect(dsn("postgres")) as c:
        if "pg_otp_auth" in c.execute("SHOW shared_preload_libraries").fetchone()[0]:
            pytest.skip("a preloaded library is only replaced by a restart; scripts/test.sh also "
                        "runs this file on a cluster without preloading")
    if c_server_version() >= 160000:
        pytest.skip("0.1.0 was released for PostgreSQL 15 only")
    assert os.path.exists(OLD_LIBRARY), "scripts/setup.sh builds the released 0.1.0 library"
    new = tmp_path / "new.so"
    shutil.copy2(INSTALLED, new)

    def install(path):
        shutil.copy2(path, INSTALLED + ".swap")
        os.replace(INSTALLED + ".swap", INSTALLED)  # running backends keep their mapping

    install(OLD_LIBRARY)
    try:
        yield lambda: install(new)
    finally:
        install(new)


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


def c_server_version():
    with psycopg.connect(dsn("postgres")) as c:
        return int(c.execute("SHOW server_version_num").fetchone()[0])


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
    out = subprocess.run([f"{PG_BIN}/pg_dump", "--schema-only", "--schema=auth", "-h", "127.0.0.1", "-p", os.environ["PGPORT"],
                          "-U", "postgres", db.name], capture_output=True, text=True, check=True).stdout
    # \restrict carries a random key per dump (PostgreSQL 15.14+).
    return [line for line in out.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))]


def test_the_released_script_is_kept_and_the_update_path_is_declared(make_db):
    old = make_db(OLD)
    assert old.one("SELECT extversion FROM pg_extension WHERE extname = 'pg_otp_auth'") == OLD
    assert old.q("SELECT source, target, path FROM pg_extension_update_paths('pg_otp_auth') "
                 "WHERE source = %s AND target = %s", OLD, NEW) == [(OLD, NEW, f"{OLD}--{NEW}")]
    assert old.one("SELECT default_version FROM pg_available_extensions WHERE name = 'pg_otp_auth'") == NEW


def test_an_upgrade_keeps_every_user_session_factor_message_and_setting(make_db, released_library):
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

    released_library()  # the new library; connections opened from now on load it
    db.admin.close()
    db.admin = db.connect()
    # Until the schema is updated, the new library refuses clearly instead of failing on a
    # missing table, and writes nothing.
    with raises_auth(503, "update-required"):
        db.rpc("send_sms_otp", phone="+15554040005")
    assert db.counts() == before
    update(db)

    after = db.counts()
    # Every row is kept but the two aal1 refresh tokens of the sessions that rose to aal2.
    assert {t: n for t, n in after.items() if t in before} == dict(before, refresh_tokens=before["refresh_tokens"] - 2)
    # The new per-IP counters are seeded from the history, so limits hold across the update.
    assert db.one("SELECT sum(hits) FROM auth.rate_counters WHERE key = 'send_ip:127.0.0.1'") == \
        db.one("SELECT count(*) FROM auth.send_events WHERE host(ip) = '127.0.0.1'")
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


def test_the_upgrade_repairs_what_0_1_0_let_through(make_db, released_library):
    """The planted-factor attack, carried out on 0.1.0, left two verified TOTP factors and the
    attacker's session at aal2; and a session that rose to aal2 kept its aal1 refresh tokens,
    which minted aal2 access tokens."""
    db = make_db(OLD)
    db.setting("resend_cooldown", 0)
    owner = User(db, "+15554040009")
    attacker = User(db, "+15554040009")  # an aal1 session of the same user, taken earlier
    aal1_refresh = owner.session["refresh_token"]
    planted = attacker.enroll_totp()
    mine = owner.activate_totp()
    attacker.adopt(attacker.call("mfa_challenge_and_verify", factor_id=planted["id"],
                                 code=oathtool(planted["totp"]["secret"])))
    user_id = owner.claims["sub"]
    assert db.one("SELECT count(*) FROM auth.mfa_factors WHERE user_id = %s AND status = 'verified'", user_id) == 2
    assert attacker.claims["aal"] == "aal2"

    released_library()
    db.admin.close()
    db.admin = db.connect()
    update(db)

    statuses = dict(db.q("SELECT id::text, status FROM auth.mfa_factors WHERE user_id = %s", user_id))
    assert statuses == {mine["id"]: "verified", planted["id"]: "unverified"}
    assert db.one("SELECT detail ->> 'factor_id' FROM auth.audit_log WHERE event = 'mfa_factor_demoted'") == planted["id"]
    # Every session of the attacked user ends; the owner signs in again with their own factor.
    with raises_auth(401, "not-authenticated"):
        attacker.call("mfa_list_factors")
    with raises_auth(401, "invalid-refresh-token"):
        db.rpc("refresh_session", refresh_token=aal1_refresh)
    db.rpc("send_sms_otp", phone=owner.phone)
    ticket = db.rpc("verify_sms_otp", phone=owner.phone, otp=db.last_code(owner.phone))["mfa"]["ticket"]
    out = db.rpc("signin_mfa_totp", ticket=ticket, otp=oathtool(mine["totp"]["secret"], time.time() + 30))
    assert db.claims_of(out["session"])["aal"] == "aal2"


def test_the_upgrade_drops_aal1_refresh_tokens_of_sessions_that_rose(make_db, released_library):
    db = make_db(OLD)
    u = User(db, "+15554040010")
    aal1_refresh = u.session["refresh_token"]
    u.activate_totp()
    # In 0.1.0 the aal1 refresh token is still valid after the rise, and mints aal2 tokens.
    second = User(db, "+15554040011")
    second_aal1 = second.session["refresh_token"]
    second.activate_totp()
    leaked = db.rpc("refresh_session", refresh_token=second_aal1)
    assert db.decode(leaked["access_token"])["aal"] == "aal2"

    released_library()
    db.admin.close()
    db.admin = db.connect()
    update(db)

    for stale in (aal1_refresh, leaked["refresh_token"]):
        with raises_auth(401, "invalid-refresh-token"):
            db.rpc("refresh_session", refresh_token=stale)
    fresh = db.rpc("refresh_session", refresh_token=u.session["refresh_token"])
    assert db.decode(fresh["access_token"])["aal"] == "aal2"
    second_fresh = db.rpc("refresh_session", refresh_token=second.session["refresh_token"])
    assert db.decode(second_fresh["access_token"])["aal"] == "aal2"


def test_the_upgrade_rewrites_no_table_and_rebuilds_no_index_it_keeps(make_db):
    """The column type changes of 0.2.0 (to domains) keep each table's and index's storage: an
    upgrade of a large install does not copy its users, sessions or outbox."""
    db = make_db(OLD)
    files = ("SELECT c.relname, c.relfilenode FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
             "WHERE n.nspname = 'auth' AND c.relkind IN ('r', 'i')")
    before = dict(db.q(files))
    update(db)
    after = dict(db.q(files))
    kept = set(before) & set(after)
    assert {"users", "users_pkey", "users_phone_key", "sessions", "sms_outbox", "send_events", "mfa_factors"} <= kept
    assert len(kept) > 20
    assert {name for name in kept if after[name] != before[name]} == set()
