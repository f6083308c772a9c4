"""Multi-factor authentication: TOTP and phone factors, challenges, aal2, tickets, recovery codes.

TOTP codes come from oathtool (an independent implementation), tokens are decoded with PyJWT,
and QR codes are decoded with zbarimg.
"""

import re
import subprocess
import time

import psycopg
import pytest

from conftest import raises_auth, run_concurrently

PHONE = "+15552020202"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def oathtool(secret_b32, at=None, digits=6):
    args = ["oathtool", "--totp", "-b", "-d", str(digits)]
    if at is not None:
        args += ["-N", f"@{int(at)}"]
    return subprocess.check_output(args + [secret_b32], text=True).strip()


class User:
    """A signed-in user calling the API through PostgREST's `authenticated` role."""

    def __init__(self, db, phone=PHONE):
        self.db = db
        self.phone = phone
        self.session = db.sign_in(phone)
        self.claims = db.claims_of(self.session)

    def call(self, fn, **args):
        return self.db.rpc(fn, role="authenticated", claims=self.claims, **args)

    def adopt(self, session):
        self.session = session
        self.claims = self.db.claims_of(session)

    def enroll_totp(self, **args):
        return self.call("mfa_enroll", factor_type="totp", **args)

    def activate_totp(self):
        f = self.enroll_totp()
        self.adopt(self.call("mfa_challenge_and_verify", factor_id=f["id"], code=oathtool(f["totp"]["secret"])))
        return f


# RFC 4226 Appendix D and RFC 6238 Appendix B, through the SQL functions.

def test_hotp_rfc4226_vectors(db):
    expected = ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489"]
    got = [db.one("SELECT auth.hotp(convert_to('12345678901234567890', 'UTF8'), %s)", i) for i in range(10)]
    assert got == expected


@pytest.mark.parametrize("t,sha1,sha256,sha512", [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
])
def test_totp_rfc6238_vectors(db, t, sha1, sha256, sha512):
    import base64
    seeds = {"sha1": b"12345678901234567890", "sha256": b"12345678901234567890123456789012",
             "sha512": b"1234567890123456789012345678901234567890123456789012345678901234"}
    for algo, want in (("sha1", sha1), ("sha256", sha256), ("sha512", sha512)):
        secret = base64.b32encode(seeds[algo]).decode().lower().rstrip("=")  # case-insensitive, no padding
        got = db.one("SELECT auth.totp(%s, to_timestamp(%s), 8, 30, %s)", secret, t, algo)
        assert got == want, (algo, t)


def test_sql_totp_matches_oathtool_now(db):
    secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    t = int(time.time())
    assert db.one("SELECT auth.totp(%s, to_timestamp(%s))", secret, t) == oathtool(secret, t)


@pytest.mark.parametrize("sql", [
    "SELECT auth.hotp('\\x00'::bytea, -1)", "SELECT auth.hotp('\\x00'::bytea, 0, 5)",
    "SELECT auth.hotp('\\x00'::bytea, 0, 6, 'md5')", "SELECT auth.hotp(''::bytea, 0)",
    "SELECT auth.hotp(NULL, 0)", "SELECT auth.totp('not base32!')", "SELECT auth.totp('JBSWY3DP', now(), 6, 0)",
    "SELECT auth.totp('JBSWY3DP', NULL)",
])
def test_hotp_totp_bad_input(db, sql):
    with raises_auth(400, "invalid-request"):
        db.q(sql)


# Enrollment

