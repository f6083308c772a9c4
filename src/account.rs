//! The signed-in user's own account: reading and updating the profile, and changing the phone
//! number with a code sent to the new one.

use crate::autonomous;
use crate::mfa::insufficient_aal;
use crate::outbox::{self, lock_phone};
use crate::request::{self, CurrentSession};
use crate::session::USER_JSON;
use crate::signin::judge_code;
use crate::{audit, config, db};
use pg_otp_auth_core::account::{self as rules, Changes};
use pg_otp_auth_core::error::{required, AuthError, Result};
use pg_otp_auth_core::{otp, phone};
use pgrx::JsonB;
use serde::Deserialize;
use serde_json::{json, Value};

const PHONE_CHANGE: &str = "phone_change";
/// What the old number is told when the account moves to another one.
const PHONE_CHANGED_NOTICE: &str =
    "The phone number of your account was changed. If this was not you, contact support.";

/// The user object, as sessions carry it.
pub fn user_json(user_id: &str) -> Result<Value> {
    db::row(
        &format!(
            "SELECT {} FROM auth.users u WHERE u.id = $1::uuid",
            *USER_JSON
        ),
        &[db::text(user_id)],
    )?
    .ok_or_else(user_not_found)
}

/// Whether a user has this number (the caller holds the phone's lock).
fn phone_in_use(phone: &str) -> Result<bool> {
    Ok(db::row(
        "SELECT to_jsonb(true) FROM auth.users WHERE phone = $1",
        &[db::text(phone)],
    )?
    .is_some())
}

pub fn phone_taken(message: &str) -> AuthError {
    AuthError::new(409, "user-already-exists", message.to_string())
}

pub fn user_not_found() -> AuthError {
    AuthError::new(404, "user-not-found", "No such user.")
}

#[derive(Deserialize)]
struct Stored {
    phone: Option<String>,
    roles: Vec<String>,
    default_role: String,
    metadata: Value,
}

/// Applies `c` to the user (locked for the rest of the transaction), all in one statement:
/// metadata is merged (see `rules::merge_metadata`), a new phone must be free, and a ban revokes
/// every session and refresh token at once. Answers the fields that changed.
pub fn apply(user_id: &str, c: &Changes) -> Result<Vec<&'static str>> {
    db::lock("user", user_id)?;
    let s: Stored = db::row_as(
        "SELECT jsonb_build_object('phone', phone, 'roles', to_jsonb(roles),
                                   'default_role', default_role, 'metadata', metadata)
         FROM auth.users WHERE id = $1::uuid AND deleted_at IS NULL FOR UPDATE",
        &[db::text(user_id)],
    )?
    .ok_or_else(user_not_found)?;
    let metadata = c
        .metadata
        .as_ref()
        .map(|patch| rules::merge_metadata(&s.metadata, patch))
        .transpose()?;
    let roles = if c.roles.is_some() || c.default_role.is_some() {
        Some(rules::resolve_roles(c, &s.roles, &s.default_role)?)
    } else {
        None
    };
    let new_phone = c
        .phone
        .as_deref()
        .filter(|p| Some(*p) != s.phone.as_deref());
    if let Some(p) = new_phone {
        lock_phone(p)?;
        if phone_in_use(p)? {
            return Err(phone_taken("phone: another user has this phone number."));
        }
    }
    let ban = c.ban.map(|b| match b {
        rules::Ban::Lift => -1,
        rules::Ban::For(seconds) => seconds,
    });
    db::run(
        "WITH changed AS (
             UPDATE auth.users SET
                 phone = CASE WHEN $2::text IS NULL THEN phone ELSE $2 END,
                 phone_confirmed_at = CASE
                     WHEN $3::boolean IS NULL AND $2::text IS NULL THEN phone_confirmed_at
                     WHEN coalesce($3, false) AND $2::text IS NULL
                         THEN coalesce(phone_confirmed_at, now())
                     WHEN coalesce($3, false) THEN now()
                     ELSE NULL END,
                 display_name = CASE WHEN $4 THEN $5 ELSE display_name END,
                 locale = coalesce($6, locale),
                 avatar_url = CASE WHEN $7 THEN $8 ELSE avatar_url END,
                 metadata = coalesce($9, metadata),
                 roles = CASE WHEN $10::jsonb IS NULL THEN roles
                              ELSE ARRAY(SELECT jsonb_array_elements_text($10)) END,
                 default_role = coalesce($11, default_role),
                 banned_until = CASE WHEN $12::bigint IS NULL THEN banned_until
                                     WHEN $12 < 0 THEN NULL
                                     ELSE now() + make_interval(secs => $12) END,
                 updated_at = now()
             WHERE id = $1::uuid
             RETURNING id),
         revoked AS (
             UPDATE auth.sessions SET revoked_at = now(), revoked_reason = 'banned'
             WHERE coalesce($12 > 0, false) AND user_id = $1::uuid AND revoked_at IS NULL),
         tokens AS (
             DELETE FROM auth.refresh_tokens r USING auth.sessions s
             WHERE coalesce($12 > 0, false) AND s.id = r.session_id AND s.user_id = $1::uuid),
         codes AS (
             -- Codes sent to the old number no longer belong to this account.
             UPDATE auth.otp_codes SET invalidated_at = now()
             WHERE $2::text IS NOT NULL AND user_id = $1::uuid
               AND consumed_at IS NULL AND invalidated_at IS NULL)
         SELECT 1 FROM changed",
        &[
            db::text(user_id),
            db::opt_text(new_phone),
            c.phone_confirmed.into(),
            c.display_name.is_some().into(),
            db::opt_text(c.display_name.clone().flatten().as_deref()),
            db::opt_text(c.locale.as_deref()),
            c.avatar_url.is_some().into(),
            db::opt_text(c.avatar_url.clone().flatten().as_deref()),
            metadata.map(JsonB).into(),
            roles.as_ref().map(|(r, _)| JsonB(json!(r))).into(),
            db::opt_text(roles.as_ref().map(|(_, d)| d.as_str())),
            ban.into(),
        ],
    )?;
    let mut fields = Vec::new();
    let mut note = |set: bool, name: &'static str| {
        if set {
            fields.push(name)
        }
    };
    note(new_phone.is_some(), "phone");
    note(c.phone_confirmed.is_some(), "phone_confirmed");
    note(c.display_name.is_some(), "display_name");
    note(c.locale.is_some(), "locale");
    note(c.avatar_url.is_some(), "avatar_url");
    note(c.metadata.is_some(), "metadata");
    note(c.roles.is_some(), "roles");
    note(c.default_role.is_some(), "default_role");
    note(c.ban.is_some(), "ban_duration");
    Ok(fields)
}

