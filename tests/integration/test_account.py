"""The signed-in user's own account: get_user, update_user, change_phone and
verify_phone_change (issue 9)."""

import subprocess

from conftest import raises_auth

PHONE = "+15550700001"
NEW = "+15550700002"
OTHER = "+15550700003"


def test_get_user_is_the_session_user_fresh_from_the_table(db):
    s = db.sign_in(PHONE)
    u = db.as_user(s, "get_user")
    assert u == s["user"] | {"last_sign_in_at": u["last_sign_in_at"]}
    db.q("UPDATE auth.users SET display_name = 'Changed' WHERE id = %s", u["id"])
    assert db.as_user(s, "get_user")["display_name"] == "Changed"
    with raises_auth(401, "not-authenticated"):
        db.rpc("get_user")


def test_update_user_validates_each_field_and_merges_metadata(db):
    s = db.sign_in(PHONE)
    uid = s["user"]["id"]
    db.q("UPDATE auth.users SET metadata = '{\"plan\": \"free\", \"theme\": \"dark\"}' WHERE id = %s", uid)
    u = db.as_user(s, "update_user", display_name="Ana María", avatar_url="https://cdn.example.com/a.png",
                metadata={"plan": "pro", "theme": None, "team": 7})
    assert u["display_name"] == "Ana María"
    assert u["avatar_url"] == "https://cdn.example.com/a.png"
    assert u["metadata"] == {"plan": "pro", "team": 7}
    assert u["locale"] == "en"  # not given: unchanged
    assert db.one("SELECT count(*) FROM auth.audit_log WHERE event = 'user_updated' AND user_id = %s", uid) == 1

    before = db.counts(), db.q("SELECT display_name, locale, avatar_url, metadata FROM auth.users WHERE id = %s", uid)
    for args, code, field in [
        ({"display_name": "x" * 33}, "invalid-request", "display_name"),
        ({"locale": "xx"}, "locale-not-allowed", "locale"),
        ({"avatar_url": "javascript:alert(1)"}, "invalid-request", "avatar_url"),
        ({"metadata": [1, 2]}, "invalid-request", "metadata"),
        ({"metadata": {"big": "x" * 17000}}, "invalid-request", "metadata"),
        # Valid on its own, too big once merged: nothing is applied, not even the name.
        ({"display_name": "Bea", "metadata": {"a": "y" * 9000, "b": "z" * 9000}}, "invalid-request", "metadata"),
    ]:
        with raises_auth(400, code) as e:
            db.as_user(s, "update_user", **args)
        assert field in e.value.diag.message_primary
    assert (db.counts(), db.q("SELECT display_name, locale, avatar_url, metadata FROM auth.users WHERE id = %s", uid)) == before

    u = db.as_user(s, "update_user", display_name="", avatar_url="")
    assert u["display_name"] is None and u["avatar_url"] is None


def test_phone_change_is_confirmed_by_a_code_sent_to_the_new_number(db):
    s = db.sign_in(PHONE)
    other = db.sign_in(OTHER)
    uid = s["user"]["id"]
    sent = db.as_user(s, "change_phone", new_phone=NEW)
    assert sent["phone"] == "+1******0002" and sent["channel"] == "sms"
    code = db.last_code(NEW)
    assert db.one("SELECT user_id FROM auth.sms_outbox WHERE phone = %s", NEW) is not None

    # The old number still signs in until the change is confirmed.
    assert db.one("SELECT phone FROM auth.users WHERE id = %s", uid) == PHONE

    # A wrong code is refused and counted; then the right one switches the number.
    with raises_auth(401, "invalid-otp"):
        db.as_user(s, "verify_phone_change", new_phone=NEW, otp="000000" if code != "000000" else "111111")
    assert db.one("SELECT attempts FROM auth.otp_codes WHERE subject = %s AND purpose = 'phone_change'", NEW) == 1
    second = db.sign_in(PHONE)  # another device of the same user: revoked by the change
    r = db.as_user(s, "verify_phone_change", new_phone=NEW, otp=code)
    assert r["user"]["phone"] == NEW and r["user"]["phone_verified"] is True
    row = db.q("SELECT phone, phone_confirmed_at IS NOT NULL FROM auth.users WHERE id = %s", uid)[0]
    assert row == (NEW, True)
    assert db.one("SELECT revoked_reason FROM auth.sessions WHERE id = %s", db.claims_of(second)["session_id"]) == "phone_changed"
    assert db.one("SELECT revoked_at FROM auth.sessions WHERE id = %s", db.claims_of(s)["session_id"]) is None
    assert db.one("SELECT revoked_at FROM auth.sessions WHERE id = %s", db.claims_of(other)["session_id"]) is None
    audit = db.q("SELECT phone, detail FROM auth.audit_log WHERE event = 'phone_changed' AND user_id = %s", uid)
    assert audit == [(NEW, {"old_phone": PHONE})]
    # The old number is told.
    notice = db.q("SELECT body, purpose, status FROM auth.sms_outbox WHERE phone = %s AND purpose = 'phone_change_notice'", PHONE)
    assert len(notice) == 1 and "changed" in notice[0][0] and notice[0][2] == "queued"
    # The code is single use, and the new number now signs this user in.
    with raises_auth(401, "invalid-otp"):
        db.as_user(s, "verify_phone_change", new_phone=NEW, otp=code)
    again = db.sign_in(NEW)
    assert again["user"]["id"] == uid
    # The old number is free: it signs up as someone new.
    assert db.sign_in(PHONE)["user"]["id"] not in (uid, other["user"]["id"])


