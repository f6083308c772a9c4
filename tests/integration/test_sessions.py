"""Refresh-token rotation, reuse detection, sign-out scopes, and the claim helpers."""

from conftest import raises_auth

PHONE = "+15550808080"


def test_refresh_rotates_the_token(db):
    s1 = db.sign_in(PHONE)
    s2 = db.rpc("refresh_session", refresh_token=s1["refresh_token"])
    assert s2["refresh_token"] != s1["refresh_token"] and s2["refresh_token_id"] != s1["refresh_token_id"]
    c1, c2 = db.claims_of(s1), db.claims_of(s2)
    assert c2["session_id"] == c1["session_id"] and c2["sub"] == c1["sub"]
    assert s2["user"]["id"] == s1["user"]["id"]
    assert db.one("SELECT rotated_at IS NOT NULL FROM auth.refresh_tokens WHERE id = %s", s1["refresh_token_id"])
    assert db.one("SELECT parent_id FROM auth.refresh_tokens WHERE id = %s", s2["refresh_token_id"]) is not None
    # Only hashes are stored.
    assert db.one("SELECT count(*) FROM auth.refresh_tokens WHERE token_hash = convert_to(%s, 'UTF8')", s2["refresh_token"]) == 0
    s3 = db.rpc("refresh_session", refresh_token=s2["refresh_token"])
    assert db.claims_of(s3)["session_id"] == c1["session_id"]


def test_reuse_within_grace_is_tolerated(db):
    s1 = db.sign_in(PHONE)
    a = db.rpc("refresh_session", refresh_token=s1["refresh_token"])
    b = db.rpc("refresh_session", refresh_token=s1["refresh_token"])  # a second tab, same moment
    assert a["refresh_token"] != b["refresh_token"]
    db.rpc("refresh_session", refresh_token=a["refresh_token"])
    db.rpc("refresh_session", refresh_token=b["refresh_token"])


def test_reuse_after_grace_revokes_the_whole_session(db):
    s1 = db.sign_in(PHONE)
    s2 = db.rpc("refresh_session", refresh_token=s1["refresh_token"])
    other = db.sign_in(PHONE)  # another device, must survive
    db.q("UPDATE auth.refresh_tokens SET rotated_at = now() - interval '11 seconds' WHERE id = %s", s1["refresh_token_id"])
    with raises_auth(401, "refresh-token-reused"):
        db.rpc("refresh_session", refresh_token=s1["refresh_token"])
    # The revocation was committed although the call failed.
    sid = db.claims_of(s1)["session_id"]
    assert db.one("SELECT revoked_reason FROM auth.sessions WHERE id = %s", sid) == "refresh_token_reused"
    assert db.one("SELECT count(*) FROM auth.audit_log WHERE event = 'refresh_token_reused'") == 1
    with raises_auth(401, "invalid-refresh-token"):
        db.rpc("refresh_session", refresh_token=s2["refresh_token"])
    db.rpc("refresh_session", refresh_token=other["refresh_token"])


def test_grace_allows_one_sibling_only(db):
    s1 = db.sign_in(PHONE)
    db.rpc("refresh_session", refresh_token=s1["refresh_token"])
    db.rpc("refresh_session", refresh_token=s1["refresh_token"])
    with raises_auth(401, "refresh-token-reused"):
        db.rpc("refresh_session", refresh_token=s1["refresh_token"])
    assert db.one("SELECT revoked_reason FROM auth.sessions") == "refresh_token_reused"


def test_refresh_is_refused_inside_a_transaction_that_wrote(db):
    s1 = db.sign_in(PHONE)
    conn = db.connect()
    with raises_auth(400, "invalid-request"):
        with conn.transaction():
            conn.execute("SELECT auth.send_sms_otp('+15559990000')")
            conn.execute("SELECT auth.refresh_session(%s)", (s1["refresh_token"],))
    conn.close()


def test_grace_setting(db):
    db.setting("refresh_reuse_grace", 0)
    s1 = db.sign_in(PHONE)
    db.rpc("refresh_session", refresh_token=s1["refresh_token"])
    db.q("UPDATE auth.refresh_tokens SET rotated_at = now() - interval '1 second' WHERE id = %s", s1["refresh_token_id"])
    with raises_auth(401, "refresh-token-reused"):
        db.rpc("refresh_session", refresh_token=s1["refresh_token"])


def test_unknown_expired_and_malformed_refresh_tokens(db):
    s = db.sign_in(PHONE)
    with raises_auth(401, "invalid-refresh-token"):
        db.rpc("refresh_session", refresh_token="A" * 43)
    with raises_auth(401, "invalid-refresh-token"):
        db.rpc("refresh_session", refresh_token="short")
    db.q("UPDATE auth.refresh_tokens SET expires_at = now() - interval '1 second'")
    with raises_auth(401, "invalid-refresh-token"):
        db.rpc("refresh_session", refresh_token=s["refresh_token"])


def test_disabled_user_cannot_refresh(db):
    s = db.sign_in(PHONE)
    db.q("UPDATE auth.users SET disabled = true")
    with raises_auth(403, "disabled-user"):
        db.rpc("refresh_session", refresh_token=s["refresh_token"])


def sessions(db, uid):
    return {str(r[0]): r[1] for r in db.q("SELECT id, revoked_at IS NULL FROM auth.sessions WHERE user_id = %s", uid)}