def test_totp_enrollment_shape_uri_and_qr_code(db, tmp_path):
    u = User(db)
    db.setting("mfa_totp_issuer", "Acme Co")
    f = u.enroll_totp(friendly_name="Work phone")
    assert set(f) == {"id", "type", "friendly_name", "totp"} and f["type"] == "totp"
    assert re.fullmatch(UUID, f["id"]) and f["friendly_name"] == "Work phone"
    secret, uri, qr = f["totp"]["secret"], f["totp"]["uri"], f["totp"]["qr_code"]
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)  # 160 bits
    assert uri == (f"otpauth://totp/Acme%20Co:%2B15552020202?secret={secret}&issuer=Acme%20Co"
                   "&algorithm=SHA1&digits=6&period=30")
    assert qr.startswith("<svg")
    (tmp_path / "qr.svg").write_text(qr)
    subprocess.run(["rsvg-convert", "-w", "400", "-b", "white", "-o", str(tmp_path / "qr.png"), str(tmp_path / "qr.svg")], check=True)
    decoded = subprocess.check_output(["zbarimg", "--quiet", "--raw", str(tmp_path / "qr.png")], text=True).strip()
    assert decoded == uri
    listed = u.call("mfa_list_factors")
    assert [x["status"] for x in listed["all"]] == ["unverified"] and listed["totp"] == [] and listed["phone"] == []
    assert set(listed["all"][0]) == {"id", "type", "friendly_name", "status", "created_at", "updated_at"}
    assert secret not in str(listed)
    assert db.one("SELECT count(*) FROM auth.audit_log WHERE event = 'mfa_enrolled'") == 1


def test_issuer_argument_overrides_the_setting(db):
    f = User(db).enroll_totp(issuer="My App")
    assert f["totp"]["uri"].startswith("otpauth://totp/My%20App:%2B15552020202?")
    assert "&issuer=My%20App&" in f["totp"]["uri"]


def test_phone_enrollment_shape(db):
    f = User(db).call("mfa_enroll", factor_type="phone", friendly_name="Backup", phone="+44 7911 123456")
    assert set(f) == {"id", "type", "friendly_name", "phone"}
    assert (f["type"], f["friendly_name"], f["phone"]) == ("phone", "Backup", "+447911123456")


def test_factor_limits_names_and_stale_enrollments(db):
    u = User(db)
    db.setting("mfa_max_factors", 3)
    u.call("mfa_enroll", factor_type="phone", phone="+15552020301", friendly_name="a")
    with raises_auth(409, "factor-name-conflict"):
        u.call("mfa_enroll", factor_type="phone", phone="+15552020302", friendly_name="a")
    u.call("mfa_enroll", factor_type="phone", phone="+15552020302", friendly_name="b")
    u.call("mfa_enroll", factor_type="phone", phone="+15552020303")
    with raises_auth(409, "too-many-factors"):
        u.call("mfa_enroll", factor_type="phone", phone="+15552020304")
    # An unverified factor older than a day is replaced.
    db.q("UPDATE auth.mfa_factors SET created_at = now() - interval '25 hours' WHERE friendly_name = 'a'")
    u.call("mfa_enroll", factor_type="phone", phone="+15552020305", friendly_name="a")
    assert db.one("SELECT count(*) FROM auth.mfa_factors") == 3


def test_default_limit_is_ten_factors(db):
    u = User(db)
    for i in range(10):
        u.call("mfa_enroll", factor_type="phone", phone=f"+155520204{i:02d}")
    with raises_auth(409, "too-many-factors"):
        u.call("mfa_enroll", factor_type="phone", phone="+15552020499")


def test_adding_a_factor_next_to_a_verified_one_needs_aal2(db):
    """Otherwise a stolen aal1 session could enroll its own factor and verify its way to aal2."""
    u = User(db)
    u.activate_totp()
    db.setting("mfa_signin_requires_totp", False)
    thief = User(db)  # an aal1 session of the same user
    with raises_auth(403, "insufficient-aal"):
        thief.call("mfa_enroll", factor_type="phone", phone="+15552020777")
    u.call("mfa_enroll", factor_type="phone", phone="+15552020777")


def test_an_sms_sign_in_names_the_users_verified_totp_factor(db):
    """The sign-in's user object says whether a verified TOTP factor is active (read by the
    index that allows one per user): not for a factor still unverified, nor for another user's."""
    db.setting("mfa_signin_requires_totp", False)
    u = User(db)
    f = u.enroll_totp()
    assert User(db).session["user"]["active_mfa_type"] is None
    u.adopt(u.call("mfa_challenge_and_verify", factor_id=f["id"], code=oathtool(f["totp"]["secret"])))
    again = User(db)
    assert again.session["user"]["active_mfa_type"] == "totp"
    assert again.db.decode(again.session["access_token"])["aal"] == "aal1"
    assert User(db, "+15552020779").session["user"]["active_mfa_type"] is None
    # Required at sign-in, the factor turns the SMS step into a ticket instead of a session.
    db.setting("mfa_signin_requires_totp", True)
    granted = sms_step(db)
    assert granted["session"] is None and granted["mfa"]["ticket"].startswith("mfaTotp:")


