"""Cooldown and send rate limits, with their retry hints."""

import re
import uuid

import pytest

import psycopg

from conftest import TEMPLATE, Db, dsn, raises_auth

PHONE = "+15550606060"


def retry_seconds(exc):
    m = re.fullmatch(r"retry after (\d+) seconds", exc.value.diag.message_hint or "")
    assert m, exc.value.diag.message_hint
    return int(m.group(1))


def test_resend_cooldown_defaults_to_60_seconds(db):
    db.q("SELECT auth.reset_setting('resend_cooldown')")
    db.rpc("send_sms_otp", phone=PHONE)
    with raises_auth(429, "over-sms-send-rate-limit") as exc:
        db.rpc("send_sms_otp", phone=PHONE)
    assert 55 <= retry_seconds(exc) <= 60
    with raises_auth(429, "over-sms-send-rate-limit"):
        db.rpc("resend_sms_otp", phone=PHONE)
    # Another phone is not affected.
    db.rpc("send_sms_otp", phone="+15550606061")
    # Once the last send is older than the cooldown, sending works again.
    db.q("UPDATE auth.send_events SET created_at = created_at - interval '61 seconds'")
    db.rpc("resend_sms_otp", phone=PHONE)
    assert len(db.outbox(PHONE)) == 2


def test_a_cooldown_longer_than_the_per_phone_window_still_binds(db):
    """The cooldown and the per-phone window are read together, back to the longer of the two."""
    db.q("SELECT auth.set_setting('resend_cooldown', '600')")
    db.q("SELECT auth.reset_setting('sms_rate_per_phone_window')")  # 300 s
    db.rpc("send_sms_otp", phone=PHONE)
    # Outside the window, inside the cooldown.
    db.q("UPDATE auth.send_events SET created_at = created_at - interval '400 seconds'")
    with raises_auth(429, "over-sms-send-rate-limit") as exc:
        db.rpc("send_sms_otp", phone=PHONE)
    assert 195 <= retry_seconds(exc) <= 200
    db.q("UPDATE auth.send_events SET created_at = created_at - interval '201 seconds'")
    db.rpc("send_sms_otp", phone=PHONE)
    assert len(db.outbox(PHONE)) == 2


def test_per_phone_limit_defaults_to_3_per_5_minutes(db):
    db.q("SELECT auth.reset_setting('sms_rate_per_phone')")
    for _ in range(3):
        db.rpc("send_sms_otp", phone=PHONE)
    with raises_auth(429, "over-sms-send-rate-limit") as exc:
        db.rpc("send_sms_otp", phone=PHONE)
    assert 290 <= retry_seconds(exc) <= 300
    assert len(db.outbox(PHONE)) == 3
    db.q("UPDATE auth.send_events SET created_at = created_at - interval '301 seconds'")
    db.rpc("send_sms_otp", phone=PHONE)


def test_per_phone_limit_counts_unknown_phones_too(db):
    """Otherwise the limit would reveal which phones are registered."""
    db.q("SELECT auth.reset_setting('sms_rate_per_phone')")
    for _ in range(3):
        db.rpc("send_sms_otp", phone=PHONE, create_user=False)
    with raises_auth(429, "over-sms-send-rate-limit"):
        db.rpc("send_sms_otp", phone=PHONE, create_user=False)


def test_per_ip_limit_defaults_to_10_per_10_minutes_from_x_forwarded_for(db):
    db.q("SELECT auth.reset_setting('sms_rate_per_ip')")
    # The client wrote the first entry; the one trusted proxy (the default) appended the last.
    h = {"x-forwarded-for": "10.0.0.1, 203.0.113.9"}
    for i in range(10):
        db.rpc("send_sms_otp", phone=f"+1555070{i:04d}", headers=h)
    with raises_auth(429, "over-request-rate-limit") as exc:
        db.rpc("send_sms_otp", phone="+15550709999", headers=h)
    assert 590 <= retry_seconds(exc) <= 600
    assert db.one("SELECT count(*) FROM auth.send_events WHERE ip = '203.0.113.9'") == 10
    # A different client address is not limited.
    db.rpc("send_sms_otp", phone="+15550709999", headers={"x-forwarded-for": "198.51.100.1"})


def test_per_ip_limit_uses_the_connection_address_without_headers(db):
    db.setting("sms_rate_per_ip", 2)
    db.rpc("send_sms_otp", phone="+15550710001")
    db.rpc("send_sms_otp", phone="+15550710002")
    with raises_auth(429, "over-request-rate-limit"):
        db.rpc("send_sms_otp", phone="+15550710003")
    assert db.one("SELECT DISTINCT host(ip) FROM auth.send_events") == "127.0.0.1"