fn get_user() -> Result<Value> {
    let me = request::current_session()?;
    user_json(&me.user_id)
}

fn update_user(
    display_name: Option<&str>,
    locale: Option<&str>,
    avatar_url: Option<&str>,
    metadata: Option<JsonB>,
) -> Result<Value> {
    let me = request::current_session()?;
    let cfg = config::load()?;
    let changes = Changes {
        display_name: display_name
            .map(|d| rules::display_name("display_name", &json!(d)))
            .transpose()?,
        locale: locale
            .map(|l| rules::locale("locale", &json!(l), &cfg.policy()))
            .transpose()?,
        avatar_url: avatar_url
            .map(|a| rules::avatar_url("avatar_url", &json!(a)))
            .transpose()?,
        metadata: metadata
            .map(|JsonB(m)| rules::metadata("metadata", &m))
            .transpose()?,
        ..Changes::default()
    };
    let fields = apply(&me.user_id, &changes)?;
    audit::record(
        "user_updated",
        Some(&me.user_id),
        None,
        request::client_ip(&cfg)?.as_deref(),
        json!({"fields": fields}),
    )?;
    user_json(&me.user_id)
}

#[derive(Deserialize)]
struct Own {
    phone: Option<String>,
    locale: String,
    has_verified_factor: bool,
}

/// The caller's phone and locale; refuses an aal1 caller who has a verified factor.
fn own_account(me: &CurrentSession) -> Result<Own> {
    let own: Own = db::row_as(
        "SELECT jsonb_build_object('phone', u.phone, 'locale', u.locale,
                    'has_verified_factor', EXISTS (SELECT 1 FROM auth.mfa_factors f
                                                   WHERE f.user_id = u.id AND f.status = 'verified'))
         FROM auth.users u WHERE u.id = $1::uuid",
        &[db::text(&me.user_id)],
    )?
    .ok_or_else(AuthError::not_authenticated)?;
    if own.has_verified_factor && !me.is_aal2() {
        return Err(insufficient_aal(
            "Changing the phone number needs an aal2 session.",
        ));
    }
    Ok(own)
}

