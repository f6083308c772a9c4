//! Sessions: starting one, issuing tokens, rotating refresh tokens, signing out.

use crate::autonomous::{self, Action};
use crate::{audit, config, db, request};
use pg_otp_auth_core::config::Config;
use pg_otp_auth_core::error::{required, AuthError, Result};
use pg_otp_auth_core::otp;
use pg_otp_auth_core::session::{
    build_claims, new_refresh_token, refresh_token_hash, refresh_token_well_formed, sign_hs256,
    AuthMethod, TokenSettings, TokenSubject,
};
use pgrx::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::sync::LazyLock;

/// Whether the user (alias `u`) is refused: disabled, or banned until a time still to come.
pub const USER_BLOCKED: &str = "(u.disabled OR coalesce(u.banned_until > now(), false))";

/// The type of the user's (alias `u`) active second factor: 'totp' if one is verified, else
/// NULL.
const ACTIVE_MFA_TYPE: &str = "(SELECT 'totp' FROM auth.mfa_factors f
     WHERE f.user_id = u.id AND f.factor_type = 'totp' AND f.status = 'verified' LIMIT 1)";

/// The fields of the `user` object of a session, as the API returns it; `{to}` is `to_jsonb`
/// or `to_json`, `{mfa}` the user's active second factor (see ACTIVE_MFA_TYPE).
const USER_FIELDS: &str =
    "'id', u.id, 'phone', u.phone, 'phone_verified', u.phone_confirmed_at IS NOT NULL,
    'email', u.email, 'email_verified', u.email_confirmed_at IS NOT NULL,
    'display_name', u.display_name, 'avatar_url', u.avatar_url, 'locale', u.locale,
    'default_role', u.default_role, 'roles', {to}(u.roles), 'metadata', u.metadata,
    'is_anonymous', u.is_anonymous, 'created_at', u.created_at,
    'last_sign_in_at', u.last_sign_in_at, 'active_mfa_type', {mfa}";

/// The `user` object of a session (alias `u`), as jsonb.
pub static USER_JSON: LazyLock<String> = LazyLock::new(|| {
    format!(
        "jsonb_build_object({})",
        USER_FIELDS
            .replace("{to}", "to_jsonb")
            .replace("{mfa}", ACTIVE_MFA_TYPE)
    )
});

/// The `user` object of a session (alias `u`) as json text, cheaper to build and to read where
/// it is only handed back; `active_mfa_type` is the user's active second factor
/// (ACTIVE_MFA_TYPE, or a value the caller has read already).
pub fn user_json_text(active_mfa_type: &str) -> String {
    format!(
        "json_build_object({})",
        USER_FIELDS
            .replace("{to}", "to_json")
            .replace("{mfa}", active_mfa_type)
    )
}

/// The row that tokens are issued from (a `SessionRow`): session `s` with its user `u` and the
/// new refresh token `t`.
fn session_row() -> String {
    format!(
        "json_build_object('id', s.id, 'aal', s.aal, 'amr', s.amr,
                           'now', floor(date_part('epoch', now()))::bigint,
                           'user', {}, 'refresh_token_id', (SELECT id FROM t))",
        user_json_text(ACTIVE_MFA_TYPE)
    )
}

#[derive(Deserialize)]
pub struct SessionRow {
    id: String,
    aal: String,
    amr: Vec<AuthMethod>,
    now: i64,
    /// Handed back as the statement wrote it (see USER_FIELDS); `Claimed` reads what the access
    /// token needs from it.
    user: Box<RawValue>,
    refresh_token_id: String,
}

impl SessionRow {
    /// A session just started at level aal1 with methods `amr`, as its row stores them, at
    /// `now` (Unix seconds, the transaction's start), for `user` (see user_json_text).
    pub fn started(
        id: String,
        amr: Vec<AuthMethod>,
        now: i64,
        user: Box<RawValue>,
        refresh_token_id: String,
    ) -> Self {
        SessionRow {
            id,
            aal: "aal1".into(),
            amr,
            now,
            user,
            refresh_token_id,
        }
    }
}

/// What the access token says about the user, read from the `user` object.
#[derive(Deserialize)]
struct Claimed {
    id: String,
    phone: Option<String>,
    default_role: String,
    /// Read leniently, as the claims always were: not a list of strings, no roles.
    roles: Value,
    is_anonymous: bool,
    metadata: Value,
}

/// A session's tokens, as the API answers them.
#[derive(Serialize)]
pub struct Tokens {
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
    expires_at: i64,
    refresh_token: String,
    refresh_token_id: String,
    user: Box<RawValue>,
}

/// What a sign-in answers: a session, or, when the user must also pass TOTP, the MFA ticket
/// (see mfa::issue_ticket).
#[derive(Serialize)]
pub struct Granted {
    session: Option<Tokens>,
    mfa: Option<Value>,
}

impl Granted {
    pub fn session(tokens: Tokens) -> Self {
        Granted {
            session: Some(tokens),
            mfa: None,
        }
    }

    pub fn mfa(ticket: Value) -> Self {
        Granted {
            session: None,
            mfa: Some(ticket),
        }
    }
}

