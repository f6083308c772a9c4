//! The administrator's functions: users and their factors and sessions, managed through the
//! extension's rules rather than by hand on its tables. Callable by the extension owner and by
//! roles given `auth.grant_admin`; every action is audited with the acting database role.

use crate::account::{apply, phone_taken, user_not_found};
use crate::mfa::factor_not_found;
use crate::outbox::lock_phone;
use crate::session::USER_JSON;
use crate::{config, db};
use pg_otp_auth_core::account::{self as rules, Changes};
use pg_otp_auth_core::error::{required, AuthError, Result};
use pg_otp_auth_core::phone;
use pgrx::JsonB;
use serde_json::{json, Value};
use std::sync::LazyLock;

/// The database role acting: the one PostgREST (or a SQL session) switched to, else the login.
const ACTOR: &str =
    "CASE WHEN current_setting('role') <> 'none' THEN current_setting('role') ELSE session_user::text END";

/// The user object with what only an administrator sees.
static ADMIN_USER_JSON: LazyLock<String> = LazyLock::new(|| {
    format!(
        "({} || jsonb_build_object(
             'phone_confirmed_at', u.phone_confirmed_at, 'disabled', u.disabled,
             'banned_until', u.banned_until, 'deleted_at', u.deleted_at,
             'updated_at', u.updated_at))",
        *USER_JSON
    )
});

fn audit(event: &str, user_id: Option<&str>, detail: Value) -> Result<()> {
    db::run(
        &format!(
            "INSERT INTO auth.audit_log (event, user_id, detail, actor)
             VALUES ($1, $2::uuid, $3, {ACTOR})"
        ),
        &[db::text(event), db::opt_text(user_id), db::jsonb(detail)],
    )
}

fn admin_user(user_id: &str) -> Result<Value> {
    db::row(
        &format!(
            "SELECT {} FROM auth.users u WHERE u.id = $1::uuid",
            *ADMIN_USER_JSON
        ),
        &[db::text(user_id)],
    )?
    .ok_or_else(user_not_found)
}

/// Locks the user for the rest of the transaction, if it exists (soft-deleted ones only when
/// `deleted_too`).
fn existing(user_id: &str, deleted_too: bool) -> Result<()> {
    db::lock("user", user_id)?;
    db::row(
        "SELECT to_jsonb(true) FROM auth.users
         WHERE id = $1::uuid AND ($2 OR deleted_at IS NULL) FOR UPDATE",
        &[db::text(user_id), deleted_too.into()],
    )?
    .map(|_| ())
    .ok_or_else(user_not_found)
}

#[allow(clippy::too_many_arguments)]
fn create_user(
    phone_number: Option<&str>,
    phone_confirmed: Option<bool>,
    display_name: Option<&str>,
    locale: Option<&str>,
    metadata: Option<JsonB>,
    roles: Option<Vec<Option<String>>>,
    default_role: Option<&str>,
) -> Result<Value> {
    let phone_number = phone::normalize(required(phone_number, "phone")?)?;
    let confirmed = required(phone_confirmed, "phone_confirmed")?;
    let cfg = config::load()?;
    let p = cfg.policy();
    let mut attrs = json!({});
    if let Some(d) = display_name {
        attrs["display_name"] = json!(d);
    }
    if let Some(l) = locale {
        attrs["locale"] = json!(l);
    }
    if let Some(JsonB(m)) = metadata {
        attrs["metadata"] = m;
    }
    if let Some(r) = roles {
        attrs["roles"] = json!(r);
    }
    if let Some(d) = default_role {
        attrs["default_role"] = json!(d);
    }
    let c = rules::admin_changes(&attrs, &p)?;
    let (roles, default_role) = rules::resolve_roles(&c, &cfg.allowed_roles, &cfg.default_role)?;
    lock_phone(&phone_number)?;
    let id = db::row(
        "INSERT INTO auth.users (phone, phone_confirmed_at, display_name, locale, metadata,
                                 roles, default_role)
         SELECT $1, CASE WHEN $2 THEN now() END, $3, $4, $5,
                ARRAY(SELECT jsonb_array_elements_text($6)), $7
         WHERE NOT EXISTS (SELECT 1 FROM auth.users WHERE phone = $1)
         RETURNING to_jsonb(id)",
        &[
            db::text(&phone_number),
            confirmed.into(),
            db::opt_text(c.display_name.flatten().as_deref()),
            db::text(c.locale.as_deref().unwrap_or(&cfg.default_locale)),
            db::jsonb(c.metadata.unwrap_or_else(|| json!({}))),
            db::jsonb(&roles),
            db::text(&default_role),
        ],
    )?
    .and_then(|v| v.as_str().map(str::to_string))
    .ok_or_else(|| phone_taken("phone: a user with this phone number already exists."))?;
    audit("admin_user_created", Some(&id), json!({}))?;
    admin_user(&id)
}

fn get_user(user_id: Option<pgrx::Uuid>) -> Result<Value> {
    let user_id = required(user_id, "user_id")?.to_string();
    let user = admin_user(&user_id)?;
    audit("admin_user_read", Some(&user_id), json!({}))?;
    Ok(user)
}

