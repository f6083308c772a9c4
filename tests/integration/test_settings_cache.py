"""Backends keep the settings and secrets once read (src/config.rs). These tests hold one client
connection open across changes made by another backend, as a PostgREST pool does, and check
that every change is seen from the next transaction on, and that an undone change is not kept.
"""

import jwt
import pytest


def code_length(db, phone):
    return len(db.last_code(phone))


def test_a_setting_changed_by_another_backend_applies_to_the_next_call(db):
    conn = db.connect()
    db.rpc("send_sms_otp", conn=conn, phone="+15550100001")
    assert code_length(db, "+15550100001") == 6

    db.setting("otp_length", 8)
    db.rpc("send_sms_otp", conn=conn, phone="+15550100002")
    assert code_length(db, "+15550100002") == 8

    db.q("SELECT auth.reset_setting('otp_length')")
    db.rpc("send_sms_otp", conn=conn, phone="+15550100003")
    assert code_length(db, "+15550100003") == 6


def test_a_limit_changed_by_another_backend_binds_the_next_call(db):
    conn = db.connect()
    db.setting("resend_cooldown", 0)
    db.rpc("send_sms_otp", conn=conn, phone="+15550100011")
    db.rpc("send_sms_otp", conn=conn, phone="+15550100011")
    db.setting("resend_cooldown", 60)
    with pytest.raises(Exception) as e:
        db.rpc("send_sms_otp", conn=conn, phone="+15550100011")
    assert e.value.sqlstate == "PT429"
    assert e.value.diag.message_detail == "over-sms-send-rate-limit"


def test_a_rolled_back_change_is_seen_only_inside_its_transaction(db):
    conn = db.connect()
    db.rpc("send_sms_otp", conn=conn, phone="+15550100021")
    with pytest.raises(RuntimeError):
        with conn.transaction():
            conn.execute("SELECT auth.set_setting('otp_length', '8')")
            conn.execute("SELECT auth.send_sms_otp(phone => '+15550100022')")
            assert db.one("SELECT count(*) FROM auth.sms_outbox WHERE phone = '+15550100022'") == 0
            body = conn.execute(
                "SELECT body FROM auth.sms_outbox WHERE phone = '+15550100022'").fetchone()[0]
            assert len(body.rsplit(" ", 1)[-1]) == 8
            raise RuntimeError("roll back")
    db.rpc("send_sms_otp", conn=conn, phone="+15550100023")
    assert code_length(db, "+15550100023") == 6
    assert db.one("SELECT count(*) FROM auth.config WHERE key = 'otp_length'") == 0


def test_a_new_jwt_secret_signs_the_next_session_of_a_connected_backend(db):
    conn = db.connect()
    db.rpc("send_sms_otp", conn=conn, phone="+15550100031")
    first = db.rpc("verify_sms_otp", conn=conn, phone="+15550100031",
                   otp=db.last_code("+15550100031"))["session"]
    old = db.jwt_secret()
    jwt.decode(first["access_token"], old, algorithms=["HS256"], audience="authenticated")

    new = "n" * 40
    db.q("SELECT auth.set_jwt_secret(%s)", new)
    db.rpc("send_sms_otp", conn=conn, phone="+15550100032")
    second = db.rpc("verify_sms_otp", conn=conn, phone="+15550100032",
                    otp=db.last_code("+15550100032"))["session"]
    jwt.decode(second["access_token"], new, algorithms=["HS256"], audience="authenticated")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(second["access_token"], old, algorithms=["HS256"], audience="authenticated")


def test_settings_tables_have_their_invalidation_triggers(db):
    rows = db.q("""SELECT tgrelid::regclass::text, tgname FROM pg_trigger
                   WHERE tgfoid = 'auth._settings_changed()'::regprocedure ORDER BY 1""")
    assert rows == [("auth.config", "config_changed"), ("auth.secrets", "secrets_changed")]