def test_another_users_number_gets_the_same_answer_and_nothing_is_sent(db):
    s = db.sign_in(PHONE)
    db.sign_in(OTHER)
    outbox_before = db.one("SELECT count(*) FROM auth.sms_outbox")
    codes_before = db.one("SELECT count(*) FROM auth.otp_codes")
    taken = db.as_user(s, "change_phone", new_phone=OTHER)
    free = db.as_user(s, "change_phone", new_phone=NEW)
    assert set(taken) == set(free) == {"message_id", "phone", "channel", "expires_at"}
    assert db.one("SELECT count(*) FROM auth.sms_outbox") == outbox_before + 1
    assert db.one("SELECT count(*) FROM auth.otp_codes") == codes_before + 1
    assert db.one("SELECT count(*) FROM auth.sms_outbox WHERE phone = %s AND purpose = 'phone_change'", OTHER) == 0
    # Guessing at it gets nowhere either.
    with raises_auth(401, "invalid-otp"):
        db.as_user(s, "verify_phone_change", new_phone=OTHER, otp="123456")
    assert db.one("SELECT phone FROM auth.users WHERE id = %s", s["user"]["id"]) == PHONE


def test_phone_change_is_rate_limited_like_sign_in(db):
    db.setting("resend_cooldown", 60)
    s = db.sign_in(PHONE)
    db.as_user(s, "change_phone", new_phone=NEW)
    with raises_auth(429, "over-sms-send-rate-limit") as e:
        db.as_user(s, "change_phone", new_phone=NEW)
    assert "retry after" in e.value.diag.message_hint


def test_phone_change_needs_aal2_when_a_factor_is_verified(db):
    s = db.sign_in(PHONE)
    enrolled = db.as_user(s, "mfa_enroll", factor_type="totp")
    code = subprocess.check_output(["oathtool", "--totp", "-b", enrolled["totp"]["secret"]], text=True).strip()
    raised = db.rpc("mfa_challenge_and_verify", role="authenticated", claims=db.claims_of(s),
                    factor_id=enrolled["id"], code=code)
    with raises_auth(403, "insufficient-aal"):
        db.as_user(s, "change_phone", new_phone=NEW)
    db.as_user(raised, "change_phone", new_phone=NEW)
    code = db.last_code(NEW)
    with raises_auth(403, "insufficient-aal"):
        db.as_user(s, "verify_phone_change", new_phone=NEW, otp=code)
    assert db.as_user(raised, "verify_phone_change", new_phone=NEW, otp=code)["user"]["phone"] == NEW


def test_the_notice_to_the_old_number_can_be_turned_off(db):
    db.setting("notify_phone_change", False)
    s = db.sign_in(PHONE)
    db.as_user(s, "change_phone", new_phone=NEW)
    db.as_user(s, "verify_phone_change", new_phone=NEW, otp=db.last_code(NEW))
    assert db.one("SELECT count(*) FROM auth.sms_outbox WHERE purpose = 'phone_change_notice'") == 0


def test_bad_input_to_the_account_functions(db):
    s = db.sign_in(PHONE)
    with raises_auth(400, "invalid-phone"):
        db.as_user(s, "change_phone", new_phone="12")
    with raises_auth(400, "invalid-request"):
        db.as_user(s, "change_phone", new_phone=PHONE)
    with raises_auth(400, "invalid-request"):
        db.as_user(s, "change_phone", new_phone=NEW, channel="pigeon")
    with raises_auth(400, "invalid-request"):
        db.as_user(s, "verify_phone_change", new_phone=NEW, otp=None)
    with raises_auth(401, "not-authenticated"):
        db.rpc("change_phone", new_phone=NEW)


def test_another_users_request_for_the_same_number_does_not_cancel_a_pending_change(db):
    a = db.sign_in(PHONE)
    b = db.sign_in(OTHER)
    db.as_user(a, "change_phone", new_phone=NEW)
    code_a = db.last_code(NEW)
    db.as_user(b, "change_phone", new_phone=NEW)
    assert db.one("SELECT count(*) FROM auth.otp_codes WHERE subject = %s AND purpose = 'phone_change' "
                  "AND invalidated_at IS NULL", NEW) == 2
    # The number's holder uses the code sent for A's request: it moves A, and only A.
    assert db.as_user(a, "verify_phone_change", new_phone=NEW, otp=code_a)["user"]["id"] == a["user"]["id"]
    with raises_auth(409, "user-already-exists"):
        db.as_user(b, "verify_phone_change", new_phone=NEW, otp=db.last_code(NEW))


def test_wrong_phone_change_codes_count_against_the_client_address(db):
    db.setting("verify_rate_per_ip", 2)
    s = db.sign_in(PHONE)
    db.as_user(s, "change_phone", new_phone=NEW)
    code = db.last_code(NEW)
    wrong = "000000" if code != "000000" else "111111"
    headers = {"x-forwarded-for": "203.0.113.9"}
    for _ in range(2):
        with raises_auth(401, "invalid-otp"):
            db.rpc("verify_phone_change", role="authenticated", claims=db.claims_of(s), headers=headers,
                   new_phone=NEW, otp=wrong)
    with raises_auth(429, "over-request-rate-limit"):
        db.rpc("verify_phone_change", role="authenticated", claims=db.claims_of(s), headers=headers,
               new_phone=NEW, otp=code)
    # Another address is not limited.
    r = db.rpc("verify_phone_change", role="authenticated", claims=db.claims_of(s),
               headers={"x-forwarded-for": "203.0.113.10"}, new_phone=NEW, otp=code)
    assert r["user"]["phone"] == NEW
