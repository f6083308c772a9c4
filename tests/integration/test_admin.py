"""DBA-facing functions: settings, purge, user disabling."""

import json

from conftest import raises_auth


def test_settings_listing_and_reset(db):
    rows = {r[0]: r[1:] for r in db.q("SELECT name, value, is_default, description FROM auth.settings()")}
    assert rows["otp_length"][:2] == (6, True) and rows["otp_ttl"][:2] == (300, True)
    assert rows["sms_template"][0] == "Your code is {{code}}"
    assert rows["resend_cooldown"][:2] == (0, False)  # the fixture changed it
    assert "jwt_secret" not in rows and all(r[2] for r in rows.values())
    db.setting("otp_ttl", "00:10:00")
    assert db.one("SELECT value FROM auth.settings() WHERE name = 'otp_ttl'") == 600
    db.q("SELECT auth.reset_setting('otp_ttl')")
    assert db.one("SELECT value FROM auth.settings() WHERE name = 'otp_ttl'") == 300
    assert db.one("SELECT count(*) FROM auth.audit_log WHERE event = 'setting_changed'") >= 1


def test_a_setting_out_of_range_is_refused_and_nothing_is_written(db):
    before = db.counts()
    with raises_auth(400, "invalid-request") as exc:
        db.q("SELECT auth.set_setting('otp_length', '4')")
    assert "otp_length" in exc.value.diag.message_primary
    assert db.counts() == before
    assert db.one("SELECT value FROM auth.settings() WHERE name = 'otp_length'") == 6


def test_set_user_disabled_revokes_sessions(db):
    s = db.sign_in("+15551111111")
    uid = s["user"]["id"]
    db.q("SELECT auth.set_user_disabled(%s)", uid)
    assert db.one("SELECT count(*) FROM auth.sessions WHERE user_id = %s AND revoked_at IS NULL", uid) == 0
    with raises_auth(401, "invalid-refresh-token"):
        db.rpc("refresh_session", refresh_token=s["refresh_token"])
    db.q("SELECT auth.set_user_disabled(%s, false)", uid)
    assert db.sign_in("+15551111111")["user"]["id"] == uid
    with raises_auth(404, "user-not-found"):
        db.q("SELECT auth.set_user_disabled(gen_random_uuid())")


def test_purge_expired(db):
    keep = db.sign_in("+15551111112")
    db.sign_in("+15551111113")
    db.rpc("send_sms_otp", phone="+15551111114")
    db.q("UPDATE auth.otp_codes SET expires_at = now() - interval '2 days' WHERE subject = '+15551111114'")
    db.q("UPDATE auth.sessions SET revoked_at = now() - interval '2 days' WHERE user_id <> %s", keep["user"]["id"])
    before = db.counts()
    out = db.one("SELECT auth.purge_expired()")
    assert out["otp_codes"] >= 1 and out["sessions"] == 1
    after = db.counts()
    assert after["otp_codes"] == before["otp_codes"] - out["otp_codes"]
    assert after["sessions"] == before["sessions"] - 1
    db.rpc("refresh_session", refresh_token=keep["refresh_token"])
    with raises_auth(400, "invalid-request"):
        db.q("SELECT auth.purge_expired('-1 day')")