fn change_phone(new_phone: Option<&str>, channel: Option<&str>) -> Result<Value> {
    let new_phone = phone::normalize(required(new_phone, "new_phone")?)?;
    let channel = outbox::channel(required(channel, "channel")?)?;
    let me = request::current_session()?;
    let cfg = config::load()?;
    let own = own_account(&me)?;
    if own.phone.as_deref() == Some(new_phone.as_str()) {
        return Err(AuthError::invalid_request(
            "new_phone is already this account's phone number.",
        ));
    }
    let ip = request::client_ip(&cfg)?;
    lock_phone(&new_phone)?;
    // A number that is another user's is answered alike, and nothing is sent to it.
    let taken = outbox::admit(&cfg, &new_phone, ip.as_deref())?.is_some();
    let to = (!taken).then_some((me.user_id.as_str(), own.locale.as_str()));
    outbox::send_code(
        &cfg,
        &new_phone,
        ip.as_deref(),
        channel,
        PHONE_CHANGE,
        to,
        None,
    )
}

fn verify_phone_change(new_phone: Option<&str>, code: Option<&str>) -> Result<Value> {
    let new_phone = phone::normalize(required(new_phone, "new_phone")?)?;
    let code = required(code, "otp")?;
    autonomous::require_own_transaction()?;
    let me = request::current_session()?;
    let cfg = config::load()?;
    otp::check_format(code, cfg.otp_length)?;
    own_account(&me)?;
    let ip = request::client_ip(&cfg)?;
    // The user before the number, as everywhere else (admin_update_user): no lock-order
    // deadlock with an administrator moving this user.
    db::lock("user", &me.user_id)?;
    lock_phone(&new_phone)?;
    let code_id = judge_code(
        &cfg,
        &new_phone,
        PHONE_CHANGE,
        Some(&me.user_id),
        code,
        ip.as_deref(),
    )?
    .id;
    db::row(
        // By primary key, not a scan of otp_codes_live (see signin's SIGN_IN_SQL).
        "UPDATE auth.otp_codes SET attempts = attempts + 1, consumed_at = now()
         WHERE id = $1::uuid AND num_nulls(consumed_at, invalidated_at) = 2
           AND expires_at > clock_timestamp() AND attempts < $2
         RETURNING to_jsonb(id)",
        &[db::text(&code_id), cfg.otp_max_attempts.into()],
    )?
    .ok_or_else(AuthError::invalid_otp)?;
    if phone_in_use(&new_phone)? {
        // The caller has just proved they hold the number: telling them it is taken is safe.
        return Err(phone_taken("This phone number belongs to another account."));
    }
    let old: Option<String> = db::row(
        "WITH old AS (SELECT phone FROM auth.users WHERE id = $1::uuid FOR UPDATE),
         changed AS (
             UPDATE auth.users SET phone = $2, phone_confirmed_at = now(), updated_at = now()
             WHERE id = $1::uuid),
         others AS (
             UPDATE auth.sessions SET revoked_at = now(), revoked_reason = 'phone_changed'
             WHERE user_id = $1::uuid AND id <> $3::uuid AND revoked_at IS NULL),
         old_codes AS (
             UPDATE auth.otp_codes SET invalidated_at = now()
             WHERE user_id = $1::uuid AND consumed_at IS NULL AND invalidated_at IS NULL)
         SELECT to_jsonb(phone) FROM old",
        &[
            db::text(&me.user_id),
            db::text(&new_phone),
            db::text(&me.session_id),
        ],
    )?
    .and_then(|v| v.as_str().map(str::to_string));
    audit::record(
        "phone_changed",
        Some(&me.user_id),
        Some(&new_phone),
        ip.as_deref(),
        json!({"old_phone": old}),
    )?;
    if let (Some(old), true) = (old.as_deref(), cfg.notify_phone_change) {
        db::run(
            "INSERT INTO auth.sms_outbox (phone, channel, body, purpose, user_id, expires_at)
             VALUES ($1, 'sms', $2, 'phone_change_notice', $3::uuid, now() + interval '1 day')",
            &[
                db::text(old),
                db::text(PHONE_CHANGED_NOTICE),
                db::text(&me.user_id),
            ],
        )?;
    }
    Ok(json!({"user": user_json(&me.user_id)?}))
}

crate::answer::api_function!(
    auth_get_user,
    () => get_user()
);

crate::answer::api_function!(
    auth_update_user,
    (
        display_name: Option<&str>,
        locale: Option<&str>,
        avatar_url: Option<&str>,
        metadata: Option<JsonB>,
    ) => update_user(display_name, locale, avatar_url, metadata)
);

crate::answer::api_function!(
    auth_change_phone,
    (new_phone: Option<&str>, channel: Option<&str>) => change_phone(new_phone, channel)
);

crate::answer::api_function!(
    auth_verify_phone_change,
    (new_phone: Option<&str>, otp: Option<&str>) => verify_phone_change(new_phone, otp)
);
