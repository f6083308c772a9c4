"""Cooldown and send rate limits, with their retry hints."""

import re

from conftest import raises_auth

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
