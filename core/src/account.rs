//! Changes to an existing account: what a user may change on their own profile, and what an
//! administrator may change on any user. Validation only; the extension applies the result.

use crate::config::parse_duration;
use crate::error::{AuthError, Result};
use crate::phone;
use crate::profile::{
    check_display_name, check_metadata, locale_allowed, role_allowed, Policy, MAX_METADATA_BYTES,
};
use serde_json::{Map, Value};

pub const MAX_AVATAR_URL_CHARS: usize = 2048;
/// The longest ban: about 100 years, far past any token or session lifetime.
pub const MAX_BAN_SECONDS: i64 = 100 * 365 * 86_400;

/// A ban given with `ban_duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ban {
    /// `none`: lift any ban.
    Lift,
    /// Banned for this many seconds from now.
    For(i64),
}

/// The attributes to change; `None` leaves one as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub phone: Option<String>,
    pub phone_confirmed: Option<bool>,
    /// `Some(None)` clears the display name.
    pub display_name: Option<Option<String>>,
    pub locale: Option<String>,
    /// `Some(None)` clears the avatar.
    pub avatar_url: Option<Option<String>>,
    /// Merged into the stored metadata (see [`merge_metadata`]).
    pub metadata: Option<Value>,
    pub roles: Option<Vec<String>>,
    pub default_role: Option<String>,
    pub ban: Option<Ban>,
}

fn invalid(field: &str, what: &str) -> AuthError {
    AuthError::invalid_request(format!("{field} {what}"))
}

/// A display name, or JSON null / "" to clear it.
pub fn display_name(field: &str, v: &Value) -> Result<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => {
            check_display_name(s).map_err(|_| {
                invalid(
                    field,
                    "must be 1 to 32 letters, digits, symbols, spaces or ,.'-",
                )
            })?;
            Ok(Some(s.clone()))
        }
        _ => Err(invalid(field, "must be a string.")),
    }
}

/// One of the install's allowed locales.
pub fn locale(field: &str, v: &Value, policy: &Policy) -> Result<String> {
    let l = v
        .as_str()
        .ok_or_else(|| invalid(field, "must be a string."))?;
    if locale_allowed(l, policy) {
        Ok(l.to_string())
    } else {
        Err(AuthError::new(
            400,
            "locale-not-allowed",
            format!("{field}: the locale is not allowed."),
        ))
    }
}

/// An absolute http(s) URL of at most 2048 characters, or JSON null / "" to clear it.
pub fn avatar_url(field: &str, v: &Value) -> Result<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => {
            let lower = s.to_ascii_lowercase();
            let scheme_ok = lower.starts_with("https://") || lower.starts_with("http://");
            let host_ok = s
                .split_once("://")
                .is_some_and(|(_, rest)| !rest.is_empty() && !rest.starts_with(['/', '?', '#']));
            if !scheme_ok
                || !host_ok
                || s.chars().count() > MAX_AVATAR_URL_CHARS
                || s.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(invalid(
                    field,
                    "must be an http or https URL of at most 2048 characters.",
                ));
            }
            Ok(Some(s.clone()))
        }
        _ => Err(invalid(field, "must be a string.")),
    }
}

/// A metadata patch: a JSON object of at most 16 KiB.
pub fn metadata(field: &str, v: &Value) -> Result<Value> {
    check_metadata(v)
        .cloned()
        .map_err(|_| invalid(field, "must be a JSON object of at most 16 KiB."))
}

/// Metadata is merged, not replaced: each top-level key of `patch` replaces the stored one, and
/// a key set to null is removed. The result must still be at most 16 KiB.
pub fn merge_metadata(stored: &Value, patch: &Value) -> Result<Value> {
    let mut merged: Map<String, Value> = stored.as_object().cloned().unwrap_or_default();
    for (k, v) in patch.as_object().into_iter().flatten() {
        if v.is_null() {
            merged.remove(k);
        } else {
            merged.insert(k.clone(), v.clone());
        }
    }
    let merged = Value::Object(merged);
    if serde_json::to_string(&merged).map_or(usize::MAX, |s| s.len()) > MAX_METADATA_BYTES {
        return Err(invalid(
            "metadata",
            "would be larger than 16 KiB once merged.",
        ));
    }
    Ok(merged)
}