def test_mfa_verification_is_refused_inside_a_transaction_that_wrote(db):
    u = User(db)
    f = u.enroll_totp()
    conn = db.connect()
    with raises_auth(400, "invalid-request"):
        with conn.transaction():
            conn.execute("SELECT auth.send_sms_otp('+15552020778')")
            db.rpc("mfa_challenge_and_verify", role="authenticated", claims=u.claims, conn=conn,
                   factor_id=f["id"], code="000000")
    conn.close()


def test_only_one_active_totp(db):
    u = User(db)
    u.activate_totp()
    with raises_auth(409, "totp-already-active"):
        u.enroll_totp()


# Verification

def test_verify_with_an_independent_code_gives_an_aal2_session(db):
    u = User(db)
    f = u.enroll_totp()
    ch = u.call("mfa_challenge", factor_id=f["id"])
    assert set(ch) == {"id", "type", "expires_at"} and ch["type"] == "totp"
    s = u.call("mfa_verify", factor_id=f["id"], challenge_id=ch["id"], code=oathtool(f["totp"]["secret"]))
    assert set(s) >= {"access_token", "refresh_token", "user", "expires_in"}
    claims = db.decode(s["access_token"])
    assert claims["aal"] == "aal2" and claims["session_id"] == u.claims["session_id"]
    assert [a["method"] for a in claims["amr"]] == ["sms", "totp"]
    assert s["user"]["active_mfa_type"] == "totp"
    assert u.call("mfa_list_factors")["totp"][0]["status"] == "verified"
    # Refreshing keeps the session's aal2.
    assert db.decode(db.rpc("refresh_session", refresh_token=s["refresh_token"])["access_token"])["aal"] == "aal2"


def test_challenge_expires_and_is_single_use(db):
    u = User(db)
    f = u.enroll_totp()
    ch = u.call("mfa_challenge", factor_id=f["id"])
    db.q("UPDATE auth.mfa_challenges SET expires_at = now() - interval '1 second'")
    with raises_auth(401, "invalid-totp"):
        u.call("mfa_verify", factor_id=f["id"], challenge_id=ch["id"], code=oathtool(f["totp"]["secret"]))
    ch = u.call("mfa_challenge", factor_id=f["id"])
    u.call("mfa_verify", factor_id=f["id"], challenge_id=ch["id"], code=oathtool(f["totp"]["secret"]))
    with raises_auth(401, "invalid-totp"):
        u.call("mfa_verify", factor_id=f["id"], challenge_id=ch["id"], code=oathtool(f["totp"]["secret"], time.time() + 30))


def test_replayed_totp_and_earlier_steps_are_refused(db):
    u = User(db)
    f = u.enroll_totp()
    secret = f["totp"]["secret"]
    now = time.time()
    code_now, code_next = oathtool(secret, now), oathtool(secret, now + 30)
    u.call("mfa_challenge_and_verify", factor_id=f["id"], code=code_now)
    with raises_auth(401, "invalid-totp"):
        u.call("mfa_challenge_and_verify", factor_id=f["id"], code=code_now)
    u.call("mfa_challenge_and_verify", factor_id=f["id"], code=code_next)
    with raises_auth(401, "invalid-totp"):
        u.call("mfa_challenge_and_verify", factor_id=f["id"], code=code_now)
    assert db.one("SELECT count(*) FROM auth.audit_log WHERE event = 'mfa_verify_failed'") == 2


def test_concurrent_verification_of_one_challenge_has_one_winner(db):
    u = User(db)
    f = u.enroll_totp()
    ch = u.call("mfa_challenge", factor_id=f["id"])
    code = oathtool(f["totp"]["secret"])
    results = run_concurrently(db, 6, lambda conn: db.rpc(
        "mfa_verify", role="authenticated", claims=u.claims, conn=conn,
        factor_id=f["id"], challenge_id=ch["id"], code=code))
    assert sorted(r[0] if r[0] == "ok" else r[1] for r in results) == ["invalid-totp"] * 5 + ["ok"]