/// Inserts the refresh token of session `s` (the CTE before it): $2 its parent, $3 its hash,
/// $4 its lifetime in seconds.
pub const TOKEN_CTE: &str = "t AS (
    INSERT INTO auth.refresh_tokens (session_id, parent_id, token_hash, expires_at)
    SELECT s.id, $2::uuid, $3, now() + make_interval(secs => $4) FROM s
    RETURNING id)";

/// The row that tokens are issued from, read together with the new refresh token's insert
/// (the CTE `s` names the session).
fn issued_row_sql(session: &str) -> String {
    format!(
        "{session}, {TOKEN_CTE}
         SELECT {} FROM s JOIN auth.users u ON u.id = s.user_id",
        session_row()
    )
}

/// Inserts a session (aal $5, amr $6 plus method $7 now, ip $8) for user $1 and its first
/// refresh token ($3 hashed, lifetime $4 seconds; $2 no parent).
static START_SQL: LazyLock<String> = LazyLock::new(|| {
    issued_row_sql(
        "WITH s AS (
             INSERT INTO auth.sessions (user_id, aal, amr, ip)
             VALUES ($1::uuid, $5, $6 || jsonb_build_array(jsonb_build_object(
                         'method', $7::text, 'timestamp', floor(date_part('epoch', now()))::bigint)),
                     $8::inet)
             RETURNING id, user_id, aal, amr)",
    )
});

/// Session $1's next refresh token (parent $2, $3 hashed, lifetime $4 seconds).
static ISSUE_SQL: LazyLock<String> = LazyLock::new(|| {
    issued_row_sql(
        "WITH s AS (SELECT id, user_id, aal, amr FROM auth.sessions WHERE id = $1::uuid)",
    )
});

/// Rotates refresh token $2 of session $1 (a concurrent call may have rotated it just now, which
/// is within grace), marks the session refreshed, and issues the next token (see ISSUE_SQL).
static ROTATE_SQL: LazyLock<String> = LazyLock::new(|| {
    issued_row_sql(
        "WITH rotated AS (
             UPDATE auth.refresh_tokens SET rotated_at = now()
             WHERE id = $2::uuid AND rotated_at IS NULL),
         s AS (
             UPDATE auth.sessions SET refreshed_at = now() WHERE id = $1::uuid
             RETURNING id, user_id, aal, amr)",
    )
});

/// Starts a session whose `amr` is `earlier_amr` plus `method` now, and issues its tokens: one
/// statement.
pub fn start_with(
    cfg: &Config,
    user_id: &str,
    aal: &str,
    earlier_amr: Value,
    method: &str,
    ip: Option<&str>,
) -> Result<Tokens> {
    let refresh_token = new_refresh_token()?;
    let row: SessionRow = db::row_as(
        &START_SQL,
        &[
            db::text(user_id),
            db::opt_text(None),
            refresh_token_hash(&refresh_token).into(),
            cfg.refresh_token_ttl.into(),
            db::text(aal),
            db::jsonb(earlier_amr),
            db::text(method),
            db::opt_text(ip),
        ],
    )?
    .ok_or_else(|| AuthError::internal("The session could not be created."))?;
    tokens(cfg, row, refresh_token)
}

/// Issues an access token and a new refresh token for an existing session.
pub fn issue(cfg: &Config, session_id: &str, parent_token_id: Option<&str>) -> Result<Tokens> {
    issue_with(&ISSUE_SQL, cfg, session_id, parent_token_id)
}

/// Issues tokens with `sql` (ISSUE_SQL or ROTATE_SQL: $1 session, $2 parent token, $3 hash of
/// the new token, $4 its lifetime).
fn issue_with(
    sql: &str,
    cfg: &Config,
    session_id: &str,
    parent_token_id: Option<&str>,
) -> Result<Tokens> {
    let refresh_token = new_refresh_token()?;
    let row: SessionRow = db::row_as(
        sql,
        &[
            db::text(session_id),
            db::opt_text(parent_token_id),
            refresh_token_hash(&refresh_token).into(),
            cfg.refresh_token_ttl.into(),
        ],
    )?
    .ok_or_else(|| AuthError::internal("The session vanished while issuing tokens."))?;
    tokens(cfg, row, refresh_token)
}

pub fn tokens(cfg: &Config, s: SessionRow, refresh_token: String) -> Result<Tokens> {
    let user: Claimed = serde_json::from_str(s.user.get())
        .map_err(|e| AuthError::internal(format!("Unexpected user shape: {e}")))?;
    let roles: Vec<String> = serde_json::from_value(user.roles).unwrap_or_default();
    let subject = TokenSubject {
        user_id: &user.id,
        phone: user.phone.as_deref().unwrap_or_default(),
        default_role: &user.default_role,
        roles: &roles,
        session_id: &s.id,
        aal: &s.aal,
        amr: s.amr,
        is_anonymous: user.is_anonymous,
        user_metadata: user.metadata,
    };
    let settings = TokenSettings {
        audience: &cfg.jwt_aud,
        issuer: &cfg.jwt_issuer,
        lifetime_seconds: cfg.jwt_exp,
        hasura_claims: cfg.hasura_claims,
    };
    let claims = build_claims(&subject, &settings, s.now);
    let access_token = sign_hs256(&claims, &config::secret("jwt_secret")?)?;
    Ok(Tokens {
        access_token,
        token_type: "bearer",
        expires_in: cfg.jwt_exp,
        expires_at: claims.exp,
        refresh_token,
        refresh_token_id: s.refresh_token_id,
        user: s.user,
    })
}

