"""The client address behind reverse proxies: only what trusted proxies appended is believed
(settings trusted_proxy_hops, default 1, and client_ip_header), and bad headers fall back to the
connection's address without an error."""

import pytest

from conftest import raises_auth


def send(db, i, headers):
    return db.rpc("send_sms_otp", phone=f"+1555081{i:04d}", headers=headers)


def recorded_ips(db):
    return [r[0] for r in db.q("SELECT host(ip) FROM auth.send_events ORDER BY created_at, id")]


def test_a_spoofed_first_entry_does_not_move_the_limit(db):
    db.setting("sms_rate_per_ip", 2)
    for i in range(2):
        send(db, i, {"x-forwarded-for": f"198.51.100.{i}, 203.0.113.20"})
    with raises_auth(429, "over-request-rate-limit"):
        send(db, 2, {"x-forwarded-for": "198.51.100.77, 203.0.113.20"})
    assert recorded_ips(db) == ["203.0.113.20"] * 2


def test_two_trusted_hops_take_the_entry_the_outer_proxy_appended(db):
    db.setting("trusted_proxy_hops", 2)
    send(db, 0, {"x-forwarded-for": "198.51.100.1, 203.0.113.30, 10.9.9.9"})
    assert recorded_ips(db) == ["203.0.113.30"]


def test_forwarded_rfc7239_and_single_value_headers(db):
    db.setting("client_ip_header", "forwarded")
    send(db, 0, {"forwarded": 'for=198.51.100.9, for="[2001:db8::7]:4711";proto=https'})
    db.setting("client_ip_header", "cf-connecting-ip")
    send(db, 1, {"cf-connecting-ip": "203.0.113.44", "x-forwarded-for": "198.51.100.250"})
    db.setting("client_ip_header", "x-real-ip")
    send(db, 2, {"x-real-ip": "203.0.113.45"})
    assert recorded_ips(db) == ["2001:db8::7", "203.0.113.44", "203.0.113.45"]


@pytest.mark.parametrize("header,value", [
    ("x-forwarded-for", "not an address"), ("x-forwarded-for", ""), ("x-forwarded-for", ",,,"),
    ("x-forwarded-for", "300.1.2.3"), ("x-forwarded-for", "203.0.113.1\u0000"), ("forwarded", "for=unknown"),
    ("forwarded", "for=_hidden;by=x"), ("forwarded", 'for="[2001:db8::1'), ("forwarded", "proto=https"),
    ("x-real-ip", "203.0.113.1, 203.0.113.2"),
])
def test_malformed_headers_fall_back_to_the_connection_and_never_raise(db, header, value):
    db.setting("client_ip_header", header)
    send(db, 0, {header: value})
    assert recorded_ips(db) == ["127.0.0.1"]


def test_no_trusted_proxy_ignores_the_headers(db):
    db.setting("trusted_proxy_hops", 0)
    send(db, 0, {"x-forwarded-for": "203.0.113.50"})
    assert recorded_ips(db) == ["127.0.0.1"]


def test_the_verification_limit_uses_the_same_address(db):
    db.setting("verify_rate_per_ip", 2)
    for i in range(2):
        with raises_auth(401, "invalid-otp"):
            db.rpc("verify_sms_otp", phone=f"+1555082{i:04d}", otp="123456",
                   headers={"x-forwarded-for": f"198.51.100.{i}, 203.0.113.60"})
    with raises_auth(429, "over-request-rate-limit"):
        db.rpc("verify_sms_otp", phone="+15550829999", otp="123456",
               headers={"x-forwarded-for": "198.51.100.200, 203.0.113.60"})


@pytest.mark.parametrize("name,value", [("client_ip_header", "X-Real-IP"), ("client_ip_header", "a b"),
                                         ("trusted_proxy_hops", -1), ("trusted_proxy_hops", 11)])
def test_bad_settings_are_refused(db, name, value):
    with raises_auth(400, "invalid-request"):
        db.setting(name, value)