def test_global_sms_budget_per_hour(db):
    db.setting("sms_budget_per_hour", 2)
    db.rpc("send_sms_otp", phone="+15550720001")
    db.rpc("send_sms_otp", phone="+15550720002")
    with raises_auth(429, "over-sms-send-rate-limit") as exc:
        db.rpc("send_sms_otp", phone="+15550720003")
    assert 3500 <= retry_seconds(exc) <= 3600
    assert len(db.outbox()) == 2


def test_only_committed_sends_count_against_the_budget(db):
    """Preloaded, the budget is tallied in shared memory when a send commits; a send rolled
    back, or rolled back to a savepoint, counts no more than its counter rows do."""
    db.setting("sms_budget_per_hour", 2)
    conn = db.connect()
    with conn.transaction(force_rollback=True):
        db.rpc("send_sms_otp", phone="+15550720001", conn=conn)
    with conn.transaction():
        with conn.transaction(force_rollback=True):
            db.rpc("send_sms_otp", phone="+15550720002", conn=conn)
        db.rpc("send_sms_otp", phone="+15550720003", conn=conn)
    conn.close()
    db.rpc("send_sms_otp", phone="+15550720004")
    with raises_auth(429, "over-sms-send-rate-limit"):
        db.rpc("send_sms_otp", phone="+15550720005")
    assert len(db.outbox()) == 2
    assert db.one("SELECT sum(hits) FROM auth.rate_counters WHERE key = 'budget'") == 2


def test_the_budget_starts_from_its_counter_rows(db):
    """What the counter rows hold binds from the first send, as after a restart, a failover or
    a restore (preloaded, that send tallies the rows)."""
    db.setting("sms_budget_per_hour", 3)
    db.q("INSERT INTO auth.rate_counters (key, bucket_start, shard, hits, last_at) "
         "VALUES ('budget', to_timestamp(floor(date_part('epoch', now()) / 900) * 900), 5, 2, now()), "
         "('budget', to_timestamp(floor(date_part('epoch', now()) / 900) * 900 - 900), 1, 1, now() - interval '10 minutes')")
    with raises_auth(429, "over-sms-send-rate-limit") as exc:
        db.rpc("send_sms_otp", phone="+15550730101")
    # The older bucket's send leaves the window first, in 50 minutes.
    assert 2990 <= retry_seconds(exc) <= 3000
    assert db.outbox() == []


def test_preloaded_sends_read_the_budget_tally_not_its_rows(db):
    """Once a database's tally is made, sends read it (README, Preloading): rows added by hand
    are not seen until the tally is made again. Without preloading every send reads the rows."""
    preloaded = "pg_otp_auth" in db.one("SHOW shared_preload_libraries")
    db.setting("sms_budget_per_hour", 5)
    db.rpc("send_sms_otp", phone="+15550760001")
    db.q("UPDATE auth.rate_counters SET hits = hits + 100 WHERE key = 'budget'")
    if preloaded:
        db.rpc("send_sms_otp", phone="+15550760002")
        # A DELETE, even of no row, has the tally made again from the rows.
        db.q("DELETE FROM auth.rate_counters WHERE key = 'budget' AND hits = 0")
    with raises_auth(429, "over-sms-send-rate-limit"):
        db.rpc("send_sms_otp", phone="+15550760003")


def test_deleting_the_budget_counters_resets_the_budget(db):
    """How a DBA resets the budget: deleting (or truncating) its counter rows; preloaded, the
    tally goes with them when the deletion commits."""
    db.setting("sms_budget_per_hour", 1)
    db.rpc("send_sms_otp", phone="+15550740001")
    with raises_auth(429, "over-sms-send-rate-limit"):
        db.rpc("send_sms_otp", phone="+15550740002")
    db.q("DELETE FROM auth.rate_counters WHERE key = 'budget'")
    db.rpc("send_sms_otp", phone="+15550740002")
    with raises_auth(429, "over-sms-send-rate-limit"):
        db.rpc("send_sms_otp", phone="+15550740003")
    db.q("TRUNCATE auth.rate_counters")
    db.rpc("send_sms_otp", phone="+15550740003")
    with raises_auth(429, "over-sms-send-rate-limit"):
        db.rpc("send_sms_otp", phone="+15550740004")
    assert len(db.outbox()) == 3


