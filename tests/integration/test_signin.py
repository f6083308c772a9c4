"""Phone sign-in: send a code, verify it, get a session."""

import re
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from conftest import raises_auth, run_concurrently

PHONE = "+15550101010"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def test_whole_sign_in_flow(db):
    sent = db.rpc("send_sms_otp", phone="+1 (555) 010-1010", data={"plan": "pro"})
    assert set(sent) == {"message_id", "phone", "channel", "expires_at"}
    assert sent["phone"] == "+1******1010"
    assert sent["channel"] == "sms"
    assert UUID_RE.match(sent["message_id"])
    expires = datetime.fromisoformat(sent["expires_at"])
    assert timedelta(minutes=4) < expires - datetime.now(timezone.utc) <= timedelta(minutes=5, seconds=5)

    [(msg_id, body, channel, status, captcha)] = db.outbox(PHONE)
    assert str(msg_id) == sent["message_id"] and status == "queued" and channel == "sms"
    code = re.fullmatch(r"Your code is (\d{6})", body).group(1)
    # Only a keyed hash of the code is stored.
    assert db.one("SELECT count(*) FROM auth.otp_codes WHERE position(%s::bytea in code_hash) > 0", code.encode()) == 0

    out = db.rpc("verify_sms_otp", phone=PHONE, otp=code)
    assert out["mfa"] is None
    s = out["session"]
    assert set(s) == {"access_token", "token_type", "expires_in", "expires_at", "refresh_token", "refresh_token_id", "user"}
    assert s["token_type"] == "bearer" and s["expires_in"] == 3600
    assert set(s["user"]) == {"id", "phone", "phone_verified", "email", "email_verified", "display_name", "avatar_url",
                              "locale", "default_role", "roles", "metadata", "is_anonymous", "created_at",
                              "last_sign_in_at", "active_mfa_type"}
    u = s["user"]
    assert u["phone"] == PHONE and u["phone_verified"] is True and u["metadata"] == {"plan": "pro"}
    assert u["default_role"] == "authenticated" and u["roles"] == ["authenticated"]
    assert u["last_sign_in_at"] is not None and u["active_mfa_type"] is None

    # Checked by an independent JWT library against the configured secret.
    claims = db.claims_of(s)
    assert claims["sub"] == u["id"]
    assert claims["role"] == "authenticated" and claims["aud"] == "authenticated" and claims["iss"] == "pg_otp_auth"
    assert claims["exp"] - claims["iat"] == 3600 and claims["exp"] == s["expires_at"]
    assert claims["phone"] == PHONE and claims["aal"] == "aal1" and claims["is_anonymous"] is False
    assert [a["method"] for a in claims["amr"]] == ["sms"]
    assert claims["user_metadata"] == {"plan": "pro"}
    assert UUID_RE.match(claims["session_id"])
    assert db.one("SELECT count(*) FROM auth.sessions WHERE id = %s AND user_id = %s", claims["session_id"], u["id"]) == 1
    assert db.one("SELECT count(*) FROM auth.audit_log WHERE event = 'sign_in' AND user_id = %s", u["id"]) == 1
    # The session row stores the methods the token states, stamped with the sign-in's start.
    stored = db.one("SELECT amr FROM auth.sessions WHERE id = %s", claims["session_id"])
    assert stored == claims["amr"] and abs(stored[0]["timestamp"] - claims["iat"]) <= 1


def test_a_code_works_once(db):
    db.rpc("send_sms_otp", phone=PHONE)
    code = db.last_code(PHONE)
    db.rpc("verify_sms_otp", phone=PHONE, otp=code)
    with raises_auth(401, "invalid-otp"):
        db.rpc("verify_sms_otp", phone=PHONE, otp=code)


def test_concurrent_verification_has_exactly_one_winner(db):
    db.rpc("send_sms_otp", phone=PHONE)
    code = db.last_code(PHONE)
    results = run_concurrently(db, 8, lambda conn: db.rpc("verify_sms_otp", conn=conn, phone=PHONE, otp=code))
    assert [r[0] for r in results].count("ok") == 1, results
    assert all(r[1] == "invalid-otp" for r in results if r[0] == "err")
    assert db.one("SELECT count(*) FROM auth.sessions") == 1


