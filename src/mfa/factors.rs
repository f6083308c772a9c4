//! A user's second factors: enrolling (TOTP with its secret and QR code, or a phone), listing
//! and removing them.

use super::{audit, insufficient_aal, my_factor, totp_already_active};
use crate::request::{self, CurrentSession};
use crate::{config, db};
use pg_otp_auth_core::error::{required, AuthError, Result};
use pg_otp_auth_core::mfa::{check_friendly_name, check_issuer};
use pg_otp_auth_core::totp::{self, Params};
use pg_otp_auth_core::{otp, phone};
use pgrx::Uuid;
use serde::Deserialize;
use serde_json::{json, Value};

const TOTP_SECRET_BYTES: usize = 20;

fn enroll(
    factor_type: Option<&str>,
    friendly_name: Option<&str>,
    phone_number: Option<&str>,
    issuer: Option<&str>,
) -> Result<Value> {
    let factor_type = required(factor_type, "factor_type")?;
    if !matches!(factor_type, "totp" | "phone") {
        return Err(AuthError::new(
            400,
            "mfa-type-not-found",
            "factor_type must be totp or phone.",
        ));
    }
    if let Some(n) = friendly_name {
        check_friendly_name(n)?;
    }
    let phone_number = match (factor_type, phone_number) {
        ("phone", Some(p)) => Some(phone::normalize(p)?),
        ("phone", None) => return Err(AuthError::missing("phone")),
        (_, Some(_)) => {
            return Err(AuthError::invalid_request(
                "phone is only for phone factors.",
            ))
        }
        (_, None) => None,
    };
    if factor_type == "phone" && issuer.is_some() {
        return Err(AuthError::invalid_request(
            "issuer is only for TOTP factors.",
        ));
    }
    let me = request::current_session()?;
    let cfg = config::load()?;
    let issuer = issuer.unwrap_or(&cfg.mfa_totp_issuer).to_string();
    check_issuer(&issuer)?;
    db::lock("user", &me.user_id)?;
    // Enrollments abandoned for a day make room (and free their names) for new ones.
    db::run(
        "DELETE FROM auth.mfa_factors WHERE user_id = $1::uuid AND status = 'unverified'
           AND created_at < now() - interval '1 day'",
        &[db::text(&me.user_id)],
    )?;
    #[derive(Deserialize)]
    struct Existing {
        count: i64,
        any_verified: bool,
        totp_active: bool,
        name_taken: bool,
        account: String,
    }
    let e: Existing = db::row_as(
        "SELECT jsonb_build_object(
             'count', (SELECT count(*) FROM auth.mfa_factors WHERE user_id = u.id),
             'any_verified', EXISTS (SELECT 1 FROM auth.mfa_factors WHERE user_id = u.id
                                     AND status = 'verified'),
             'totp_active', EXISTS (SELECT 1 FROM auth.mfa_factors WHERE user_id = u.id
                                    AND factor_type = 'totp' AND status = 'verified'),
             'name_taken', EXISTS (SELECT 1 FROM auth.mfa_factors WHERE user_id = u.id
                                   AND friendly_name = $2),
             'account', coalesce(u.phone, u.id::text))
         FROM auth.users u WHERE u.id = $1::uuid",
        &[db::text(&me.user_id), db::opt_text(friendly_name)],
    )?
    .ok_or_else(AuthError::not_authenticated)?;
    // Otherwise a stolen aal1 session could add its own factor and verify its way to aal2.
    if e.any_verified && !me.is_aal2() {
        return Err(insufficient_aal(
            "Adding a factor when one is verified needs an aal2 session.",
        ));
    }
    if e.count >= cfg.mfa_max_factors {
        return Err(AuthError::new(
            409,
            "too-many-factors",
            "The maximum number of factors is enrolled.",
        ));
    }
    if e.name_taken {
        return Err(AuthError::new(
            409,
            "factor-name-conflict",
            "A factor with this friendly name exists.",
        ));
    }
    let answer = if factor_type == "totp" {
        if e.totp_active {
            return Err(totp_already_active());
        }
        let mut secret = [0u8; TOTP_SECRET_BYTES];
        otp::random_bytes(&mut secret)?;
        let secret_b32 = totp::base32_encode(&secret);
        let uri = totp::key_uri(&issuer, &e.account, &secret_b32, Params::default());
        let id = insert_factor(&me, "totp", friendly_name, Some(&secret), None)?;
        json!({"id": id, "type": "totp", "friendly_name": friendly_name,
               "totp": {"qr_code": totp::qr_svg(&uri)?, "secret": secret_b32, "uri": uri}})
    } else {
        let id = insert_factor(&me, "phone", friendly_name, None, phone_number.as_deref())?;
        json!({"id": id, "type": "phone", "friendly_name": friendly_name, "phone": phone_number})
    };
    audit(
        "mfa_enrolled",
        &me.user_id,
        request::client_ip(&cfg)?.as_deref(),
        json!({"factor_id": answer["id"], "factor_type": factor_type}),
    )?;
    Ok(answer)
}

