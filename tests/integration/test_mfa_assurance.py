"""A session's assurance level rises only through a factor the user already trusts, and every
credential issued before the rise is replaced (issue: aal1 to aal2 without a second factor)."""

import base64

import psycopg
import pytest

from conftest import raises_auth
from test_mfa import User, oathtool

PLANTED_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


def plant_totp(db, user):
    """An unverified TOTP factor as 0.1.0 could leave one next to a verified factor."""
    secret = base64.b32decode(PLANTED_SECRET)
    return db.one("INSERT INTO auth.mfa_factors (user_id, factor_type, secret) VALUES (%s, 'totp', %s) "
                  "RETURNING id::text", user.claims["sub"], secret)


def verified_totp_count(db, user):
    return db.one("SELECT count(*) FROM auth.mfa_factors WHERE user_id = %s AND factor_type = 'totp' "
                  "AND status = 'verified'", user.claims["sub"])


def test_a_factor_planted_before_mfa_setup_never_raises_the_attackers_session(db):
    """The reported attack: an aal1 session taken before the owner set up MFA enrolls a TOTP
    factor and leaves it unverified; after the owner verifies their own, the planted factor
    must not make the attacker's session aal2."""
    owner = User(db)
    attacker = User(db)  # the same user's aal1 session, e.g. a stolen token
    planted = attacker.enroll_totp()
    owner.activate_totp()
    with raises_auth(401, "not-authenticated"):
        attacker.call("mfa_challenge_and_verify", factor_id=planted["id"], code=oathtool(planted["totp"]["secret"]))
    with raises_auth(401, "invalid-refresh-token"):
        db.rpc("refresh_session", refresh_token=attacker.session["refresh_token"])
    assert db.one("SELECT count(*) FROM auth.mfa_factors WHERE id = %s", planted["id"]) == 0
    assert verified_totp_count(db, owner) == 1
    # The owner's factor is the one sign-in checks, and the owner can still manage it.
    assert [f["status"] for f in owner.call("mfa_list_factors")["all"]] == ["verified"]
    assert len(owner.call("mfa_generate_recovery_codes")) == 10
    revoked = db.one("SELECT revoked_reason FROM auth.sessions WHERE id = %s", attacker.claims["session_id"])
    assert revoked == "mfa_upgrade"


def test_verifying_a_new_factor_beside_a_verified_one_needs_aal2(db):
    db.setting("mfa_signin_requires_totp", False)
    owner = User(db)
    owner.activate_totp()
    planted = plant_totp(db, owner)
    thief = User(db)  # an aal1 session signed in by SMS after MFA was set up
    code = oathtool(PLANTED_SECRET)
    with raises_auth(403, "insufficient-aal"):
        thief.call("mfa_challenge_and_verify", factor_id=planted, code=code)
    with raises_auth(403, "insufficient-aal"):
        thief.call("mfa_challenge", factor_id=planted)
    phone = db.one("INSERT INTO auth.mfa_factors (user_id, factor_type, phone) VALUES (%s, 'phone', '+15552020444') "
                   "RETURNING id::text", owner.claims["sub"])
    before = db.counts()
    with raises_auth(403, "insufficient-aal"):
        thief.call("mfa_challenge", factor_id=phone)
    assert db.counts() == before  # no code was sent to the planted number
    assert db.one("SELECT aal FROM auth.sessions WHERE id = %s", thief.claims["session_id"]) == "aal1"
    # Even an aal2 session cannot verify a second TOTP factor.
    with raises_auth(409, "totp-already-active"):
        owner.call("mfa_challenge_and_verify", factor_id=planted, code=code)
    assert verified_totp_count(db, owner) == 1


def test_the_schema_holds_one_verified_totp_factor_per_user(db):
    owner = User(db)
    owner.activate_totp()
    planted = plant_totp(db, owner)
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.q("UPDATE auth.mfa_factors SET status = 'verified' WHERE id = %s", planted)


def test_completing_setup_removes_the_users_other_unverified_factors(db):
    u = User(db)
    pending_phone = u.call("mfa_enroll", factor_type="phone", phone="+15552020333")
    f = u.activate_totp()
    assert [x["id"] for x in u.call("mfa_list_factors")["all"]] == [f["id"]]
    assert db.one("SELECT count(*) FROM auth.mfa_factors WHERE id = %s", pending_phone["id"]) == 0
    detail = db.one("SELECT detail FROM auth.audit_log WHERE event = 'mfa_verified'")
    assert detail["completed_setup"] is True


def test_the_rise_to_aal2_replaces_every_earlier_credential(db):
    u = User(db)
    aal1_refresh, aal1_claims = u.session["refresh_token"], u.claims
    rotated = db.rpc("refresh_session", refresh_token=aal1_refresh)  # a second aal1 refresh token
    f = u.activate_totp()
    assert u.claims["aal"] == "aal2" and u.claims["session_id"] == aal1_claims["session_id"]
    for stale in (aal1_refresh, rotated["refresh_token"]):
        with raises_auth(401, "invalid-refresh-token"):
            db.rpc("refresh_session", refresh_token=stale)
    # The session itself lives on (no reuse revocation), through the one new refresh token.
    fresh = db.rpc("refresh_session", refresh_token=u.session["refresh_token"])
    assert db.decode(fresh["access_token"])["aal"] == "aal2"
    assert db.one("SELECT revoked_at FROM auth.sessions WHERE id = %s", u.claims["session_id"]) is None
    # An aal1 access token of the raised session is still only an aal1 credential.
    old = dict(role="authenticated", claims=aal1_claims)
    for fn, args in (("mfa_unenroll", {"factor_id": f["id"]}), ("mfa_generate_recovery_codes", {}),
                     ("mfa_enroll", {"factor_type": "phone", "phone": "+15552020555"})):
        with raises_auth(403, "insufficient-aal"):
            db.rpc(fn, **old, **args)
    assert db.rpc("mfa_get_authenticator_assurance_level", **old)["current_level"] == "aal1"
    assert u.call("mfa_get_authenticator_assurance_level")["current_level"] == "aal2"


def test_other_aal1_sessions_end_when_the_user_reaches_aal2(db):
    db.setting("mfa_signin_requires_totp", False)
    u = User(db)
    other = User(db)
    u.activate_totp()
    with raises_auth(401, "not-authenticated"):
        other.call("mfa_list_factors")
    with raises_auth(401, "invalid-refresh-token"):
        db.rpc("refresh_session", refresh_token=other.session["refresh_token"])
    assert db.one("SELECT detail ->> 'sessions_revoked' FROM auth.audit_log WHERE event = 'mfa_verified'") == "1"
    later = User(db)  # signing in after setup (tickets off) gives a live aal1 session
    assert later.call("mfa_list_factors")["totp"] != []
