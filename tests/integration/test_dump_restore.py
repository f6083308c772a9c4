"""pg_dump/pg_restore keeps users, sessions, codes, settings and secrets."""

import os
import subprocess

import psycopg

from conftest import PG_BIN, Db, dsn


def test_dump_and_restore_keep_everything(db, tmp_path):
    db.setting("otp_length", 8)
    s = db.sign_in("+15551212121")
    db.rpc("send_sms_otp", phone="+15551212122")
    pending_code = db.last_code("+15551212122")
    before = db.counts()
    secrets = db.q("SELECT name, value FROM auth.secrets ORDER BY name")

    dump = tmp_path / "db.dump"
    env = dict(os.environ, PGHOST="127.0.0.1", PGUSER="postgres")
    subprocess.run([f"{PG_BIN}/pg_dump", "-Fc", "-f", str(dump), db.name], check=True, env=env)
    restored = f"{db.name}_r"
    with psycopg.connect(dsn("postgres"), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {restored}")
    subprocess.run([f"{PG_BIN}/pg_restore", "--exit-on-error", "-d", restored, str(dump)], check=True, env=env)

    r = Db(restored)
    try:
        for role in ("anon", "authenticated"):
            assert r.one("SELECT count(*) FROM pg_roles WHERE rolname = %s", role) == 1
        assert r.counts() == before
        assert r.q("SELECT name, value FROM auth.secrets ORDER BY name") == secrets
        assert r.one("SELECT value FROM auth.settings() WHERE name = 'otp_length'") == 8
        # Sessions, refresh tokens and pending codes still work after the restore.
        s2 = r.rpc("refresh_session", refresh_token=s["refresh_token"])
        assert r.claims_of(s2)["sub"] == s["user"]["id"]
        assert r.rpc("verify_sms_otp", phone="+15551212122", otp=pending_code)["session"]
    finally:
        r.close()
        with psycopg.connect(dsn("postgres"), autocommit=True) as c:
            c.execute(f"DROP DATABASE {restored} WITH (FORCE)")