def test_a_phone_is_locked_by_its_advisory_lock_until_the_call_commits(db):
    # Guesses and sends at one phone are serialised by the transaction advisory lock that
    # SQL writes as pg_advisory_xact_lock(hashtextextended('pg_otp_auth:phone:<phone>', 0)),
    # so a DBA can see (and take) it.
    lock = "SELECT pg_try_advisory_xact_lock(hashtextextended('pg_otp_auth:phone:' || %s, 0))"
    a, b = db.connect(), db.connect()
    with a.transaction():
        a.execute("SELECT auth.send_sms_otp(phone => '+15550301111')")
        assert b.execute(lock, ("+15550301111",)).fetchone()[0] is False
        assert b.execute(lock, ("+15550301112",)).fetchone()[0] is True
    assert b.execute(lock, ("+15550301111",)).fetchone()[0] is True
    a.close()
    b.close()


def test_max_attempts_kill_the_code_and_survive_the_error(db):
    db.rpc("send_sms_otp", phone=PHONE)
    code = db.last_code(PHONE)
    wrong = "000000" if code != "000000" else "111111"
    for i in range(5):
        with raises_auth(401, "invalid-otp"):
            db.rpc("verify_sms_otp", phone=PHONE, otp=wrong)
        # The counter is committed although the call failed.
        assert db.one("SELECT attempts FROM auth.otp_codes WHERE subject = %s", PHONE) == i + 1
    with raises_auth(401, "invalid-otp"):
        db.rpc("verify_sms_otp", phone=PHONE, otp=code)
    assert db.one("SELECT count(*) FROM auth.sessions") == 0
    # Every attempt is audited, the sixth (against the dead code) too.
    assert db.one("SELECT count(*) FROM auth.audit_log WHERE event = 'verify_failed' AND phone = %s", PHONE) == 6


def test_concurrent_guesses_cannot_exceed_the_attempt_limit(db):
    db.setting("otp_max_attempts", 3)
    db.rpc("send_sms_otp", phone=PHONE)
    code = db.last_code(PHONE)
    wrong = "000000" if code != "000000" else "111111"
    results = run_concurrently(db, 10, lambda conn: db.rpc("verify_sms_otp", conn=conn, phone=PHONE, otp=wrong))
    assert results == [("err", "invalid-otp")] * 10
    # Guesses are serialised per phone and each is recorded before the next is judged: three
    # reached the code, the other seven met it dead; all ten are audited.
    assert db.one("SELECT attempts FROM auth.otp_codes WHERE subject = %s", PHONE) == 3
    assert db.one("SELECT count(*) FROM auth.audit_log WHERE event = 'verify_failed'") == 10
    with raises_auth(401, "invalid-otp"):
        db.rpc("verify_sms_otp", phone=PHONE, otp=code)


def test_max_attempts_setting_is_honoured(db):
    db.setting("otp_max_attempts", 2)
    db.rpc("send_sms_otp", phone=PHONE)
    code = db.last_code(PHONE)
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(2):
        with raises_auth(401, "invalid-otp"):
            db.rpc("verify_sms_otp", phone=PHONE, otp=wrong)
    with raises_auth(401, "invalid-otp"):
        db.rpc("verify_sms_otp", phone=PHONE, otp=code)


def test_expired_code_gets_the_same_answer_as_a_wrong_one(db):
    db.rpc("send_sms_otp", phone=PHONE)
    code = db.last_code(PHONE)
    db.q("UPDATE auth.otp_codes SET expires_at = now() - interval '1 second' WHERE subject = %s", PHONE)
    with raises_auth(401, "invalid-otp") as exc:
        db.rpc("verify_sms_otp", phone=PHONE, otp=code)
    expired_msg = exc.value.diag.message_primary
    with raises_auth(401, "invalid-otp") as exc:
        db.rpc("verify_sms_otp", phone=PHONE, otp="999999" if code != "999999" else "888888")
    assert exc.value.diag.message_primary == expired_msg


