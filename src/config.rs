//! Settings and secrets as stored in the database.

use crate::{audit, db};
use pg_otp_auth_core::config::{self, Config, Kind, SETTINGS};
use pg_otp_auth_core::error::{required, AuthError, Result};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Map, Value};

fn overrides() -> Result<Map<String, Value>> {
    let v = db::row(
        "SELECT coalesce(jsonb_object_agg(key, value), '{}') FROM auth.config",
        &[],
    )?;
    Ok(v.and_then(|v| v.as_object().cloned()).unwrap_or_default())
}

pub fn load() -> Result<Config> {
    require_schema_of_this_library()?;
    Config::from_overrides(&overrides()?)
}

/// After a new library is installed, databases still have the old version's schema until
/// `ALTER EXTENSION pg_otp_auth UPDATE`; calls then fail with this clear error instead of a
/// missing table. Checked until it matches once per backend (versions only go up).
fn require_schema_of_this_library() -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static MATCHED: AtomicBool = AtomicBool::new(false);
    if MATCHED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let installed = db::read_row(
        "SELECT to_jsonb(extversion) FROM pg_catalog.pg_extension WHERE extname = 'pg_otp_auth'",
        &[],
    )?;
    let library = env!("CARGO_PKG_VERSION");
    if installed.as_ref().and_then(Value::as_str) == Some(library) {
        MATCHED.store(true, Ordering::Relaxed);
        return Ok(());
    }
    Err(AuthError::new(
        503,
        "update-required",
        format!(
            "The pg_otp_auth library is version {library}; run ALTER EXTENSION pg_otp_auth UPDATE in this database."
        ),
    ))
}

pub fn secret(name: &str) -> Result<Vec<u8>> {
    db::bytes(
        "SELECT value FROM auth.secrets WHERE name = $1",
        &[db::text(name)],
    )?
    .ok_or_else(|| AuthError::internal(format!("The {name} secret is missing.")))
}

fn listing() -> Result<Value> {
    let stored = overrides()?;
    let rows: Vec<Value> = SETTINGS
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "value": stored.get(s.name).cloned().unwrap_or_else(s.default),
                "is_default": !stored.contains_key(s.name),
                "description": s.description,
            })
        })
        .collect();
    Ok(Value::Array(rows))
}

fn set(name: &str, value: &Value) -> Result<Value> {
    let setting = config::setting(name)?;
    let value = if matches!(setting.kind, Kind::Seconds { .. }) {
        Value::from(config::parse_duration(value)?)
    } else {
        value.clone()
    };
    let value = config::check_value(name, &value)?;
    let mut all = overrides()?;
    all.insert(name.to_string(), value.clone());
    Config::from_overrides(&all)?.validate()?;
    db::run(
        "INSERT INTO auth.config (key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now()",
        &[db::text(name), db::jsonb(value)],
    )?;
    audit::record("setting_changed", None, None, None, json!({"name": name}))?;
    listing()
}

fn reset(name: &str) -> Result<Value> {
    config::setting(name)?;
    let mut all = overrides()?;
    all.remove(name);
    Config::from_overrides(&all)?.validate()?;
    db::run("DELETE FROM auth.config WHERE key = $1", &[db::text(name)])?;
    listing()
}

#[pg_extern(name = "_settings")]
fn settings_impl() -> JsonB {
    crate::respond(listing())
}

#[pg_extern(name = "_set_setting")]
fn set_setting_impl(name: Option<&str>, value: Option<JsonB>) -> JsonB {
    crate::respond((|| {
        let name = required(name, "name")?;
        let JsonB(value) = required(value, "value")?;
        set(name, &value)
    })())
}

#[pg_extern(name = "_reset_setting")]
fn reset_setting_impl(name: Option<&str>) -> JsonB {
    crate::respond(required(name, "name").and_then(reset))
}