/// A role name as PostgREST switches to it: a plain identifier.
fn role_name_ok(r: &str) -> bool {
    let mut chars = r.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && r.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Roles are granted only from `allowed_roles`, as at sign-up: `default_role` becomes the
/// token's `role` claim, which PostgREST switches to, so an administrator must not be able to
/// mint users who act as, say, the service role.
fn allowed_role(field: &str, r: &str, policy: &Policy) -> Result<String> {
    if role_allowed(r, policy) {
        Ok(r.to_string())
    } else {
        Err(AuthError::new(
            400,
            "role-not-allowed",
            format!("{field}: the role {r} is not in allowed_roles."),
        ))
    }
}

fn roles(v: &Value, policy: &Policy) -> Result<Vec<String>> {
    let bad = || invalid("roles", "must be a non-empty array of role names.");
    let list = v.as_array().ok_or_else(bad)?;
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for r in list {
        let r = r.as_str().filter(|r| role_name_ok(r)).ok_or_else(bad)?;
        let r = allowed_role("roles", r, policy)?;
        if !out.contains(&r) {
            out.push(r);
        }
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// `ban_duration`: `none` lifts a ban; otherwise a duration (seconds, `HH:MM:SS`, or like
/// `7 days` / `24h`) of at least one second.
pub fn ban(v: &Value) -> Result<Ban> {
    if v.as_str()
        .is_some_and(|s| s.trim().eq_ignore_ascii_case("none"))
    {
        return Ok(Ban::Lift);
    }
    let bad = || {
        invalid(
            "ban_duration",
            "must be none or a duration such as '24 hours' or '7 days'.",
        )
    };
    let seconds = parse_duration(v).map_err(|_| bad())?;
    if !(1..=MAX_BAN_SECONDS).contains(&seconds) {
        return Err(bad());
    }
    Ok(Ban::For(seconds))
}

const ADMIN_KEYS: &[&str] = &[
    "phone",
    "phone_confirmed",
    "display_name",
    "locale",
    "avatar_url",
    "metadata",
    "roles",
    "default_role",
    "ban_duration",
];

/// The attributes of `auth.admin_update_user`: every key checked, unknown keys refused, each
/// error naming its field. `default_role` must be among the resulting roles (checked by the
/// caller, who knows the stored ones).
pub fn admin_changes(attributes: &Value, policy: &Policy) -> Result<Changes> {
    let obj = attributes
        .as_object()
        .ok_or_else(|| invalid("attributes", "must be a JSON object."))?;
    if let Some(k) = obj.keys().find(|k| !ADMIN_KEYS.contains(&k.as_str())) {
        return Err(AuthError::invalid_request(format!(
            "attributes: unknown attribute {k}."
        )));
    }
    let mut c = Changes::default();
    if let Some(v) = obj.get("phone") {
        let p = v
            .as_str()
            .ok_or_else(|| invalid("phone", "must be a string."))?;
        c.phone = Some(phone::normalize(p)?);
    }
    if let Some(v) = obj.get("phone_confirmed") {
        c.phone_confirmed = Some(
            v.as_bool()
                .ok_or_else(|| invalid("phone_confirmed", "must be true or false."))?,
        );
    }
    if let Some(v) = obj.get("display_name") {
        c.display_name = Some(display_name("display_name", v)?);
    }
    if let Some(v) = obj.get("locale") {
        c.locale = Some(locale("locale", v, policy)?);
    }
    if let Some(v) = obj.get("avatar_url") {
        c.avatar_url = Some(avatar_url("avatar_url", v)?);
    }
    if let Some(v) = obj.get("metadata") {
        c.metadata = Some(metadata("metadata", v)?);
    }
    if let Some(v) = obj.get("roles") {
        c.roles = Some(roles(v, policy)?);
    }
    if let Some(v) = obj.get("default_role") {
        let r = v
            .as_str()
            .filter(|r| role_name_ok(r))
            .ok_or_else(|| invalid("default_role", "must be a role name."))?;
        c.default_role = Some(allowed_role("default_role", r, policy)?);
    }
    if let Some(v) = obj.get("ban_duration") {
        c.ban = Some(ban(v)?);
    }
    Ok(c)
}

/// The roles and default role after `c`, checked together: the default must be one of the roles.
pub fn resolve_roles(
    c: &Changes,
    stored_roles: &[String],
    stored_default: &str,
) -> Result<(Vec<String>, String)> {
    let roles = c.roles.clone().unwrap_or_else(|| stored_roles.to_vec());
    let default = c
        .default_role
        .clone()
        .unwrap_or_else(|| stored_default.to_string());
    if !roles.contains(&default) {
        return Err(AuthError::new(
            400,
            "default-role-must-be-in-allowed-roles",
            "default_role must be one of roles.",
        ));
    }
    Ok((roles, default))
}

/// A page of `admin_list_users`: 1-based page, 1 to 1000 per page. Answers (limit, offset).
pub fn page(page: i64, per_page: i64) -> Result<(i64, i64)> {
    if page < 1 {
        return Err(invalid("page", "must be 1 or more."));
    }
    if !(1..=1000).contains(&per_page) {
        return Err(invalid("per_page", "must be 1 to 1000."));
    }
    let offset = (page - 1)
        .checked_mul(per_page)
        .ok_or_else(|| invalid("page", "is too large."))?;
    Ok((per_page, offset))
}

/// A phone prefix filter: `+` and up to 15 digits.
pub fn phone_prefix(p: &str) -> Result<String> {
    let digits = p.strip_prefix('+').unwrap_or(p);
    if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("phone_prefix", "must be + and 1 to 15 digits."));
    }
    Ok(format!("+{digits}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> (Vec<String>, Vec<String>) {
        (
            vec!["user".into(), "me".into()],
            vec!["en".into(), "fr".into()],
        )
    }

    fn with_policy<T>(f: impl FnOnce(&Policy) -> T) -> T {
        let (roles, locales) = policy();
        let p = Policy {
            allowed_roles: &roles,
            default_role: "user",
            allowed_locales: &locales,
            default_locale: "en",
            allowed_redirect_prefixes: &[],
        };
        f(&p)
    }

    fn err_message(r: Result<impl std::fmt::Debug>) -> String {
        r.expect_err("an error").message
    }

    #[test]
    fn admin_attributes_are_parsed_and_each_error_names_its_field() {
        let c = with_policy(|p| {
            admin_changes(
                &json!({"phone": "+44 7911 123456", "phone_confirmed": true,
                        "display_name": "Ana", "locale": "fr", "metadata": {"a": 1},
                        "roles": ["user", "me", "user"], "default_role": "me",
                        "ban_duration": "7 days", "avatar_url": null}),
                p,
            )
        })
        .unwrap();
        assert_eq!(c.phone.as_deref(), Some("+447911123456"));
        assert_eq!(c.phone_confirmed, Some(true));
        assert_eq!(c.display_name, Some(Some("Ana".into())));
        assert_eq!(c.roles, Some(vec!["user".into(), "me".into()]));
        assert_eq!(c.ban, Some(Ban::For(7 * 86_400)));
        assert_eq!(c.avatar_url, Some(None));

        for (attrs, field) in [
            (json!({"phone_confirmed": "yes"}), "phone_confirmed"),
            (json!({"display_name": "x".repeat(33)}), "display_name"),
            (json!({"metadata": [1]}), "metadata"),
            (json!({"roles": []}), "roles"),
            (json!({"roles": ["ok", "no way"]}), "roles"),
            (json!({"default_role": 5}), "default_role"),
            (json!({"ban_duration": "forever"}), "ban_duration"),
            (json!({"ban_duration": 0}), "ban_duration"),
            (json!({"avatar_url": "javascript:alert(1)"}), "avatar_url"),
            (json!({"shoe_size": 44}), "shoe_size"),
        ] {
            let m = err_message(with_policy(|p| admin_changes(&attrs, p)));
            assert!(m.contains(field), "{attrs}: {m}");
        }
        let e = with_policy(|p| admin_changes(&json!({"locale": "de"}), p)).unwrap_err();
        assert_eq!(e.code, "locale-not-allowed");
        for attrs in [
            json!({"roles": ["user", "service_role"]}),
            json!({"default_role": "postgres"}),
        ] {
            let e = with_policy(|p| admin_changes(&attrs, p)).unwrap_err();
            assert_eq!(e.code, "role-not-allowed", "{attrs}");
        }
        let e = with_policy(|p| admin_changes(&json!({"phone": "12"}), p)).unwrap_err();
        assert_eq!(e.code, "invalid-phone");
        assert!(with_policy(|p| admin_changes(&json!([]), p)).is_err());
    }

    #[test]
    fn bans_are_lifted_with_none_and_bounded() {
        assert_eq!(ban(&json!("none")).unwrap(), Ban::Lift);
        assert_eq!(ban(&json!(" NONE ")).unwrap(), Ban::Lift);
        assert_eq!(ban(&json!("24h")).unwrap(), Ban::For(86_400));
        assert_eq!(ban(&json!("2 weeks")).unwrap(), Ban::For(14 * 86_400));
        assert_eq!(ban(&json!(90)).unwrap(), Ban::For(90));
        assert_eq!(ban(&json!("01:30:00")).unwrap(), Ban::For(5400));
        assert!(ban(&json!(-5)).is_err());
        assert!(ban(&json!("200000 days")).is_err());
        assert!(ban(&json!(null)).is_err());
    }

    #[test]
    fn metadata_is_merged_key_by_key_and_null_removes() {
        let merged = merge_metadata(
            &json!({"a": 1, "b": {"x": 1}, "c": 3}),
            &json!({"b": {"y": 2}, "c": null, "d": 4}),
        )
        .unwrap();
        assert_eq!(merged, json!({"a": 1, "b": {"y": 2}, "d": 4}));
        let big = json!({"k": "x".repeat(10_000)});
        let e = merge_metadata(&big, &json!({"j": "y".repeat(10_000)})).unwrap_err();
        assert!(e.message.contains("metadata"));
    }

    #[test]
    fn default_role_must_stay_among_the_roles() {
        let stored = vec!["user".to_string(), "me".to_string()];
        let c = Changes {
            roles: Some(vec!["me".into()]),
            ..Changes::default()
        };
        assert_eq!(
            resolve_roles(&c, &stored, "user").unwrap_err().code,
            "default-role-must-be-in-allowed-roles"
        );
        let c = Changes {
            roles: Some(vec!["me".into()]),
            default_role: Some("me".into()),
            ..Changes::default()
        };
        assert_eq!(
            resolve_roles(&c, &stored, "user").unwrap(),
            (vec!["me".to_string()], "me".to_string())
        );
    }

    #[test]
    fn avatar_urls_and_display_names() {
        assert_eq!(
            avatar_url("avatar_url", &json!("https://cdn.example.com/a.png")).unwrap(),
            Some("https://cdn.example.com/a.png".into())
        );
        assert_eq!(avatar_url("avatar_url", &json!("")).unwrap(), None);
        for bad in ["ftp://x/a.png", "https://", "https:///a", "https://a b"] {
            assert!(avatar_url("avatar_url", &json!(bad)).is_err(), "{bad}");
        }
        assert!(avatar_url(
            "avatar_url",
            &json!(format!("https://a/{}", "x".repeat(2048)))
        )
        .is_err());
        assert_eq!(display_name("display_name", &json!(null)).unwrap(), None);
        assert!(display_name("display_name", &json!("tab\there")).is_err());
    }

    #[test]
    fn pages_and_prefixes() {
        assert_eq!(page(1, 50).unwrap(), (50, 0));
        assert_eq!(page(3, 1000).unwrap(), (1000, 2000));
        assert!(page(0, 50).unwrap_err().message.contains("page"));
        assert!(page(1, 1001).unwrap_err().message.contains("per_page"));
        assert!(page(1, 0).is_err());
        assert!(page(i64::MAX, 1000).is_err());
        assert_eq!(phone_prefix("+4479").unwrap(), "+4479");
        assert_eq!(phone_prefix("44").unwrap(), "+44");
        assert!(phone_prefix("+44%").is_err());
        assert!(phone_prefix("+").is_err());
    }
}