def test_sign_out_scopes(db):
    a, b, c = (db.sign_in(PHONE) for _ in range(3))
    ca, cb, cc = (db.claims_of(x) for x in (a, b, c))
    uid = ca["sub"]

    db.rpc("sign_out", role="authenticated", claims=cb, scope="local")
    assert sessions(db, uid) == {ca["session_id"]: True, cb["session_id"]: False, cc["session_id"]: True}
    with raises_auth(401, "invalid-refresh-token"):
        db.rpc("refresh_session", refresh_token=b["refresh_token"])

    db.rpc("sign_out", role="authenticated", claims=ca, scope="others")
    assert sessions(db, uid) == {ca["session_id"]: True, cb["session_id"]: False, cc["session_id"]: False}

    d = db.sign_in(PHONE)
    db.rpc("sign_out", role="authenticated", claims=ca, scope="global")
    assert not any(sessions(db, uid).values())
    with raises_auth(401, "invalid-refresh-token"):
        db.rpc("refresh_session", refresh_token=d["refresh_token"])
    assert db.one("SELECT count(*) FROM auth.audit_log WHERE event = 'sign_out'") == 3


def test_sign_out_default_scope_is_local(db):
    a, b = db.sign_in(PHONE), db.sign_in(PHONE)
    ca = db.claims_of(a)
    db.rpc("sign_out", role="authenticated", claims=ca)
    assert sessions(db, ca["sub"]) == {ca["session_id"]: False, db.claims_of(b)["session_id"]: True}


def test_sign_out_needs_a_live_session(db):
    a = db.sign_in(PHONE)
    ca = db.claims_of(a)
    with raises_auth(401, "not-authenticated"):
        db.rpc("sign_out", role="anon")
    forged = dict(ca, session_id="00000000-0000-4000-8000-000000000000")
    with raises_auth(401, "not-authenticated"):
        db.rpc("sign_out", role="authenticated", claims=forged)
    db.rpc("sign_out", role="authenticated", claims=ca)
    with raises_auth(401, "not-authenticated"):
        db.rpc("sign_out", role="authenticated", claims=ca)
    with raises_auth(400, "invalid-request"):
        db.rpc("sign_out", role="authenticated", claims=ca, scope="everything")


def test_expired_claims_are_not_a_session(db):
    a = db.sign_in(PHONE)
    claims = dict(db.claims_of(a), exp=1)
    with raises_auth(401, "not-authenticated"):
        db.rpc("sign_out", role="authenticated", claims=claims)
    no_exp = {k: v for k, v in db.claims_of(a).items() if k != "exp"}
    with raises_auth(401, "not-authenticated"):
        db.rpc("sign_out", role="authenticated", claims=no_exp)


def test_claim_helpers_for_rls(db):
    s = db.sign_in(PHONE)
    claims = db.claims_of(s)
    conn = db.connect()
    with conn.transaction():
        conn.execute("SET LOCAL role authenticated")
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (__import__("json").dumps(claims),))
        uid, role, sid, jwt = conn.execute("SELECT auth.uid(), auth.role(), auth.session_id(), auth.jwt()").fetchone()
    assert str(uid) == claims["sub"] and role == "authenticated" and str(sid) == claims["session_id"]
    assert jwt["phone"] == PHONE
    # An RLS policy on an application table, keyed on auth.uid().
    db.q("CREATE TABLE notes (owner uuid, body text)")
    db.q("ALTER TABLE notes ENABLE ROW LEVEL SECURITY")
    db.q("CREATE POLICY own ON notes USING (owner = auth.uid())")
    db.q("GRANT SELECT ON notes TO authenticated")
    db.q("INSERT INTO notes VALUES (%s, 'mine'), (gen_random_uuid(), 'theirs')", claims["sub"])
    with conn.transaction():
        conn.execute("SET LOCAL role authenticated")
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (__import__("json").dumps(claims),))
        assert conn.execute("SELECT body FROM notes").fetchall() == [("mine",)]
    with conn.transaction():
        conn.execute("SET LOCAL role authenticated")
        assert conn.execute("SELECT auth.uid()").fetchone()[0] is None
        assert conn.execute("SELECT body FROM notes").fetchall() == []
    conn.close()


def test_each_sign_out_scope_reads_only_the_callers_sessions(db):
    """Signing out revokes by the session's key or the user's live sessions: a scope must not
    make the statement read every live session of the install."""
    db.q("INSERT INTO auth.users (id, phone, locale, default_role, roles) "
         "SELECT gen_random_uuid(), '+1556' || lpad(i::text, 7, '0'), 'en', 'user', '{user}' "
         "FROM generate_series(1, 3000) i")
    db.q("INSERT INTO auth.sessions (user_id) SELECT id FROM auth.users")
    for scope in ("local", "others", "global"):
        a, b = db.sign_in(PHONE), db.sign_in(PHONE)
        with db.connect() as conn, conn.transaction():
            db.rpc("sign_out", role="authenticated", claims=db.claims_of(a), scope=scope, conn=conn)
            # Rows read by sequential scans of auth.sessions plus entries read from its indexes.
            read = conn.execute(
                "SELECT sum(pg_stat_get_xact_tuples_returned(c::regclass)) FROM unnest(ARRAY["
                "'auth.sessions', 'auth.sessions_pkey', 'auth.sessions_user']) c").fetchone()[0]
        live = sessions(db, db.claims_of(a)["sub"])
        assert live[db.claims_of(a)["session_id"]] is (scope == "others")
        assert live[db.claims_of(b)["session_id"]] is (scope == "local")
        assert 1 <= read < 50, scope
    assert db.one("SELECT count(*) FROM auth.sessions WHERE revoked_at IS NULL "
                  "AND user_id <> %s", db.claims_of(a)["sub"]) == 3000