def test_each_database_has_its_own_budget(db):
    """Databases made from one template have tables of the same oids; their budgets are
    still their own."""
    db.setting("sms_budget_per_hour", 1)
    db.rpc("send_sms_otp", phone="+15550750001")
    with raises_auth(429, "over-sms-send-rate-limit"):
        db.rpc("send_sms_otp", phone="+15550750002")
    name = f"{db.name}_other"
    with psycopg.connect(dsn("postgres"), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    other = Db(name)
    try:
        other.setting("sms_budget_per_hour", 1)
        other.rpc("send_sms_otp", phone="+15550750003")
        with raises_auth(429, "over-sms-send-rate-limit"):
            other.rpc("send_sms_otp", phone="+15550750004")
        with raises_auth(429, "over-sms-send-rate-limit"):
            db.rpc("send_sms_otp", phone="+15550750004")
    finally:
        other.close()
        with psycopg.connect(dsn("postgres"), autocommit=True) as c:
            c.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ"])
def test_sends_earlier_in_the_same_statement_count(db, isolation):
    """A DBA's statement sending twice: the second admission sees the first send's record
    (written by the same statement, in the transaction's snapshot too)."""
    db.setting("sms_rate_per_phone", 1)
    conn = db.connect()
    with raises_auth(429, "over-sms-send-rate-limit"):
        with conn.transaction():
            conn.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
            conn.execute("SELECT auth.send_sms_otp(%s) FROM generate_series(1, 2)", (PHONE,))
    conn.close()
    assert db.one("SELECT count(*) FROM auth.send_events") == 0


def test_a_rate_limited_call_writes_nothing(db):
    db.setting("sms_rate_per_phone", 1)
    db.rpc("send_sms_otp", phone=PHONE)
    before = db.counts()
    with raises_auth(429, "over-sms-send-rate-limit"):
        db.rpc("send_sms_otp", phone="+15550606060")
    assert db.counts() == before


def test_rate_counters_read_a_fixed_window_and_old_ones_are_purged(db):
    """Counters older than any window stop counting and are deleted by purge_expired; live ones stay."""
    db.setting("sms_rate_per_ip", 2)
    h = {"x-forwarded-for": "203.0.113.77"}
    db.rpc("send_sms_otp", phone="+15550730001", headers=h)
    db.rpc("send_sms_otp", phone="+15550730002", headers=h)
    with raises_auth(429, "over-request-rate-limit"):
        db.rpc("send_sms_otp", phone="+15550730003", headers=h)
    # The same counters, moved out of the 10-minute window: the address may send again.
    db.q("UPDATE auth.rate_counters SET bucket_start = bucket_start - interval '11 minutes', "
         "last_at = last_at - interval '11 minutes' WHERE key = 'send_ip:203.0.113.77'")
    db.rpc("send_sms_otp", phone="+15550730003", headers=h)
    db.q("UPDATE auth.rate_counters SET bucket_start = bucket_start - interval '40 days', "
         "last_at = last_at - interval '40 days' WHERE last_at < now() - interval '10 minutes'")
    live = db.one("SELECT count(*) FROM auth.rate_counters WHERE last_at > now() - interval '1 hour'")
    out = db.one("SELECT auth.purge_expired()")
    assert out["rate_counters"] >= 1
    assert db.one("SELECT count(*) FROM auth.rate_counters WHERE last_at < now() - interval '30 days'") == 0
    assert db.one("SELECT count(*) FROM auth.rate_counters") == live


def test_limits_bind_where_the_collation_orders_keys_unlike_c(template):
    """Admission reads the counters by index (see src/lookup.rs), comparing keys in the index's
    collation: in a database whose collation orders an IPv6 key before an IPv4 one (ICU: ':'
    before '.'; C: '.' before ':'), comparing them as C would miss the rows."""
    name = "t_icu_" + uuid.uuid4().hex[:8]
    with psycopg.connect(dsn("postgres"), autocommit=True) as c:
        try:
            c.execute(f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu "
                      "ICU_LOCALE 'und' LOCALE 'C.UTF-8'")
        except psycopg.errors.FeatureNotSupported as e:
            pytest.skip(f"no ICU in this build: {e}")
    try:
        with psycopg.connect(dsn(name), autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_otp_auth")
            c.execute("DO $$ BEGIN CREATE ROLE anon NOLOGIN; "
                      "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        d = Db(name)
        try:
            assert d.one("SELECT 'send_ip:1::1' < 'send_ip:1.2.3.4'") is True
            assert d.one("SELECT 'send_ip:1::1' < 'send_ip:1.2.3.4' COLLATE \"C\"") is False
            d.setting("resend_cooldown", 0)
            d.setting("sms_rate_per_ip", 2)
            addresses = ("1.2.3.4", "1::1")
            for n, ip in enumerate(addresses):
                for i in range(2):
                    d.rpc("send_sms_otp", phone=f"+155508{n}{i:04d}", headers={"x-forwarded-for": ip})
            for n, ip in enumerate(addresses):
                with raises_auth(429, "over-request-rate-limit"):
                    d.rpc("send_sms_otp", phone=f"+155508{n}9999", headers={"x-forwarded-for": ip})
            assert d.one("SELECT count(DISTINCT key) FROM auth.rate_counters WHERE starts_with(key, 'send_ip:')") == 2
        finally:
            d.close()
    finally:
        with psycopg.connect(dsn("postgres"), autocommit=True) as c:
            c.execute(f"DROP DATABASE {name} WITH (FORCE)")