def test_wrong_codes_kill_the_challenge(db):
    u = User(db)
    f = u.enroll_totp()
    ch = u.call("mfa_challenge", factor_id=f["id"])
    good = oathtool(f["totp"]["secret"])
    wrong = "000000" if good != "000000" else "111111"
    for i in range(5):
        with raises_auth(401, "invalid-totp"):
            u.call("mfa_verify", factor_id=f["id"], challenge_id=ch["id"], code=wrong)
        assert db.one("SELECT attempts FROM auth.mfa_challenges WHERE id = %s", ch["id"]) == i + 1
    with raises_auth(401, "invalid-totp"):
        u.call("mfa_verify", factor_id=f["id"], challenge_id=ch["id"], code=good)
    assert db.one("SELECT status FROM auth.mfa_factors") == "unverified"


def test_fresh_challenges_do_not_reset_the_per_factor_limit(db):
    """mfa_challenge_and_verify makes a new challenge per call; guesses are still bounded."""
    u = User(db)
    db.setting("mfa_failure_limit", 3)
    f = u.enroll_totp()
    good = oathtool(f["totp"]["secret"])
    wrong = "000000" if good != "000000" else "111111"
    for _ in range(3):
        with raises_auth(401, "invalid-totp"):
            u.call("mfa_challenge_and_verify", factor_id=f["id"], code=wrong)
    with raises_auth(429, "too-many-attempts") as exc:
        u.call("mfa_challenge_and_verify", factor_id=f["id"], code=good)
    assert re.fullmatch(r"retry after \d+ seconds", exc.value.diag.message_hint)
    ch = u.call("mfa_challenge", factor_id=f["id"])
    with raises_auth(429, "too-many-attempts"):
        u.call("mfa_verify", factor_id=f["id"], challenge_id=ch["id"], code=good)
    rows = db.q("SELECT detail->>'factor_id' FROM auth.audit_log WHERE event = 'mfa_verify_failed'")
    assert rows == [(f["id"],)] * 3
    # Once the failures age out of the window, the factor works again.
    db.q("UPDATE auth.audit_log SET created_at = created_at - interval '16 minutes'")
    u.call("mfa_verify", factor_id=f["id"], challenge_id=ch["id"], code=good)


def test_phone_factor_challenge_goes_through_the_outbox(db):
    u = User(db)
    f = u.call("mfa_enroll", factor_type="phone", phone="+15552020999")
    ch = u.call("mfa_challenge", factor_id=f["id"], channel="whatsapp")
    assert ch["type"] == "phone"
    [(_, body, channel, status, _)] = db.outbox("+15552020999")
    assert channel == "whatsapp" and status == "queued"
    code = re.search(r"\d{6}", body).group(0)
    assert db.one("SELECT count(*) FROM auth.mfa_challenges WHERE position(convert_to(%s, 'UTF8') IN code_hash) > 0", code) == 0
    wrong = "000000" if code != "000000" else "111111"
    with raises_auth(401, "invalid-otp"):
        u.call("mfa_verify", factor_id=f["id"], challenge_id=ch["id"], code=wrong)
    s = u.call("mfa_verify", factor_id=f["id"], challenge_id=ch["id"], code=code)
    claims = db.decode(s["access_token"])
    assert claims["aal"] == "aal2" and [a["method"] for a in claims["amr"]] == ["sms", "mfa/phone"]
    with raises_auth(400, "invalid-request"):
        u.call("mfa_challenge_and_verify", factor_id=f["id"], code=code)


def test_phone_challenges_obey_the_cooldown(db):
    u = User(db)
    f = u.call("mfa_enroll", factor_type="phone", phone="+15552020998")
    db.q("SELECT auth.reset_setting('resend_cooldown')")
    u.call("mfa_challenge", factor_id=f["id"])
    with raises_auth(429, "over-sms-send-rate-limit"):
        u.call("mfa_challenge", factor_id=f["id"])