def test_otp_ttl_setting(db):
    db.setting("otp_ttl", "10 minutes")
    sent = db.rpc("send_sms_otp", phone=PHONE)
    left = datetime.fromisoformat(sent["expires_at"]) - datetime.now(timezone.utc)
    assert timedelta(minutes=9) < left <= timedelta(minutes=10, seconds=5)


def test_new_code_invalidates_the_previous_one(db):
    db.rpc("send_sms_otp", phone=PHONE)
    first = db.last_code(PHONE)
    db.rpc("send_sms_otp", phone=PHONE)
    second = db.last_code(PHONE)
    # The earlier code is dead whatever its digits (two random codes may coincide).
    assert db.q("SELECT invalidated_at IS NOT NULL FROM auth.otp_codes WHERE subject = %s ORDER BY created_at",
                PHONE) == [(True,), (False,)]
    if first != second:
        with raises_auth(401, "invalid-otp"):
            db.rpc("verify_sms_otp", phone=PHONE, otp=first)
    assert db.rpc("verify_sms_otp", phone=PHONE, otp=second)["session"]


def test_otp_length_setting(db):
    db.setting("otp_length", 8)
    db.rpc("send_sms_otp", phone=PHONE)
    code = db.last_code(PHONE)
    assert re.fullmatch(r"\d{8}", code)
    with raises_auth(400, "invalid-request"):
        db.rpc("verify_sms_otp", phone=PHONE, otp=code[:6])
    assert db.rpc("verify_sms_otp", phone=PHONE, otp=code)["session"]


def test_disabled_user_is_refused(db):
    db.rpc("send_sms_otp", phone=PHONE)
    code = db.last_code(PHONE)
    uid = db.one("SELECT id FROM auth.users WHERE phone = %s", PHONE)
    db.q("SELECT auth.set_user_disabled(%s)", uid)
    with raises_auth(403, "disabled-user"):
        db.rpc("verify_sms_otp", phone=PHONE, otp=code)
    # A disabled user is sent nothing, and the answer looks the same.
    before = len(db.outbox(PHONE))
    sent = db.rpc("send_sms_otp", phone=PHONE)
    assert set(sent) == {"message_id", "phone", "channel", "expires_at"}
    assert len(db.outbox(PHONE)) == before


def test_unknown_phone_without_create_user_is_not_revealed(db):
    known = "+15550202020"
    db.rpc("send_sms_otp", phone=known)
    before = db.counts()
    a = db.rpc("send_sms_otp", phone="+15550303030", create_user=False)
    b = db.rpc("send_sms_otp", phone=known, create_user=False)
    assert set(a) == set(b) and a["channel"] == b["channel"] == "sms"
    assert a["phone"] == "+1******3030"
    # Both message ids are time-ordered (UUIDv7), the real one and the one naming nothing, so the
    # id's form does not tell them apart either.
    ids = [uuid.UUID(x["message_id"]) for x in (a, b)]
    assert [i.version for i in ids] == [7, 7], ids
    assert abs((ids[0].int >> 80) - (ids[1].int >> 80)) < 60_000  # milliseconds apart
    after = db.counts()
    assert after["users"] == before["users"]
    assert after["sms_outbox"] == before["sms_outbox"] + 1  # only the known phone got a message
    assert db.outbox("+15550303030") == []
    with raises_auth(401, "invalid-otp"):
        db.rpc("verify_sms_otp", phone="+15550303030", otp="123456")