fn list_users(
    page: Option<i32>,
    per_page: Option<i32>,
    phone_prefix: Option<&str>,
) -> Result<Value> {
    let page = i64::from(required(page, "page")?);
    let per_page = i64::from(required(per_page, "per_page")?);
    let (limit, offset) = rules::page(page, per_page)?;
    let prefix = phone_prefix.map(rules::phone_prefix).transpose()?;
    audit(
        "admin_users_listed",
        None,
        json!({"page": page, "per_page": per_page, "phone_prefix": prefix}),
    )?;
    db::row(
        &format!(
            "WITH matching AS (
                 SELECT u.* FROM auth.users u
                 WHERE u.deleted_at IS NULL AND ($3::text IS NULL OR starts_with(u.phone, $3)))
             SELECT jsonb_build_object(
                 'users', coalesce((SELECT jsonb_agg(x.j ORDER BY x.created_at, x.id) FROM (
                              SELECT {} AS j, u.created_at, u.id FROM matching u
                              ORDER BY u.created_at, u.id LIMIT $1 OFFSET $2) x), '[]'),
                 'total', (SELECT count(*) FROM matching),
                 'page', $4, 'per_page', $1)",
            *ADMIN_USER_JSON
        ),
        &[
            limit.into(),
            offset.into(),
            db::opt_text(prefix.as_deref()),
            page.into(),
        ],
    )?
    .ok_or_else(|| AuthError::internal("The users could not be listed."))
}

fn update_user(user_id: Option<pgrx::Uuid>, attributes: Option<JsonB>) -> Result<Value> {
    let user_id = required(user_id, "user_id")?.to_string();
    let JsonB(attributes) = required(attributes, "attributes")?;
    let cfg = config::load()?;
    let changes: Changes = rules::admin_changes(&attributes, &cfg.policy())?;
    let fields = apply(&user_id, &changes)?;
    let mut detail = json!({"fields": fields});
    if let Some(rules::Ban::For(seconds)) = changes.ban {
        detail["ban_seconds"] = json!(seconds);
    }
    audit("admin_user_updated", Some(&user_id), detail)?;
    admin_user(&user_id)
}

fn delete_user(user_id: Option<pgrx::Uuid>, soft: Option<bool>) -> Result<Value> {
    let user_id = required(user_id, "user_id")?.to_string();
    let soft = required(soft, "soft")?;
    existing(&user_id, !soft)?;
    let id = [db::text(&user_id)];
    if soft {
        // The row stays (deleted_at); the number and everything that could act for the
        // account go, and the number is free for a new sign-up.
        db::run(
            "WITH old AS (SELECT phone FROM auth.users WHERE id = $1::uuid),
             anonymised AS (
                 UPDATE auth.users SET phone = NULL, phone_confirmed_at = NULL, email = NULL,
                                       email_confirmed_at = NULL, deleted_at = now(),
                                       updated_at = now()
                 WHERE id = $1::uuid),
             sessions AS (
                 UPDATE auth.sessions SET revoked_at = now(), revoked_reason = 'user_deleted'
                 WHERE user_id = $1::uuid AND revoked_at IS NULL),
             tokens AS (
                 DELETE FROM auth.refresh_tokens r USING auth.sessions s
                 WHERE s.id = r.session_id AND s.user_id = $1::uuid),
             factors AS (DELETE FROM auth.mfa_factors WHERE user_id = $1::uuid),
             tickets AS (DELETE FROM auth.mfa_tickets WHERE user_id = $1::uuid),
             recovery AS (DELETE FROM auth.mfa_recovery_codes WHERE user_id = $1::uuid),
             codes AS (DELETE FROM auth.otp_codes c USING old
                       WHERE c.user_id = $1::uuid OR c.subject = old.phone),
             messages AS (DELETE FROM auth.sms_outbox o USING old
                          WHERE o.user_id = $1::uuid OR o.phone = old.phone),
             audit AS (UPDATE auth.audit_log a SET phone = NULL, detail = a.detail - 'old_phone'
                       FROM old WHERE a.user_id = $1::uuid OR a.phone = old.phone)
             SELECT 1",
            &id,
        )?;
        audit("admin_user_deleted", Some(&user_id), json!({"soft": true}))?;
        return Ok(json!({"id": user_id, "soft": true}));
    }
    // Hard: the user and every row about them. What references the user cascades (sessions,
    // refresh tokens, factors, challenges, tickets, recovery codes, codes); the rest is found
    // by id or by the number.
    for sql in [
        "DELETE FROM auth.sms_outbox o USING auth.users u
         WHERE u.id = $1::uuid AND (o.user_id = u.id OR o.phone = u.phone)",
        "DELETE FROM auth.otp_codes c USING auth.users u
         WHERE u.id = $1::uuid AND c.subject = u.phone",
        "DELETE FROM auth.send_events e USING auth.users u
         WHERE u.id = $1::uuid AND e.phone = u.phone",
        // Rows of earlier owners of the number keep their user ids and stay.
        "DELETE FROM auth.audit_log a USING auth.users u
         WHERE u.id = $1::uuid AND (a.user_id = u.id OR (a.user_id IS NULL AND a.phone = u.phone))",
        "DELETE FROM auth.users WHERE id = $1::uuid",
    ] {
        db::run(sql, &id)?;
    }
    // The record of the deletion names the id, and nothing else about the user.
    audit(
        "admin_user_deleted",
        None,
        json!({"user_id": user_id, "soft": false}),
    )?;
    Ok(json!({"id": user_id, "soft": false}))
}