# Unenroll and assurance levels

def test_unenroll_rules(db):
    u = User(db)
    pending = u.call("mfa_enroll", factor_type="phone", phone="+15552020997")
    assert u.call("mfa_unenroll", factor_id=pending["id"]) == {"id": pending["id"]}
    db.setting("mfa_signin_requires_totp", False)
    f = u.activate_totp()
    aal1 = User(db)  # a second, aal1 session of the same user
    with raises_auth(403, "insufficient-aal"):
        aal1.call("mfa_unenroll", factor_id=f["id"])
    other = User(db, "+15552029999")
    with raises_auth(404, "mfa-factor-not-found"):
        other.call("mfa_unenroll", factor_id=f["id"])
    assert u.call("mfa_unenroll", factor_id=f["id"]) == {"id": f["id"]}
    assert u.call("mfa_list_factors") == {"all": [], "totp": [], "phone": []}
    assert db.one("SELECT count(*) FROM auth.audit_log WHERE event = 'mfa_unenrolled'") == 2


def test_assurance_levels(db):
    u = User(db)
    lvl = u.call("mfa_get_authenticator_assurance_level")
    assert (lvl["current_level"], lvl["next_level"]) == ("aal1", "aal1")
    assert [m["method"] for m in lvl["current_authentication_methods"]] == ["sms"]
    db.setting("mfa_signin_requires_totp", False)
    u.activate_totp()
    lvl = u.call("mfa_get_authenticator_assurance_level")
    assert (lvl["current_level"], lvl["next_level"]) == ("aal2", "aal2")
    assert [m["method"] for m in lvl["current_authentication_methods"]] == ["sms", "totp"]
    fresh = User(db)
    lvl = fresh.call("mfa_get_authenticator_assurance_level")
    assert (lvl["current_level"], lvl["next_level"]) == ("aal1", "aal2")


# Sign-in with a second factor

def sms_step(db, phone=PHONE):
    db.rpc("send_sms_otp", phone=phone)
    return db.rpc("verify_sms_otp", phone=phone, otp=db.last_code(phone))


def test_signin_with_totp_ticket(db):
    u = User(db)
    f = u.activate_totp()
    first = sms_step(db)
    assert first["session"] is None
    ticket = first["mfa"]["ticket"]
    assert re.fullmatch(f"mfaTotp:{UUID}", ticket)
    assert db.one("SELECT count(*) FROM auth.mfa_tickets WHERE ticket_hash = convert_to(%s, 'UTF8')", ticket) == 0
    code = oathtool(f["totp"]["secret"], time.time() + 30)  # the current step was spent enrolling
    out = db.rpc("signin_mfa_totp", ticket=ticket, otp=code)
    claims = db.claims_of(out["session"])
    assert out["mfa"] is None and claims["aal"] == "aal2"
    assert [a["method"] for a in claims["amr"]] == ["sms", "totp"]
    with raises_auth(401, "invalid-ticket"):
        db.rpc("signin_mfa_totp", ticket=ticket, otp=oathtool(f["totp"]["secret"], time.time() + 30))


def test_ticket_switch_off(db):
    u = User(db)
    u.activate_totp()
    db.setting("mfa_signin_requires_totp", False)
    s = sms_step(db)["session"]
    assert db.claims_of(s)["aal"] == "aal1"


def test_ticket_expiry_and_attempt_limit(db):
    u = User(db)
    f = u.activate_totp()
    ticket = sms_step(db)["mfa"]["ticket"]
    db.q("UPDATE auth.mfa_tickets SET expires_at = now() - interval '1 second'")
    with raises_auth(401, "invalid-ticket"):
        db.rpc("signin_mfa_totp", ticket=ticket, otp=oathtool(f["totp"]["secret"], time.time() + 30))
    db.setting("mfa_max_attempts", 2)
    ticket = sms_step(db)["mfa"]["ticket"]
    good = oathtool(f["totp"]["secret"], time.time() + 30)
    wrong = "000000" if good != "000000" else "111111"
    for _ in range(2):
        with raises_auth(401, "invalid-totp"):
            db.rpc("signin_mfa_totp", ticket=ticket, otp=wrong)
    with raises_auth(401, "invalid-ticket"):
        db.rpc("signin_mfa_totp", ticket=ticket, otp=good)
    assert db.one("SELECT attempts FROM auth.mfa_tickets ORDER BY created_at DESC LIMIT 1") == 2
    with raises_auth(401, "invalid-ticket"):
        db.rpc("signin_mfa_totp", ticket="mfaTotp:00000000-0000-4000-8000-000000000000", otp=good)


