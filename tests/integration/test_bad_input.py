"""Bad input gets a clear error with a stable code, and writes nothing."""

import pytest

from conftest import raises_auth

PHONE = "+15551010101"
BIG = {"x": "y" * (16 * 1024)}

CASES = [
    # send_sms_otp
    ("send_sms_otp", dict(phone=None), 400, "invalid-request"),
    ("send_sms_otp", dict(phone=""), 400, "invalid-phone"),
    ("send_sms_otp", dict(phone="15551010101"), 400, "invalid-phone"),
    ("send_sms_otp", dict(phone="+0551010101"), 400, "invalid-phone"),
    ("send_sms_otp", dict(phone="+1555"), 400, "invalid-phone"),
    ("send_sms_otp", dict(phone="+1555101010101010"), 400, "invalid-phone"),
    ("send_sms_otp", dict(phone="+1555abc0101"), 400, "invalid-phone"),
    ("send_sms_otp", dict(phone="+1555.101.0101"), 400, "invalid-phone"),
    ("send_sms_otp", dict(phone=PHONE, create_user=None), 400, "invalid-request"),
    ("send_sms_otp", dict(phone=PHONE, data=None), 400, "invalid-request"),
    ("send_sms_otp", dict(phone=PHONE, data=[1, 2]), 400, "invalid-request"),
    ("send_sms_otp", dict(phone=PHONE, data=BIG), 400, "invalid-request"),
    ("send_sms_otp", dict(phone=PHONE, channel=None), 400, "invalid-request"),
    ("send_sms_otp", dict(phone=PHONE, channel="pigeon"), 400, "invalid-request"),
    ("send_sms_otp", dict(phone=PHONE, captcha_token=""), 400, "invalid-request"),
    ("send_sms_otp", dict(phone=PHONE, captcha_token="x" * 5000), 400, "invalid-request"),
    # resend
    ("resend_sms_otp", dict(phone=None), 400, "invalid-request"),
    ("resend_sms_otp", dict(phone="nope"), 400, "invalid-phone"),
    # signup
    ("signup_sms_otp", dict(phone=None), 400, "invalid-request"),
    ("signup_sms_otp", dict(phone="+1"), 400, "invalid-phone"),
    ("signup_sms_otp", dict(phone=PHONE, options=None), 400, "invalid-request"),
    ("signup_sms_otp", dict(phone=PHONE, options=[]), 400, "invalid-request"),
    ("signup_sms_otp", dict(phone=PHONE, options={"bogus": 1}), 400, "invalid-request"),
    ("signup_sms_otp", dict(phone=PHONE, options={"allowedRoles": ["admin"]}), 400, "role-not-allowed"),
    ("signup_sms_otp", dict(phone=PHONE, options={"defaultRole": "admin"}), 400, "default-role-must-be-in-allowed-roles"),
    ("signup_sms_otp", dict(phone=PHONE, options={"displayName": "x" * 33}), 400, "invalid-request"),
    ("signup_sms_otp", dict(phone=PHONE, options={"displayName": "semi;colon"}), 400, "invalid-request"),
    ("signup_sms_otp", dict(phone=PHONE, options={"locale": "de"}), 400, "locale-not-allowed"),
    ("signup_sms_otp", dict(phone=PHONE, options={"locale": "english"}), 400, "locale-not-allowed"),
    ("signup_sms_otp", dict(phone=PHONE, options={"metadata": "x"}), 400, "invalid-request"),
    ("signup_sms_otp", dict(phone=PHONE, options={"metadata": BIG}), 400, "invalid-request"),
    ("signup_sms_otp", dict(phone=PHONE, options={"redirectTo": "https://evil.test"}), 400, "redirectTo-not-allowed"),
    # verify
    ("verify_sms_otp", dict(phone=None, otp="123456"), 400, "invalid-request"),
    ("verify_sms_otp", dict(phone=PHONE, otp=None), 400, "invalid-request"),
    ("verify_sms_otp", dict(phone="+1 555 x", otp="123456"), 400, "invalid-phone"),
    ("verify_sms_otp", dict(phone=PHONE, otp="12345"), 400, "invalid-request"),
    ("verify_sms_otp", dict(phone=PHONE, otp="1234567"), 400, "invalid-request"),
    ("verify_sms_otp", dict(phone=PHONE, otp="12345a"), 400, "invalid-request"),
    ("verify_sms_otp", dict(phone=PHONE, otp=" 123456"), 400, "invalid-request"),
    # refresh / sign-out
    ("refresh_session", dict(refresh_token=None), 400, "invalid-request"),
    ("sign_out", dict(scope=None), 400, "invalid-request"),
]


@pytest.mark.parametrize("fn,args,status,code", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_refused_and_writes_nothing(db, fn, args, status, code):
    db.rpc("send_sms_otp", phone="+15551020202")  # some existing state
    before = db.counts()
    with raises_auth(status, code) as exc:
        db.rpc(fn, **args)
    assert exc.value.diag.message_primary and "panic" not in exc.value.diag.message_primary.lower()
    assert db.counts() == before


def test_settings_reject_bad_values(db):
    for name, value, code in [
        ("otp_length", 5, "invalid-request"),
        ("otp_length", "six", "invalid-request"),
        ("otp_ttl", "five minutes", "invalid-request"),
        ("otp_max_attempts", 0, "invalid-request"),
        ("default_role", "admin", "default-role-must-be-in-allowed-roles"),
        ("allowed_roles", ["editor"], "default-role-must-be-in-allowed-roles"),
        ("sms_template", "no placeholder", "invalid-request"),
        ("sms_templates", {"fr": "{{code}}"}, "locale-not-allowed"),
        ("test_otp", {"+15550000000": "12"}, "invalid-request"),
        ("no_such_setting", 1, "invalid-request"),
    ]:
        before = db.q("SELECT * FROM auth.config ORDER BY key")
        with raises_auth(400, code):
            db.setting(name, value)
        assert db.q("SELECT * FROM auth.config ORDER BY key") == before
    with raises_auth(400, "invalid-request"):
        db.q("SELECT auth.set_jwt_secret('short')")