fn insert_factor(
    me: &CurrentSession,
    factor_type: &str,
    friendly_name: Option<&str>,
    secret: Option<&[u8]>,
    phone_number: Option<&str>,
) -> Result<Value> {
    db::row(
        "INSERT INTO auth.mfa_factors (user_id, factor_type, friendly_name, secret, phone)
         VALUES ($1::uuid, $2, $3, $4, $5) RETURNING to_jsonb(id)",
        &[
            db::text(&me.user_id),
            db::text(factor_type),
            db::opt_text(friendly_name),
            secret.map(<[u8]>::to_vec).into(),
            db::opt_text(phone_number),
        ],
    )?
    .ok_or_else(|| AuthError::internal("The factor could not be stored."))
}

fn unenroll(factor_id: Option<Uuid>) -> Result<Value> {
    let factor_id = required(factor_id, "factor_id")?.to_string();
    let me = request::current_session()?;
    let factor = my_factor(&me, &factor_id)?;
    if factor.status == "verified" && !me.is_aal2() {
        return Err(insufficient_aal(
            "Removing a verified factor needs an aal2 session.",
        ));
    }
    db::run(
        "DELETE FROM auth.mfa_factors WHERE id = $1::uuid",
        &[db::text(&factor.id)],
    )?;
    audit(
        "mfa_unenrolled",
        &me.user_id,
        request::client_ip(&*config::load()?)?.as_deref(),
        json!({"factor_id": factor.id, "factor_type": factor.factor_type}),
    )?;
    Ok(json!({"id": factor.id}))
}

fn list_factors() -> Result<Value> {
    let me = request::current_session()?;
    let all = db::rows(
        "SELECT jsonb_build_object('id', id, 'type', factor_type, 'friendly_name', friendly_name,
                                   'status', status, 'created_at', created_at, 'updated_at', updated_at)
         FROM auth.mfa_factors WHERE user_id = $1::uuid ORDER BY created_at, id",
        &[db::text(&me.user_id)],
    )?;
    let verified = |t: &str| -> Vec<Value> {
        all.iter()
            .filter(|f| f["type"] == t && f["status"] == "verified")
            .cloned()
            .collect()
    };
    Ok(json!({"all": all, "totp": verified("totp"), "phone": verified("phone")}))
}

crate::answer::api_function!(
    auth_mfa_enroll,
    (
        factor_type: Option<&str>,
        friendly_name: Option<&str>,
        phone: Option<&str>,
        issuer: Option<&str>,
    ) => enroll(factor_type, friendly_name, phone, issuer)
);

crate::answer::api_function!(
    auth_mfa_unenroll,
    (factor_id: Option<Uuid>) => unenroll(factor_id)
);

crate::answer::api_function!(
    auth_mfa_list_factors,
    () => list_factors()
);
