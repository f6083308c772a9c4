"""Fixtures for integration tests against a real PostgreSQL cluster.

scripts/test.sh starts a throwaway cluster and exports PGHOST/PGPORT; each test gets its own
database cloned from a template with the extension installed, so tests do not share rate-limit
state or settings.
"""

import json
import os
import uuid
from contextlib import contextmanager

import jwt
import psycopg
import pytest

HOST = "127.0.0.1"  # TCP, so inet_client_addr() is set as it is behind PostgREST
# The PostgreSQL installation under test (scripts/test.sh runs the suite on 15 and on 18).
PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
TEMPLATE = "otp_template"


def dsn(dbname):
    return f"host={HOST} port={os.environ['PGPORT']} user=postgres dbname={dbname}"


@pytest.fixture(scope="session")
def template():
    with psycopg.connect(dsn("postgres"), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        c.execute(f"CREATE DATABASE {TEMPLATE}")
    with psycopg.connect(dsn(TEMPLATE), autocommit=True) as c:
        c.execute("CREATE EXTENSION pg_otp_auth")
        # The PostgREST role layout: an authenticator that switches into anon/authenticated.
        for role in ("anon", "authenticated"):
            c.execute(f"DO $$ BEGIN CREATE ROLE {role} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    return TEMPLATE


class Db:
    """One test database: a superuser connection for setup and inspection, and `rpc` for
    calling the API as PostgREST would."""

    def __init__(self, name):
        self.name = name
        self.dsn = dsn(name)
        self.admin = psycopg.connect(self.dsn, autocommit=True)

    def q(self, sql, *args):
        cur = self.admin.execute(sql, args)
        return cur.fetchall() if cur.description else []

    def one(self, sql, *args):
        rows = self.q(sql, *args)
        return rows[0][0] if rows else None

    def connect(self):
        return psycopg.connect(self.dsn, autocommit=True)

    def setting(self, name, value):
        self.admin.execute("SELECT auth.set_setting(%s, %s::jsonb)", (name, json.dumps(value)))

    def rpc(self, fn, role="anon", claims=None, headers=None, conn=None, **args):
        """`POST /rpc/fn` as PostgREST runs it: one transaction, SET LOCAL role, request
        settings as transaction-local GUCs, named arguments."""
        own = conn is None
        conn = conn or self.connect()
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL role {role}")
                conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(claims or {"role": role}),))
                conn.execute("SELECT set_config('request.headers', %s, true)", (json.dumps(headers or {}),))
                named = ", ".join(f"{k} => %s" for k in args)
                vals = [json.dumps(v) if isinstance(v, (dict, list)) else v for v in args.values()]
                return conn.execute(f"SELECT auth.{fn}({named})", vals).fetchone()[0]
        finally:
            if own:
                conn.close()

    def as_user(self, session, fn, **args):
        """`fn` called by the signed-in user of `session`, as PostgREST runs it with their token."""
        return self.rpc(fn, role="authenticated", claims=self.claims_of(session), **args)

    def outbox(self, phone=None):
        if phone:
            return self.q("SELECT id, body, channel, status, captcha_token FROM auth.sms_outbox WHERE phone = %s ORDER BY created_at", phone)
        return self.q("SELECT id, body, channel, status, captcha_token FROM auth.sms_outbox ORDER BY created_at")

    def last_code(self, phone):
        body = self.one("SELECT body FROM auth.sms_outbox WHERE phone = %s ORDER BY created_at DESC LIMIT 1", phone)
        return body.rsplit(" ", 1)[-1]

    def jwt_secret(self):
        return self.one("SELECT auth.jwt_secret()")

    def decode(self, token, audience="authenticated"):
        return jwt.decode(token, self.jwt_secret(), algorithms=["HS256"], audience=audience)

    def sign_in(self, phone):
        self.rpc("send_sms_otp", phone=phone)
        return self.rpc("verify_sms_otp", phone=phone, otp=self.last_code(phone))["session"]

    def claims_of(self, session):
        return self.decode(session["access_token"])

    def counts(self):
        """Row counts of every extension table, to prove that failed calls write nothing."""
        tables = [r[0] for r in self.q(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'auth' AND c.relkind = 'r' ORDER BY 1")]
        return {t: self.one(f"SELECT count(*) FROM auth.{t}") for t in tables}

    def close(self):
        self.admin.close()


@pytest.fixture
def db(template):
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(dsn("postgres"), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    d = Db(name)
    # Most tests send several codes to one phone; the defaults are exercised in test_rate_limits.
    d.setting("resend_cooldown", 0)
    d.setting("sms_rate_per_phone", 1000)
    d.setting("sms_rate_per_ip", 1000)
    yield d
    d.close()
    with psycopg.connect(dsn("postgres"), autocommit=True) as c:
        c.execute(f"DROP DATABASE {name} WITH (FORCE)")


def run_concurrently(db, n, call):
    """Runs `call(conn)` from n connections released at the same instant; returns, per call,
    ("ok", result) or ("err", DETAIL code)."""
    import threading

    conns = [db.connect() for _ in range(n)]
    barrier = threading.Barrier(n)
    results = []

    def one(conn):
        barrier.wait()
        try:
            results.append(("ok", call(conn)))
        except psycopg.Error as e:
            results.append(("err", e.diag.message_detail))

    threads = [threading.Thread(target=one, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in conns:
        c.close()
    return results


@contextmanager
def raises_auth(status, code):
    """Expect an API error: SQLSTATE PT<status>, DETAIL <code>."""
    with pytest.raises(psycopg.Error) as exc:
        yield exc
    diag = exc.value.diag
    assert (diag.sqlstate, diag.message_detail) == (f"PT{status}", code), (diag.sqlstate, diag.message_primary, diag.message_detail)