def test_resend(db):
    db.rpc("send_sms_otp", phone=PHONE, channel="whatsapp")
    first = db.last_code(PHONE)
    r = db.rpc("resend_sms_otp", phone=PHONE)
    assert set(r) == {"message_id", "phone", "channel", "expires_at"} and r["channel"] == "whatsapp"
    assert len(db.outbox(PHONE)) == 2
    second = db.last_code(PHONE)
    # The earlier code is dead whatever its digits (two random codes may coincide).
    assert db.q("SELECT invalidated_at IS NOT NULL FROM auth.otp_codes WHERE subject = %s ORDER BY created_at",
                PHONE) == [(True,), (False,)]
    if first != second:
        with raises_auth(401, "invalid-otp"):
            db.rpc("verify_sms_otp", phone=PHONE, otp=first)
    assert db.rpc("verify_sms_otp", phone=PHONE, otp=second)["session"]
    # Unknown phones: same shape, nothing queued, no user created.
    before = db.counts()
    u = db.rpc("resend_sms_otp", phone="+15550404040")
    assert set(u) == set(r)
    after = db.counts()
    assert (after["users"], after["sms_outbox"]) == (before["users"], before["sms_outbox"])


def test_resend_channel_does_not_reveal_registration(db):
    """The resend channel follows the phone's last request, whether or not anything was sent."""
    unknown = "+15550404041"
    db.rpc("send_sms_otp", phone=unknown, create_user=False, channel="whatsapp")
    assert db.rpc("resend_sms_otp", phone=unknown)["channel"] == "whatsapp"
    assert db.outbox(unknown) == []


def test_whatsapp_channel_and_captcha_token_reach_the_outbox(db):
    db.rpc("send_sms_otp", phone=PHONE, channel="whatsapp", captcha_token="tok-123")
    [(_, _, channel, status, captcha)] = db.outbox(PHONE)
    assert (channel, status, captcha) == ("whatsapp", "queued", "tok-123")


def test_outbox_insert_notifies_dispatchers(db):
    """Not preloaded, the sending transaction notifies and names its message; preloaded, the
    wake-up comes once the commit is visible, from the transaction itself while the database's
    recorder starts, else from the recorder for many commits, naming none."""
    listener = db.connect()
    listener.execute("LISTEN pg_otp_auth_outbox")
    preloaded = "pg_otp_auth" in db.one("SHOW shared_preload_libraries")
    for i in range(3):
        sent = db.rpc("send_sms_otp", phone=PHONE)
        notes = list(listener.notifies(timeout=5, stop_after=1))
        assert len(notes) == 1, f"send {i} woke no listener"
        assert notes[0].payload == ("" if preloaded else sent["message_id"])
    listener.close()


def test_a_send_right_after_a_burst_still_wakes_the_dispatcher(db):
    """Preloaded, the recorder sends at most one wake-up per 5 ms, covering every commit since
    its last: a send just after a burst (its wake-up held back by the gap) still gets one."""
    listener = db.connect()
    listener.execute("LISTEN pg_otp_auth_outbox")
    for i in range(19):
        db.rpc("send_sms_otp", phone=f"+1555070{i:04d}")
    burst = list(listener.notifies(timeout=0.5))
    assert 1 <= len(burst) <= 19
    db.rpc("send_sms_otp", phone="+15550700019")
    assert len(list(listener.notifies(timeout=5, stop_after=1))) == 1
    listener.close()


def test_test_numbers_use_fixed_codes_and_send_nothing(db):
    db.setting("test_otp", {PHONE: "424242"})
    sent = db.rpc("send_sms_otp", phone=PHONE)
    assert sent["phone"] == "+1******1010"
    assert db.outbox(PHONE) == []
    assert db.rpc("verify_sms_otp", phone=PHONE, otp="424242")["session"]["user"]["phone"] == PHONE


def test_locale_templates(db):
    db.setting("allowed_locales", ["en", "fr"])
    db.setting("sms_templates", {"fr": "Votre code : {{code}} ({{ttl_minutes}} min)"})
    db.setting("sms_template", "Code {{ code }}")
    db.rpc("signup_sms_otp", phone=PHONE, options={"locale": "fr"})
    db.rpc("send_sms_otp", phone="+15550505050")
    fr = db.outbox(PHONE)[0][1]
    en = db.outbox("+15550505050")[0][1]
    assert re.fullmatch(r"Votre code : \d{6} \(5 min\)", fr), fr
    assert re.fullmatch(r"Code \d{6}", en), en


