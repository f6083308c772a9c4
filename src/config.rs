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
    Config::from_overrides(&overrides()?)
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