static PRESENTED_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT jsonb_build_object(
                    'id', r.id, 'session_id', r.session_id,
                    'expired', r.expires_at <= clock_timestamp(),
                    'rotated_age', date_part('epoch', clock_timestamp() - r.rotated_at),
                    'children', (SELECT count(*) FROM auth.refresh_tokens c WHERE c.parent_id = r.id),
                    'session_revoked', s.revoked_at IS NOT NULL, 'disabled', {USER_BLOCKED})
         FROM auth.refresh_tokens r
         JOIN auth.sessions s ON s.id = r.session_id
         JOIN auth.users u ON u.id = s.user_id
         WHERE r.token_hash = $1"
    )
});

#[derive(Deserialize)]
struct PresentedToken {
    id: String,
    session_id: String,
    expired: bool,
    rotated_age: Option<f64>,
    children: i64,
    session_revoked: bool,
    disabled: bool,
}

fn refresh(token: Option<&str>) -> Result<Tokens> {
    let token = required(token, "refresh_token")?;
    if !refresh_token_well_formed(token) {
        return Err(AuthError::invalid_refresh_token());
    }
    autonomous::require_own_transaction()?;
    let cfg = config::load()?;
    let hash = refresh_token_hash(token);
    // Concurrent presentations of one token are judged one at a time (the sibling limit).
    db::lock("refresh", &db::to_hex(&hash))?;
    // clock_timestamp(), not now(): a transaction held open from before the rotation must not
    // make a stale token look freshly rotated.
    let t: PresentedToken =
        db::row_as(&PRESENTED_SQL, &[hash.into()])?.ok_or_else(AuthError::invalid_refresh_token)?;
    if t.session_revoked || t.expired {
        return Err(AuthError::invalid_refresh_token());
    }
    if t.disabled {
        return Err(AuthError::disabled_user());
    }
    if let Some(age) = t.rotated_age {
        // Inside the grace period (two tabs refreshing at once) one sibling token is issued;
        // any further replay, or one after the grace period, means someone else holds a copy.
        if age <= cfg.refresh_reuse_grace as f64 && t.children < 2 {
            return issue(&cfg, &t.session_id, Some(&t.id));
        }
        autonomous::record(&Action::RefreshTokenReused {
            audit_id: otp::time_ordered_uuid_text(),
            token_id: t.id.clone(),
            ip: request::client_ip(&cfg)?,
        })?;
        return Err(AuthError::new(
            401,
            "refresh-token-reused",
            "This refresh token was already used; the session has been revoked.",
        ));
    }
    issue_with(&ROTATE_SQL, &cfg, &t.session_id, Some(&t.id))
}

const SIGN_OUT_LOCAL: &str =
    "UPDATE auth.sessions SET revoked_at = now(), revoked_reason = 'sign_out'
     WHERE id = $2::uuid AND user_id = $1::uuid AND revoked_at IS NULL";
const SIGN_OUT_GLOBAL: &str =
    "UPDATE auth.sessions SET revoked_at = now(), revoked_reason = 'sign_out'
     WHERE user_id = $1::uuid AND revoked_at IS NULL";
const SIGN_OUT_OTHERS: &str =
    "UPDATE auth.sessions SET revoked_at = now(), revoked_reason = 'sign_out'
     WHERE user_id = $1::uuid AND id <> $2::uuid AND revoked_at IS NULL";

fn sign_out(scope: Option<&str>) -> Result<Value> {
    let scope = required(scope, "scope")?;
    if !matches!(scope, "local" | "global" | "others") {
        return Err(AuthError::invalid_request(
            "scope must be local, global or others.",
        ));
    }
    let current = request::current_session()?;
    // One statement per scope, each reading an index range of its own: a scope chosen inside
    // the statement (CASE) cannot use an index and would read every live session of the install.
    let revoke = match scope {
        "local" => SIGN_OUT_LOCAL,
        "global" => SIGN_OUT_GLOBAL,
        _ => SIGN_OUT_OTHERS,
    };
    db::run(
        revoke,
        &[db::text(&current.user_id), db::text(&current.session_id)],
    )?;
    audit::record(
        "sign_out",
        Some(&current.user_id),
        None,
        request::client_ip(&*config::load()?)?.as_deref(),
        json!({"scope": scope, "session_id": current.session_id}),
    )?;
    Ok(Value::Null)
}

crate::answer::api_function!(
    auth_refresh_session,
    (refresh_token: Option<&str>) => refresh(refresh_token)
);

#[pg_extern(name = "_sign_out")]
fn sign_out_impl(scope: Option<&str>) -> crate::Answer {
    crate::respond(sign_out(scope))
}