def test_signup_with_options(db):
    db.setting("allowed_roles", ["authenticated", "editor"])
    db.setting("allowed_redirect_prefixes", ["https://app.example.com"])
    out = db.rpc("signup_sms_otp", phone=PHONE, options={
        "allowedRoles": ["authenticated", "editor"], "defaultRole": "editor", "displayName": "Zoë O'Neil",
        "locale": "en", "metadata": {"ref": "ad"}, "redirectTo": "https://app.example.com/welcome"})
    assert out == "OK"
    row = db.q("SELECT roles, default_role, display_name, metadata, phone_confirmed_at FROM auth.users WHERE phone = %s", PHONE)[0]
    assert row[:4] == (["authenticated", "editor"], "editor", "Zoë O'Neil", {"ref": "ad"}) and row[4] is None
    session = db.rpc("verify_sms_otp", phone=PHONE, otp=db.last_code(PHONE))["session"]
    claims = db.claims_of(session)
    assert claims["role"] == "editor" and session["user"]["display_name"] == "Zoë O'Neil"


def test_signup_of_a_registered_phone_answers_ok_and_changes_nothing(db):
    db.rpc("signup_sms_otp", phone=PHONE, options={"metadata": {"v": 1}})
    before = db.q("SELECT * FROM auth.users")
    outbox = db.outbox()
    assert db.rpc("signup_sms_otp", phone=PHONE, options={"metadata": {"v": 2}}) == "OK"
    assert db.q("SELECT * FROM auth.users") == before
    assert db.outbox() == outbox


def test_disable_signup(db):
    db.setting("disable_signup", True)
    with raises_auth(403, "signup-disabled"):
        db.rpc("signup_sms_otp", phone=PHONE)
    # send_sms_otp does not reveal registration either: same shape, nothing created.
    sent = db.rpc("send_sms_otp", phone=PHONE)
    assert set(sent) == {"message_id", "phone", "channel", "expires_at"}
    assert db.one("SELECT count(*) FROM auth.users") == 0 and db.outbox() == []


def test_hasura_claims(db):
    db.setting("hasura_claims", True)
    claims = db.claims_of(db.sign_in(PHONE))
    h = claims["https://hasura.io/jwt/claims"]
    assert h == {"x-hasura-user-id": claims["sub"], "x-hasura-default-role": "authenticated",
                 "x-hasura-allowed-roles": ["authenticated"]}


def test_jwt_settings_apply(db):
    db.setting("jwt_exp", "15 minutes")
    db.setting("jwt_aud", "my-api")
    db.setting("jwt_issuer", "https://auth.example.com")
    s = db.sign_in(PHONE)
    claims = db.decode(s["access_token"], audience="my-api")
    assert claims["exp"] - claims["iat"] == 900 and s["expires_in"] == 900
    assert claims["iss"] == "https://auth.example.com"


def test_rotated_jwt_secret_signs_new_tokens(db):
    db.q("SELECT auth.set_jwt_secret(%s)", "x" * 40)
    s = db.sign_in(PHONE)
    import jwt as pyjwt
    assert pyjwt.decode(s["access_token"], "x" * 40, algorithms=["HS256"], audience="authenticated")["sub"]
    with pytest.raises(pyjwt.InvalidSignatureError):
        pyjwt.decode(s["access_token"], "y" * 40, algorithms=["HS256"], audience="authenticated")


def test_codes_are_only_judged_in_a_fresh_read_committed_transaction(db):
    """Inside a transaction that already wrote (e.g. sent the code), the attempt worker could not
    see the code, so guesses would go uncounted; in REPEATABLE READ the caller could not see the
    counts. Both are refused before any guess is judged."""
    conn = db.connect()
    with raises_auth(400, "invalid-request"):
        with conn.transaction():
            conn.execute("SELECT auth.send_sms_otp(%s)", (PHONE,))
            conn.execute("SELECT auth.verify_sms_otp(%s, '000000')", (PHONE,))
    db.rpc("send_sms_otp", phone=PHONE)
    code = db.last_code(PHONE)
    with raises_auth(400, "invalid-request"):
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            conn.execute("SELECT auth.verify_sms_otp(%s, %s)", (PHONE, code))
    conn.close()
    assert db.one("SELECT attempts FROM auth.otp_codes WHERE subject = %s AND consumed_at IS NULL", PHONE) == 0
    assert db.rpc("verify_sms_otp", phone=PHONE, otp=code)["session"]


