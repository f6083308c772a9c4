"""The administrator's user functions (issue 9): create, get, list, update (with bans), delete
(hard and soft), factors, sign-out; who may call them and what they audit."""

import json
import uuid

import psycopg
import pytest
from conftest import raises_auth

PHONE = "+15550600001"


def admin(db, fn, **args):
    """As the extension owner, in SQL."""
    named = ", ".join(f"{k} => %s" for k in args)
    vals = [json.dumps(v) if isinstance(v, dict) else v for v in args.values()]
    return db.one(f"SELECT auth.{fn}({named})", *vals)


@pytest.fixture
def service_role(db):
    """A PostgREST service role made an administrator with auth.grant_admin."""
    db.q("DO $$ BEGIN CREATE ROLE service_role NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    db.q("SELECT auth.grant_admin('service_role')")
    yield "service_role"
    db.q("SELECT auth.revoke_admin('service_role')")


def test_create_get_and_list_users(db):
    db.setting("allowed_roles", ["authenticated", "editor"])
    u = admin(db, "admin_create_user", phone="+44 7911 123456", phone_confirmed=True, display_name="Ana",
              locale="en", metadata={"plan": "pro"})
    assert u["phone"] == "+447911123456" and u["phone_verified"] is True and u["display_name"] == "Ana"
    assert u["metadata"] == {"plan": "pro"} and u["roles"] == ["authenticated", "editor"] and u["default_role"] == "authenticated"
    assert u["disabled"] is False and u["banned_until"] is None and u["deleted_at"] is None
    assert admin(db, "admin_get_user", user_id=u["id"]) == u
    # The created user signs in with the number like anyone else.
    assert db.sign_in("+447911123456")["user"]["id"] == u["id"]

    with raises_auth(409, "user-already-exists"):
        admin(db, "admin_create_user", phone="+447911123456")
    with raises_auth(400, "default-role-must-be-in-allowed-roles"):
        admin(db, "admin_create_user", phone="+15550600009", roles=["editor"])
    r = admin(db, "admin_create_user", phone="+15550600009", roles=["editor"], default_role="editor")
    assert r["roles"] == ["editor"] and r["phone_verified"] is False
    with raises_auth(404, "user-not-found"):
        admin(db, "admin_get_user", user_id=str(uuid.uuid4()))

    for i in range(5):
        admin(db, "admin_create_user", phone=f"+4420700000{i:02d}")
    page1 = admin(db, "admin_list_users", page=1, per_page=3)
    page2 = admin(db, "admin_list_users", page=2, per_page=3)
    page3 = admin(db, "admin_list_users", page=3, per_page=3)
    assert page1["total"] == page2["total"] == 7
    ids = [x["id"] for p in (page1, page2, page3) for x in p["users"]]
    assert len(ids) == len(set(ids)) == 7  # stable order: every user once
    assert admin(db, "admin_list_users", page=1, per_page=3) == page1
    london = admin(db, "admin_list_users", phone_prefix="+44207")
    assert london["total"] == 5 and all(x["phone"].startswith("+44207") for x in london["users"])
    with raises_auth(400, "invalid-request") as e:
        admin(db, "admin_list_users", per_page=1001)
    assert "per_page" in e.value.diag.message_primary
    with raises_auth(400, "invalid-request"):
        admin(db, "admin_list_users", page=0)
    with raises_auth(400, "invalid-request"):
        admin(db, "admin_list_users", phone_prefix="44'--")


def test_update_user_applies_all_or_nothing(db):
    db.setting("allowed_roles", ["authenticated", "user", "editor"])
    s = db.sign_in(PHONE)
    uid = s["user"]["id"]
    u = admin(db, "admin_update_user", user_id=uid,
              attributes={"display_name": "Bo", "locale": "en", "metadata": {"tier": 2},
                          "roles": ["user", "editor"], "default_role": "editor"})
    assert (u["display_name"], u["metadata"], u["roles"], u["default_role"]) == ("Bo", {"tier": 2}, ["user", "editor"], "editor")
    # New tokens carry the new roles.
    assert db.claims_of(db.sign_in(PHONE))["role"] == "editor"

    snapshot = admin(db, "admin_get_user", user_id=uid)
    before = db.counts()
    for attrs, status, code, field in [
        ({"display_name": "Ok", "locale": "zz"}, 400, "locale-not-allowed", "locale"),
        ({"metadata": "nope"}, 400, "invalid-request", "metadata"),
        ({"roles": ["user"]}, 400, "default-role-must-be-in-allowed-roles", "default_role"),
        ({"ban_duration": "forever"}, 400, "invalid-request", "ban_duration"),
        ({"phone_confirmed": "yes"}, 400, "invalid-request", "phone_confirmed"),
        ({"favourite_colour": "red"}, 400, "invalid-request", "favourite_colour"),
        ({"phone": "12"}, 400, "invalid-phone", "phone"),
        # Roles come from allowed_roles only: no user minted to act as the service role.
        ({"roles": ["user", "service_role"]}, 400, "role-not-allowed", "roles"),
        ({"default_role": "postgres"}, 400, "role-not-allowed", "default_role"),
    ]:
        with raises_auth(status, code) as e:
            admin(db, "admin_update_user", user_id=uid, attributes=attrs)
        assert field in e.value.diag.message_primary
    assert db.counts() == before
    assert admin(db, "admin_get_user", user_id=uid) == snapshot
    with raises_auth(404, "user-not-found"):
        admin(db, "admin_update_user", user_id=str(uuid.uuid4()), attributes={"display_name": "X"})

    # A new phone: unconfirmed unless said so, and not one another user has.
    db.sign_in("+15550600002")
    with raises_auth(409, "user-already-exists"):
        admin(db, "admin_update_user", user_id=uid, attributes={"phone": "+15550600002"})
    u = admin(db, "admin_update_user", user_id=uid, attributes={"phone": "+15550600003", "phone_confirmed": True})
    assert u["phone"] == "+15550600003" and u["phone_verified"] is True
    assert db.sign_in("+15550600003")["user"]["id"] == uid


def test_a_ban_kills_sessions_at_once_and_ends_after_its_duration(db):
    s = db.sign_in(PHONE)
    uid = s["user"]["id"]
    db.rpc("send_sms_otp", phone=PHONE)
    pending = db.last_code(PHONE)  # a code sent before the ban
    u = admin(db, "admin_update_user", user_id=uid, attributes={"ban_duration": "7 days"})
    assert u["banned_until"] is not None
    assert db.one("SELECT banned_until - now() BETWEEN interval '6 days 23 hours' AND interval '7 days' "
                  "FROM auth.users WHERE id = %s", uid)
    # Dead at once: the session, its refresh token, and the access token's claims.
    assert db.one("SELECT count(*) FROM auth.sessions WHERE user_id = %s AND revoked_at IS NULL", uid) == 0
    assert db.one("SELECT count(*) FROM auth.refresh_tokens r JOIN auth.sessions x ON x.id = r.session_id "
                  "WHERE x.user_id = %s", uid) == 0
    with raises_auth(401, "invalid-refresh-token"):
        db.rpc("refresh_session", refresh_token=s["refresh_token"])
    with raises_auth(401, "not-authenticated"):
        db.as_user(s, "get_user")
    with raises_auth(403, "disabled-user"):
        db.rpc("verify_sms_otp", phone=PHONE, otp=pending)
    # While banned, a code request is answered as usual and nothing is sent.
    before = db.one("SELECT count(*) FROM auth.sms_outbox WHERE phone = %s", PHONE)
    db.rpc("send_sms_otp", phone=PHONE)
    assert db.one("SELECT count(*) FROM auth.sms_outbox WHERE phone = %s", PHONE) == before

    # The week passes (moved, not waited for): signing in works again.
    db.q("UPDATE auth.users SET banned_until = now() - interval '1 second' WHERE id = %s", uid)
    assert db.sign_in(PHONE)["user"]["id"] == uid

    # none lifts a ban early.
    db.rpc("send_sms_otp", phone=PHONE)
    pending = db.last_code(PHONE)
    admin(db, "admin_update_user", user_id=uid, attributes={"ban_duration": "1 hour"})
    with raises_auth(403, "disabled-user"):
        db.rpc("verify_sms_otp", phone=PHONE, otp=pending)
    u = admin(db, "admin_update_user", user_id=uid, attributes={"ban_duration": "none"})
    assert u["banned_until"] is None
    assert db.rpc("verify_sms_otp", phone=PHONE, otp=pending)["session"]["user"]["id"] == uid
    events = [r[0] for r in db.q("SELECT detail->'fields' FROM auth.audit_log WHERE event = 'admin_user_updated' "
                                 "AND user_id = %s ORDER BY created_at", uid)]
    assert events == [["ban_duration"]] * 3


def user_rows(db, uid, phone):
    """Every row of any auth table that names the user's id or phone, in any column."""
    found = {}
    for (table,) in db.q("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                         "WHERE n.nspname = 'auth' AND c.relkind = 'r'"):
        n = db.one(f"SELECT count(*) FROM auth.{table} t WHERE strpos(to_jsonb(t)::text, %s) > 0 "
                   f"OR strpos(to_jsonb(t)::text, %s) > 0", uid, phone)
        if n:
            found[table] = n
    return found


def test_hard_delete_leaves_no_row_of_the_user(db):
    s = db.sign_in(PHONE)
    uid = s["user"]["id"]
    db.as_user(s, "mfa_enroll", factor_type="phone", phone="+15550600077", friendly_name="backup")
    db.rpc("send_sms_otp", phone=PHONE)  # a queued message and a live code
    db.rpc("refresh_session", refresh_token=s["refresh_token"])
    assert len(user_rows(db, uid, PHONE)) >= 6
    other = db.sign_in("+15550600002")

    r = admin(db, "admin_delete_user", user_id=uid)
    assert r == {"id": uid, "soft": False}
    # Only the record of the deletion names the id, and nothing else about the user.
    assert user_rows(db, uid, PHONE) == {"audit_log": 1}
    assert db.q("SELECT event, user_id, phone, detail FROM auth.audit_log WHERE detail->>'user_id' = %s", uid) == \
        [("admin_user_deleted", None, None, {"user_id": uid, "soft": False})]
    assert db.one("SELECT count(*) FROM auth.sessions WHERE user_id = %s", other["user"]["id"]) == 1
    with raises_auth(404, "user-not-found"):
        admin(db, "admin_delete_user", user_id=uid)
    # The number signs up again as a new user.
    assert db.sign_in(PHONE)["user"]["id"] != uid


def test_soft_delete_keeps_the_row_and_frees_the_number(db):
    s = db.sign_in(PHONE)
    uid = s["user"]["id"]
    db.rpc("send_sms_otp", phone=PHONE)
    r = admin(db, "admin_delete_user", user_id=uid, soft=True)
    assert r == {"id": uid, "soft": True}
    u = admin(db, "admin_get_user", user_id=uid)
    assert u["deleted_at"] is not None and u["phone"] is None and u["phone_verified"] is False
    assert db.one("SELECT count(*) FROM auth.sessions WHERE user_id = %s AND revoked_at IS NULL", uid) == 0
    assert db.one("SELECT count(*) FROM auth.sms_outbox WHERE phone = %s", PHONE) == 0
    assert db.one("SELECT count(*) FROM auth.otp_codes WHERE subject = %s", PHONE) == 0
    with raises_auth(401, "invalid-refresh-token"):
        db.rpc("refresh_session", refresh_token=s["refresh_token"])
    # The number signs up again as a new user; the deleted one is no longer listed.
    again = db.sign_in(PHONE)
    assert again["user"]["id"] != uid
    listed = [x["id"] for x in admin(db, "admin_list_users")["users"]]
    assert again["user"]["id"] in listed and uid not in listed
    with raises_auth(404, "user-not-found"):
        admin(db, "admin_update_user", user_id=uid, attributes={"display_name": "Back"})
    # A soft-deleted user can still be removed for good.
    admin(db, "admin_delete_user", user_id=uid)
    with raises_auth(404, "user-not-found"):
        admin(db, "admin_get_user", user_id=uid)


def test_factors_and_sign_out(db):
    s = db.sign_in(PHONE)
    uid = s["user"]["id"]
    f = db.as_user(s, "mfa_enroll", factor_type="phone", phone="+15550600077", friendly_name="backup")
    listed = admin(db, "admin_list_factors", user_id=uid)
    assert [(x["id"], x["type"], x["status"]) for x in listed] == [(f["id"], "phone", "unverified")]
    with raises_auth(404, "mfa-factor-not-found"):
        admin(db, "admin_delete_factor", user_id=uid, factor_id=str(uuid.uuid4()))
    other = db.sign_in("+15550600002")
    with raises_auth(404, "mfa-factor-not-found"):
        admin(db, "admin_delete_factor", user_id=other["user"]["id"], factor_id=f["id"])
    assert admin(db, "admin_delete_factor", user_id=uid, factor_id=f["id"]) == {"id": f["id"]}
    assert admin(db, "admin_list_factors", user_id=uid) == []
    with raises_auth(404, "user-not-found"):
        admin(db, "admin_list_factors", user_id=str(uuid.uuid4()))

    second = db.sign_in(PHONE)
    assert admin(db, "admin_sign_out", user_id=uid) == {"revoked_sessions": 2}
    for sess in (s, second):
        with raises_auth(401, "invalid-refresh-token"):
            db.rpc("refresh_session", refresh_token=sess["refresh_token"])
        with raises_auth(401, "not-authenticated"):
            db.as_user(sess, "get_user")
    assert db.as_user(other, "get_user")["id"] == other["user"]["id"]
    with raises_auth(404, "user-not-found"):
        admin(db, "admin_sign_out", user_id=str(uuid.uuid4()))


def test_every_admin_action_is_audited_with_the_acting_role(db, service_role):
    s = db.sign_in(PHONE)
    uid = s["user"]["id"]
    claims = {"role": service_role}
    db.rpc("admin_update_user", role=service_role, claims=claims, user_id=uid, attributes={"display_name": "Svc"})
    admin(db, "admin_sign_out", user_id=uid)
    db.rpc("set_user_disabled", role=service_role, claims=claims, user_id=uid)
    rows = db.q("SELECT event, actor FROM auth.audit_log WHERE actor IS NOT NULL ORDER BY created_at, event")
    assert ("admin_granted", "postgres") in rows
    assert ("admin_user_updated", service_role) in rows
    assert ("admin_sign_out", "postgres") in rows
    assert ("user_disabled", service_role) in rows
    # Reads are audited too: who looked at whose number.
    db.rpc("admin_get_user", role=service_role, claims=claims, user_id=uid)
    db.rpc("admin_list_users", role=service_role, claims=claims, phone_prefix="+1555")
    db.rpc("admin_list_factors", role=service_role, claims=claims, user_id=uid)
    reads = db.q("SELECT event, user_id::text, detail, actor FROM auth.audit_log "
                 "WHERE event IN ('admin_user_read', 'admin_users_listed', 'admin_factors_listed') ORDER BY created_at")
    assert reads == [("admin_user_read", uid, {}, service_role),
                     ("admin_users_listed", None, {"page": 1, "per_page": 50, "phone_prefix": "+1555"}, service_role),
                     ("admin_factors_listed", uid, {}, service_role)]


def test_a_granted_role_may_call_the_admin_functions_and_a_client_role_may_not(db, service_role):
    # PostgREST with a service-role JWT: SET LOCAL role service_role, claims as set from the JWT.
    claims = {"role": service_role, "iss": "supabase"}
    u = db.rpc("admin_create_user", role=service_role, claims=claims, phone="+15550600005")
    assert db.rpc("admin_get_user", role=service_role, claims=claims, user_id=u["id"])["id"] == u["id"]
    assert db.rpc("admin_list_users", role=service_role, claims=claims)["total"] == 1
    assert db.rpc("admin_list_factors", role=service_role, claims=claims, user_id=u["id"]) == []
    assert db.rpc("admin_sign_out", role=service_role, claims=claims, user_id=u["id"]) == {"revoked_sessions": 0}
    db.rpc("admin_update_user", role=service_role, claims=claims, user_id=u["id"], attributes={"ban_duration": "1 day"})
    assert db.rpc("admin_delete_user", role=service_role, claims=claims, user_id=u["id"], soft=True)["soft"] is True

    s = db.sign_in(PHONE)
    for role, client_claims in (("anon", {"role": "anon"}), ("authenticated", db.claims_of(s))):
        for fn, args in [("admin_create_user", {"phone": "+15550600006"}),
                         ("admin_get_user", {"user_id": s["user"]["id"]}),
                         ("admin_list_users", {}),
                         ("admin_update_user", {"user_id": s["user"]["id"], "attributes": {"ban_duration": "none"}}),
                         ("admin_delete_user", {"user_id": s["user"]["id"]}),
                         ("admin_list_factors", {"user_id": s["user"]["id"]}),
                         ("admin_delete_factor", {"user_id": s["user"]["id"], "factor_id": str(uuid.uuid4())}),
                         ("admin_sign_out", {"user_id": s["user"]["id"]})]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                db.rpc(fn, role=role, claims=client_claims, **args)
    assert db.one("SELECT count(*) FROM auth.users WHERE id = %s", s["user"]["id"]) == 1

    db.q("SELECT auth.revoke_admin('service_role')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.rpc("admin_list_users", role=service_role, claims=claims)
    db.q("SELECT auth.grant_admin('service_role')")  # for the fixture's revoke
