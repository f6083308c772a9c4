//! A new user's profile from sign-up options (Nhost's `options` object).

use crate::error::{AuthError, Result};
use serde_json::{Map, Value};
use unicode_general_category::{get_general_category, GeneralCategory as G};

pub const MAX_METADATA_BYTES: usize = 16 * 1024;
pub const MAX_DISPLAY_NAME_CHARS: usize = 32;

/// The policy sign-up options are checked against (from the install's settings).
#[derive(Debug, Clone)]
pub struct Policy<'a> {
    pub allowed_roles: &'a [String],
    pub default_role: &'a str,
    pub allowed_locales: &'a [String],
    pub default_locale: &'a str,
    pub allowed_redirect_prefixes: &'a [String],
}

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub roles: Vec<String>,
    pub default_role: String,
    pub display_name: Option<String>,
    pub locale: String,
    pub metadata: Value,
    pub redirect_to: Option<String>,
}

impl Profile {
    pub fn default_for(policy: &Policy) -> Profile {
        Profile {
            roles: policy.allowed_roles.to_vec(),
            default_role: policy.default_role.to_string(),
            display_name: None,
            locale: policy.default_locale.to_string(),
            metadata: Value::Object(Map::new()),
            redirect_to: None,
        }
    }
}

const OPTION_KEYS: &[&str] = &[
    "allowedRoles",
    "defaultRole",
    "displayName",
    "locale",
    "metadata",
    "redirectTo",
];

pub fn from_options(options: &Value, policy: &Policy) -> Result<Profile> {
    let obj = options
        .as_object()
        .ok_or_else(|| AuthError::invalid_request("options must be a JSON object."))?;
    if let Some(k) = obj.keys().find(|k| !OPTION_KEYS.contains(&k.as_str())) {
        return Err(AuthError::invalid_request(format!("Unknown option {k}.")));
    }
    let mut p = Profile::default_for(policy);
    if let Some(v) = obj.get("allowedRoles") {
        p.roles = string_list(v, "allowedRoles")?;
        if p.roles.is_empty() {
            return Err(AuthError::invalid_request(
                "allowedRoles must not be empty.",
            ));
        }
        if let Some(r) = p.roles.iter().find(|r| !role_allowed(r, policy)) {
            return Err(AuthError::new(
                400,
                "role-not-allowed",
                format!("The role {r} is not allowed."),
            ));
        }
    }
    if let Some(v) = obj.get("defaultRole") {
        p.default_role = v
            .as_str()
            .ok_or_else(|| AuthError::invalid_request("defaultRole must be a string."))?
            .to_string();
    }
    if !p.roles.contains(&p.default_role) {
        return Err(AuthError::new(
            400,
            "default-role-must-be-in-allowed-roles",
            "The default role must be one of the allowed roles.",
        ));
    }
    if let Some(v) = obj.get("displayName") {
        let name = v
            .as_str()
            .ok_or_else(|| AuthError::invalid_request("displayName must be a string."))?;
        check_display_name(name)?;
        p.display_name = Some(name.to_string());
    }
    if let Some(v) = obj.get("locale") {
        let locale = v.as_str().unwrap_or_default();
        if !locale_allowed(locale, policy) {
            return Err(AuthError::new(
                400,
                "locale-not-allowed",
                "The locale is not allowed.",
            ));
        }
        p.locale = locale.to_string();
    }
    if let Some(v) = obj.get("metadata") {
        p.metadata = check_metadata(v)?.clone();
    }
    if let Some(v) = obj.get("redirectTo") {
        let uri = v.as_str().unwrap_or_default();
        if !redirect_allowed(uri, policy.allowed_redirect_prefixes) {
            return Err(AuthError::new(
                400,
                "redirectTo-not-allowed",
                "The redirect URL is not allowed.",
            ));
        }
        p.redirect_to = Some(uri.to_string());
    }
    Ok(p)
}

/// A locale users may choose: 2 or 3 characters, one of `allowed_locales`.
pub fn locale_allowed(locale: &str, policy: &Policy) -> bool {
    (2..=3).contains(&locale.chars().count()) && policy.allowed_locales.iter().any(|l| l == locale)
}

/// A role users may be given: one of `allowed_roles`.
pub fn role_allowed(role: &str, policy: &Policy) -> bool {
    policy.allowed_roles.iter().any(|r| r == role)
}

fn string_list(v: &Value, what: &str) -> Result<Vec<String>> {
    let bad = || AuthError::invalid_request(format!("{what} must be an array of strings."));
    v.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|x| x.as_str().map(str::to_string).ok_or_else(bad))
        .collect()
}

/// User metadata: a JSON object of at most 16 KiB (serialised).
pub fn check_metadata(v: &Value) -> Result<&Value> {
    if !v.is_object() {
        return Err(AuthError::invalid_request(
            "metadata must be a JSON object.",
        ));
    }
    if serde_json::to_string(v)
        .map(|s| s.len())
        .unwrap_or(usize::MAX)
        > MAX_METADATA_BYTES
    {
        return Err(AuthError::invalid_request(
            "metadata must be at most 16 KiB.",
        ));
    }
    Ok(v)
}