def test_expiry_uses_the_clock_not_the_transaction_start(db):
    db.rpc("send_sms_otp", phone=PHONE)
    code = db.last_code(PHONE)
    conn = db.connect()
    with raises_auth(401, "invalid-otp"):
        with conn.transaction():
            conn.execute("SELECT now()")  # the transaction starts before the code expires
            db.q("UPDATE auth.otp_codes SET expires_at = clock_timestamp() WHERE subject = %s", PHONE)
            conn.execute("SELECT auth.verify_sms_otp(%s, %s)", (PHONE, code))
    conn.close()


def test_an_attempt_that_cannot_be_recorded_fails_closed(db):
    """If the attempt recorder cannot commit a wrong guess (here: the audit table is locked past
    its 5 s lock timeout), the guess gets no verdict: PT503, so an unrecorded guess teaches
    nothing. The right code is recorded in the caller's own transaction, together with what it
    grants: it waits for the lock, and its verdict comes only with its record."""
    db.rpc("send_sms_otp", phone=PHONE)
    code = db.last_code(PHONE)
    wrong = "000000" if code != "000000" else "111111"
    blocker = db.connect()
    blocker.execute("BEGIN")
    blocker.execute("LOCK TABLE auth.audit_log IN EXCLUSIVE MODE")
    with raises_auth(503, "temporarily-unavailable") as exc:
        db.rpc("verify_sms_otp", phone=PHONE, otp=wrong)
    assert exc.value.diag.message_hint.startswith("retry after")
    assert db.one("SELECT attempts FROM auth.otp_codes WHERE subject = %s", PHONE) == 0
    # A right code under a statement timeout shorter than the lock: no verdict, nothing granted.
    with db.connect() as c:
        c.execute("SET statement_timeout = '300ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            db.rpc("verify_sms_otp", phone=PHONE, otp=code, conn=c)
    assert db.one("SELECT count(*) FROM auth.sessions") == 0
    result = {}
    t = threading.Thread(target=lambda: result.update(s=db.rpc("verify_sms_otp", phone=PHONE, otp=code)))
    t.start()
    deadline = time.monotonic() + 30
    while not db.one("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                     "AND query LIKE '%%verify_sms_otp%%'"):
        assert time.monotonic() < deadline, "the right code did not wait for the audit lock"
        time.sleep(0.05)
    assert db.one("SELECT count(*) FROM auth.sessions") == 0
    blocker.execute("ROLLBACK")
    blocker.close()
    t.join(30)
    assert result["s"]["session"]
    assert db.one("SELECT attempts FROM auth.otp_codes WHERE subject = %s", PHONE) == 1
    assert db.one("SELECT count(*) FROM auth.audit_log WHERE event = 'verify_attempt'") == 1


def test_a_right_code_is_consumed_by_its_key_however_many_codes_are_live(db):
    """Codes that are never used stay live until they are purged. A sign-in reads the live-codes
    index for the phone's own codes only: consuming the right code goes by its primary key, not
    through every live code of the install."""
    # Statistics from when the table was empty make a scan of the whole index look free.
    db.q("ANALYZE auth.otp_codes")
    db.q("INSERT INTO auth.otp_codes (purpose, subject, code_hash, expires_at) "
         "SELECT 'signin', '+1555' || lpad(i::text, 7, '0'), '\\x00', now() + interval '5 minutes' "
         "FROM generate_series(1, 5000) i")
    # The library's statements are planned generic from their first execution (db.rs), so the
    # verification's connection, however new, plans with those statistics.
    db.rpc("send_sms_otp", phone=PHONE)
    code = db.last_code(PHONE)
    with db.connect() as conn, conn.transaction():
        out = db.rpc("verify_sms_otp", phone=PHONE, otp=code, conn=conn)
        # Entries of the index this transaction has read.
        read = conn.execute("SELECT pg_stat_get_xact_tuples_returned('auth.otp_codes_live'::regclass)").fetchone()[0]
    assert out["session"]["user"]["phone"] == PHONE
    assert 1 <= read < 50


def test_attempts_without_a_live_code_are_recorded_too(db):
    """Unknown phones take the same recorded path as phones with a pending code, so timing does
    not reveal which phones are registered."""
    with raises_auth(401, "invalid-otp"):
        db.rpc("verify_sms_otp", phone="+15550606099", otp="123456")
    row = db.q("SELECT user_id, phone, detail FROM auth.audit_log WHERE event = 'verify_failed'")
    assert row == [(None, "+15550606099", {"no_live_code": True})]


def test_per_ip_verification_limit(db):
    db.setting("verify_rate_per_ip", 3)
    h = {"x-forwarded-for": "203.0.113.50"}
    for i in range(3):
        with raises_auth(401, "invalid-otp"):
            db.rpc("verify_sms_otp", phone=f"+155506070{i:02d}", otp="123456", headers=h)
    with raises_auth(429, "over-request-rate-limit") as exc:
        db.rpc("verify_sms_otp", phone="+15550607099", otp="123456", headers=h)
    assert exc.value.diag.message_hint.startswith("retry after")
    assert db.one("SELECT count(*) FROM auth.audit_log WHERE host(ip) = '203.0.113.50'") == 3
    with raises_auth(401, "invalid-otp"):
        db.rpc("verify_sms_otp", phone="+15550607099", otp="123456", headers={"x-forwarded-for": "198.51.100.7"})
    # The right code from the address over the limit: refused the same way, its code kept.
    db.rpc("send_sms_otp", phone="+15550607100")
    code = db.last_code("+15550607100")
    with raises_auth(429, "over-request-rate-limit"):
        db.rpc("verify_sms_otp", phone="+15550607100", otp=code, headers=h)
    assert db.one("SELECT attempts FROM auth.otp_codes WHERE subject = '+15550607100' "
                  "AND consumed_at IS NULL") == 0
    assert db.one("SELECT count(*) FROM auth.sessions") == 0
    assert db.rpc("verify_sms_otp", phone="+15550607100", otp=code,
                  headers={"x-forwarded-for": "198.51.100.8"})["session"]


def test_reads_by_index_follow_the_tables_when_they_change(db):
    """The index reads keep each relation's oid and each column's number for the life of the
    connection: a column that moved, and tables dropped and made again, are read right on a
    connection that read them before."""
    db.setting("otp_max_attempts", 2)
    with db.connect() as conn:
        def sign_in(phone):
            db.rpc("send_sms_otp", phone=phone, conn=conn)
            return db.rpc("verify_sms_otp", phone=phone, otp=db.last_code(phone), conn=conn)
        assert sign_in(PHONE)["session"]
        # `attempts` gets another attribute number; a stale one would read the dropped column
        # (null, counted as out of attempts) and refuse every right code.
        db.q("ALTER TABLE auth.otp_codes DROP COLUMN attempts")
        db.q("ALTER TABLE auth.otp_codes ADD COLUMN attempts integer NOT NULL DEFAULT 0")
        assert sign_in(PHONE)["session"]
        db.rpc("send_sms_otp", phone=PHONE, conn=conn)
        code = db.last_code(PHONE)
        for _ in range(2):
            with raises_auth(401, "invalid-otp"):
                db.rpc("verify_sms_otp", phone=PHONE, otp="000000" if code != "000000" else "111111",
                       conn=conn)
        with raises_auth(401, "invalid-otp"):  # out of attempts: read from the moved column
            db.rpc("verify_sms_otp", phone=PHONE, otp=code, conn=conn)
        # Every table made again, with new oids.
        db.q("DROP EXTENSION pg_otp_auth CASCADE")
        db.q("CREATE EXTENSION pg_otp_auth")
        session = sign_in(PHONE)["session"]
        assert db.one("SELECT count(*) FROM auth.sessions") == 1
        assert session["user"]["phone"] == PHONE