fn list_factors(user_id: Option<pgrx::Uuid>) -> Result<Value> {
    let user_id = required(user_id, "user_id")?.to_string();
    existing(&user_id, false)?;
    let factors = db::rows(
        "SELECT jsonb_build_object('id', id, 'type', factor_type, 'friendly_name', friendly_name,
                                   'status', status, 'phone', phone,
                                   'created_at', created_at, 'updated_at', updated_at)
         FROM auth.mfa_factors WHERE user_id = $1::uuid ORDER BY created_at, id",
        &[db::text(&user_id)],
    )?;
    audit("admin_factors_listed", Some(&user_id), json!({}))?;
    Ok(Value::Array(factors))
}

fn delete_factor(user_id: Option<pgrx::Uuid>, factor_id: Option<pgrx::Uuid>) -> Result<Value> {
    let user_id = required(user_id, "user_id")?.to_string();
    let factor_id = required(factor_id, "factor_id")?.to_string();
    existing(&user_id, false)?;
    let deleted = db::row(
        "WITH gone AS (
             DELETE FROM auth.mfa_factors WHERE id = $2::uuid AND user_id = $1::uuid
             RETURNING id, factor_type, status),
         -- Recovery codes stand in for a verified factor; with none left they go too.
         recovery AS (
             DELETE FROM auth.mfa_recovery_codes r WHERE r.user_id = $1::uuid
               AND EXISTS (SELECT 1 FROM gone)
               AND NOT EXISTS (SELECT 1 FROM auth.mfa_factors f
                               WHERE f.user_id = $1::uuid AND f.status = 'verified'
                                 AND f.id <> $2::uuid))
         SELECT jsonb_build_object('id', id, 'factor_type', factor_type, 'status', status)
         FROM gone",
        &[db::text(&user_id), db::text(&factor_id)],
    )?
    .ok_or_else(factor_not_found)?;
    audit("admin_factor_deleted", Some(&user_id), deleted.clone())?;
    Ok(json!({"id": deleted["id"]}))
}

fn sign_out(user_id: Option<pgrx::Uuid>) -> Result<Value> {
    let user_id = required(user_id, "user_id")?.to_string();
    existing(&user_id, false)?;
    let n = db::row(
        "WITH revoked AS (
             UPDATE auth.sessions SET revoked_at = now(), revoked_reason = 'admin_sign_out'
             WHERE user_id = $1::uuid AND revoked_at IS NULL RETURNING id),
         tokens AS (
             DELETE FROM auth.refresh_tokens r USING auth.sessions s
             WHERE s.id = r.session_id AND s.user_id = $1::uuid)
         SELECT to_jsonb(count(*)) FROM revoked",
        &[db::text(&user_id)],
    )?
    .unwrap_or(json!(0));
    audit(
        "admin_sign_out",
        Some(&user_id),
        json!({"revoked_sessions": n}),
    )?;
    Ok(json!({"revoked_sessions": n}))
}

crate::answer::api_function!(
    auth_admin_create_user,
    (
        phone: Option<&str>,
        phone_confirmed: Option<bool>,
        display_name: Option<&str>,
        locale: Option<&str>,
        metadata: Option<JsonB>,
        roles: Option<Vec<Option<String>>>,
        default_role: Option<&str>,
    ) => create_user(phone, phone_confirmed, display_name, locale, metadata, roles, default_role)
);

crate::answer::api_function!(
    auth_admin_get_user,
    (user_id: Option<pgrx::Uuid>) => get_user(user_id)
);

crate::answer::api_function!(
    auth_admin_list_users,
    (
        page: Option<i32>,
        per_page: Option<i32>,
        phone_prefix: Option<&str>,
    ) => list_users(page, per_page, phone_prefix)
);

crate::answer::api_function!(
    auth_admin_update_user,
    (user_id: Option<pgrx::Uuid>, attributes: Option<JsonB>) => update_user(user_id, attributes)
);

crate::answer::api_function!(
    auth_admin_delete_user,
    (user_id: Option<pgrx::Uuid>, soft: Option<bool>) => delete_user(user_id, soft)
);

crate::answer::api_function!(
    auth_admin_list_factors,
    (user_id: Option<pgrx::Uuid>) => list_factors(user_id)
);

crate::answer::api_function!(
    auth_admin_delete_factor,
    (
        user_id: Option<pgrx::Uuid>,
        factor_id: Option<pgrx::Uuid>,
    ) => delete_factor(user_id, factor_id)
);

crate::answer::api_function!(
    auth_admin_sign_out,
    (user_id: Option<pgrx::Uuid>) => sign_out(user_id)
);