/// ≤ 32 characters of letters, digits, symbols, space and `,.'-` (Nhost's rule).
pub fn check_display_name(name: &str) -> Result<()> {
    let ok_char = |c: char| {
        matches!(c, ' ' | ',' | '.' | '\'' | '-')
            || matches!(
                get_general_category(c),
                G::UppercaseLetter
                    | G::LowercaseLetter
                    | G::TitlecaseLetter
                    | G::ModifierLetter
                    | G::OtherLetter
                    | G::DecimalNumber
                    | G::LetterNumber
                    | G::OtherNumber
                    | G::MathSymbol
                    | G::CurrencySymbol
                    | G::ModifierSymbol
                    | G::OtherSymbol
            )
    };
    let n = name.chars().count();
    if n == 0 || n > MAX_DISPLAY_NAME_CHARS || !name.chars().all(ok_char) {
        return Err(AuthError::invalid_request(
            "displayName must be 1 to 32 letters, digits, symbols, spaces or ,.'-",
        ));
    }
    Ok(())
}

/// A redirect must be an absolute URI under one of the allowed prefixes, on a path boundary, so
/// `https://app.example.com` does not admit `https://app.example.com.evil.test`.
pub fn redirect_allowed(uri: &str, prefixes: &[String]) -> bool {
    let scheme_end = match uri.find("://") {
        Some(i) if i > 0 => i,
        _ => return false,
    };
    let scheme_ok = uri[..scheme_end].chars().enumerate().all(|(i, c)| {
        c.is_ascii_alphabetic() || (i > 0 && (c.is_ascii_digit() || "+.-".contains(c)))
    });
    if !scheme_ok || uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    prefixes.iter().any(|p| match uri.strip_prefix(p.as_str()) {
        Some(rest) => p.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?', '#']),
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn with_policy<T>(f: impl FnOnce(&Policy) -> T) -> T {
        let roles = strings(&["authenticated", "editor"]);
        let locales = strings(&["en", "fr", "fil"]);
        let prefixes = strings(&["https://app.example.com", "myapp://"]);
        f(&Policy {
            allowed_roles: &roles,
            default_role: "authenticated",
            allowed_locales: &locales,
            default_locale: "en",
            allowed_redirect_prefixes: &prefixes,
        })
    }

    #[test]
    fn empty_options_give_the_default_profile() {
        let p = with_policy(|pol| from_options(&json!({}), pol)).unwrap();
        assert_eq!(p.roles, strings(&["authenticated", "editor"]));
        assert_eq!(p.default_role, "authenticated");
        assert_eq!(p.locale, "en");
        assert_eq!(p.metadata, json!({}));
    }

    #[test]
    fn full_options_are_applied() {
        let p = with_policy(|pol| {
            from_options(
                &json!({"allowedRoles": ["editor"], "defaultRole": "editor", "displayName": "Zoë O'Neil-Smith",
                        "locale": "fil", "metadata": {"a": 1}, "redirectTo": "https://app.example.com/welcome"}),
                pol,
            )
        })
        .unwrap();
        assert_eq!(p.roles, strings(&["editor"]));
        assert_eq!(p.default_role, "editor");
        assert_eq!(p.display_name.as_deref(), Some("Zoë O'Neil-Smith"));
        assert_eq!(p.locale, "fil");
        assert_eq!(
            p.redirect_to.as_deref(),
            Some("https://app.example.com/welcome")
        );
    }

    #[test]
    fn each_bad_option_has_its_code() {
        let cases = [
            (json!([]), "invalid-request"),
            (json!({"bogus": 1}), "invalid-request"),
            (json!({"allowedRoles": ["admin"]}), "role-not-allowed"),
            (json!({"allowedRoles": "editor"}), "invalid-request"),
            (json!({"allowedRoles": []}), "invalid-request"),
            (
                json!({"allowedRoles": ["editor"]}),
                "default-role-must-be-in-allowed-roles",
            ),
            (
                json!({"defaultRole": "admin"}),
                "default-role-must-be-in-allowed-roles",
            ),
            (json!({"displayName": "x".repeat(33)}), "invalid-request"),
            (json!({"displayName": "alert(1)"}), "invalid-request"),
            (json!({"displayName": ""}), "invalid-request"),
            (json!({"locale": "de"}), "locale-not-allowed"),
            (json!({"locale": "english"}), "locale-not-allowed"),
            (json!({"metadata": [1]}), "invalid-request"),
            (
                json!({"metadata": {"x": "y".repeat(16 * 1024)}}),
                "invalid-request",
            ),
            (
                json!({"redirectTo": "https://evil.test/"}),
                "redirectTo-not-allowed",
            ),
            (
                json!({"redirectTo": "https://app.example.com.evil.test/"}),
                "redirectTo-not-allowed",
            ),
            (json!({"redirectTo": "not a uri"}), "redirectTo-not-allowed"),
        ];
        for (opts, code) in cases {
            let e = with_policy(|pol| from_options(&opts, pol)).unwrap_err();
            assert_eq!(e.code, code, "{opts}");
            assert_eq!(e.status, 400);
        }
    }

    #[test]
    fn display_name_allows_symbols_and_caps_length() {
        assert!(check_display_name("Ana € 100 ☃").is_ok());
        assert!(check_display_name(&"é".repeat(32)).is_ok());
        assert!(check_display_name("tab\tname").is_err());
        assert!(check_display_name("semi;colon").is_err());
    }

    #[test]
    fn redirect_prefix_matching_respects_boundaries() {
        let p = strings(&["https://app.example.com", "myapp://"]);
        assert!(redirect_allowed("https://app.example.com", &p));
        assert!(redirect_allowed("https://app.example.com?x=1", &p));
        assert!(redirect_allowed("myapp://callback", &p));
        assert!(!redirect_allowed("https://app.example.company", &p));
        assert!(!redirect_allowed("https://app.example.com/ x", &p));
        assert!(!redirect_allowed("https://app.example.com", &[]));
    }
}