def test_recovery_codes(db):
    u = User(db)
    with raises_auth(403, "insufficient-aal"):
        u.call("mfa_generate_recovery_codes")
    u.activate_totp()
    codes = u.call("mfa_generate_recovery_codes")
    assert len(codes) == 10 and len(set(codes)) == 10
    assert all(re.fullmatch(r"[a-z2-7]{5}-[a-z2-7]{5}", c) for c in codes)
    assert db.one("SELECT count(*) FROM auth.mfa_recovery_codes WHERE position(convert_to(%s, 'UTF8') IN code_hash) > 0", codes[0].replace("-", "")) == 0

    ticket = sms_step(db)["mfa"]["ticket"]
    out = db.rpc("signin_mfa_recovery_code", ticket=ticket, code=codes[0].upper())
    claims = db.claims_of(out["session"])
    assert claims["aal"] == "aal2" and [a["method"] for a in claims["amr"]] == ["sms", "recovery"]
    # Single use.
    ticket = sms_step(db)["mfa"]["ticket"]
    with raises_auth(401, "invalid-recovery-code"):
        db.rpc("signin_mfa_recovery_code", ticket=ticket, code=codes[0])
    assert db.one("SELECT attempts FROM auth.mfa_tickets ORDER BY created_at DESC LIMIT 1") == 1
    db.rpc("signin_mfa_recovery_code", ticket=ticket, code=codes[1])
    # A new set replaces the old one.
    u.adopt(out["session"])
    new = u.call("mfa_generate_recovery_codes")
    ticket = sms_step(db)["mfa"]["ticket"]
    with raises_auth(401, "invalid-recovery-code"):
        db.rpc("signin_mfa_recovery_code", ticket=ticket, code=codes[2])
    db.rpc("signin_mfa_recovery_code", ticket=ticket, code=new[0])


# Bad input and authentication

MFA_CALLS = [
    ("mfa_enroll", dict(factor_type="totp")),
    ("mfa_challenge", dict(factor_id="00000000-0000-4000-8000-000000000000")),
    ("mfa_verify", dict(factor_id="00000000-0000-4000-8000-000000000000", challenge_id="00000000-0000-4000-8000-000000000000", code="123456")),
    ("mfa_challenge_and_verify", dict(factor_id="00000000-0000-4000-8000-000000000000", code="123456")),
    ("mfa_unenroll", dict(factor_id="00000000-0000-4000-8000-000000000000")),
    ("mfa_list_factors", dict()),
    ("mfa_get_authenticator_assurance_level", dict()),
    ("mfa_generate_recovery_codes", dict()),
]


@pytest.mark.parametrize("fn,args", MFA_CALLS, ids=[c[0] for c in MFA_CALLS])
def test_mfa_calls_need_a_session(db, fn, args):
    with raises_auth(401, "not-authenticated"):
        db.rpc(fn, role="anon", **args)


def bad_cases():
    z = "00000000-0000-4000-8000-000000000000"
    return [
        ("mfa_enroll", dict(factor_type=None), 400, "invalid-request"),
        ("mfa_enroll", dict(factor_type="webauthn"), 400, "mfa-type-not-found"),
        ("mfa_enroll", dict(factor_type="totp", friendly_name=""), 400, "invalid-request"),
        ("mfa_enroll", dict(factor_type="totp", friendly_name="x" * 65), 400, "invalid-request"),
        ("mfa_enroll", dict(factor_type="totp", issuer="a:b"), 400, "invalid-request"),
        ("mfa_enroll", dict(factor_type="totp", phone="+15550000000"), 400, "invalid-request"),
        ("mfa_enroll", dict(factor_type="phone"), 400, "invalid-request"),
        ("mfa_enroll", dict(factor_type="phone", phone="555"), 400, "invalid-phone"),
        ("mfa_enroll", dict(factor_type="phone", phone="+15550000000", issuer="x"), 400, "invalid-request"),
        ("mfa_challenge", dict(factor_id=None), 400, "invalid-request"),
        ("mfa_challenge", dict(factor_id=z), 404, "mfa-factor-not-found"),
        ("mfa_challenge", dict(factor_id="FACTOR", channel="fax"), 400, "invalid-request"),
        ("mfa_challenge", dict(factor_id="FACTOR", channel=None), 400, "invalid-request"),
        ("mfa_verify", dict(factor_id=None, challenge_id=z, code="123456"), 400, "invalid-request"),
        ("mfa_verify", dict(factor_id="FACTOR", challenge_id=None, code="123456"), 400, "invalid-request"),
        ("mfa_verify", dict(factor_id="FACTOR", challenge_id=z, code=None), 400, "invalid-request"),
        ("mfa_verify", dict(factor_id="FACTOR", challenge_id=z, code="12345a"), 400, "invalid-request"),
        ("mfa_verify", dict(factor_id="FACTOR", challenge_id=z, code="1234567"), 400, "invalid-request"),
        ("mfa_verify", dict(factor_id="FACTOR", challenge_id=z, code="123456"), 404, "mfa-challenge-not-found"),
        ("mfa_verify", dict(factor_id=z, challenge_id=z, code="123456"), 404, "mfa-factor-not-found"),
        ("mfa_challenge_and_verify", dict(factor_id="FACTOR", code=None), 400, "invalid-request"),
        ("mfa_challenge_and_verify", dict(factor_id="FACTOR", code="abc"), 400, "invalid-request"),
        ("mfa_unenroll", dict(factor_id=None), 400, "invalid-request"),
        ("mfa_unenroll", dict(factor_id=z), 404, "mfa-factor-not-found"),
    ]


@pytest.mark.parametrize("fn,args,status,code", bad_cases(), ids=[f"{c[0]}-{i}" for i, c in enumerate(bad_cases())])
def test_mfa_bad_input_writes_nothing(db, fn, args, status, code):
    u = User(db)
    f = u.enroll_totp()
    args = {k: (f["id"] if v == "FACTOR" else v) for k, v in args.items()}
    before = db.counts()
    with raises_auth(status, code):
        u.call(fn, **args)
    assert db.counts() == before


@pytest.mark.parametrize("fn,args,status,code", [
    ("signin_mfa_totp", dict(ticket=None, otp="123456"), 400, "invalid-request"),
    ("signin_mfa_totp", dict(ticket="TICKET", otp=None), 400, "invalid-request"),
    ("signin_mfa_totp", dict(ticket="nonsense", otp="123456"), 401, "invalid-ticket"),
    ("signin_mfa_totp", dict(ticket="TICKET", otp="12x456"), 400, "invalid-request"),
    ("signin_mfa_recovery_code", dict(ticket="TICKET", code=None), 400, "invalid-request"),
    ("signin_mfa_recovery_code", dict(ticket="TICKET", code="short"), 400, "invalid-request"),
    ("signin_mfa_recovery_code", dict(ticket=None, code="abcde-abcde"), 400, "invalid-request"),
    ("signin_mfa_recovery_code", dict(ticket="mfaTotp:nonsense", code="abcde-abcde"), 401, "invalid-ticket"),
])
def test_ticket_bad_input_writes_nothing(db, fn, args, status, code):
    User(db).activate_totp()
    ticket = sms_step(db)["mfa"]["ticket"]
    args = {k: (ticket if v == "TICKET" else v) for k, v in args.items()}
    before = db.counts()
    with raises_auth(status, code):
        db.rpc(fn, **args)
    assert db.counts() == before


def test_totp_secret_is_not_readable_by_clients(db):
    User(db).enroll_totp()
    conn = db.connect()
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with conn.transaction():
            conn.execute("SET LOCAL role authenticated")
            conn.execute("SELECT secret FROM auth.mfa_factors")
    conn.close()
