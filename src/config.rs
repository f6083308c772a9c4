//! Settings and secrets as stored in the database.

use crate::{audit, db};
use pg_otp_auth_core::config::{self, Config, Kind, SETTINGS};
use pg_otp_auth_core::error::{required, AuthError, Result};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

fn overrides() -> Result<Map<String, Value>> {
    let v = db::row(
        "SELECT coalesce(jsonb_object_agg(key, value), '{}') FROM auth.config",
        &[],
    )?;
    Ok(v.and_then(|v| v.as_object().cloned()).unwrap_or_default())
}

/// The settings and secrets as this backend last read them. They change rarely and every call
/// needs them, so they are read once and kept until a statement trigger on auth.config or
/// auth.secrets sends a relcache invalidation for its table (see `forget`), which every backend
/// processes before its next transaction reads anything: a committed change is seen from the
/// next transaction on, as a fresh read would see it.
struct Loaded {
    config: Rc<Config>,
    /// The stored values (auth.config), defaults left out.
    overrides: Map<String, Value>,
    secrets: HashMap<String, Vec<u8>>,
    /// The oids of auth.config and auth.secrets, whose invalidations drop this.
    relids: [pg_sys::Oid; 2],
}

thread_local! {
    static LOADED: RefCell<Option<Rc<Loaded>>> = const { RefCell::new(None) };
    /// Bumped by every invalidation that drops the cache: a read that raced one is not kept.
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let ours = LOADED.with(|l| match l.try_borrow() {
        Ok(l) => l
            .as_ref()
            .is_none_or(|c| relid == pg_sys::InvalidOid || c.relids.contains(&relid)),
        Err(_) => true,
    });
    if ours {
        GENERATION.set(GENERATION.get() + 1);
        LOADED.with(|l| {
            if let Ok(mut l) = l.try_borrow_mut() {
                *l = None;
            }
        });
    }
}

#[derive(Deserialize)]
struct Stored {
    config: Map<String, Value>,
    secrets: HashMap<String, String>,
    relids: [u32; 2],
}

fn loaded() -> Result<Rc<Loaded>> {
    require_schema_of_this_library()?;
    if let Some(l) = LOADED.with(|l| l.borrow().clone()) {
        return Ok(l);
    }
    if !CALLBACK_REGISTERED.get() {
        unsafe {
            pg_sys::CacheRegisterRelcacheCallback(
                Some(on_relcache_invalidation),
                pg_sys::Datum::from(0),
            )
        };
        CALLBACK_REGISTERED.set(true);
    }
    let generation = GENERATION.get();
    let stored: Stored = db::row_as(
        "SELECT jsonb_build_object(
             'config', (SELECT coalesce(jsonb_object_agg(key, value), '{}') FROM auth.config),
             'secrets', (SELECT coalesce(jsonb_object_agg(name, encode(value, 'hex')), '{}')
                         FROM auth.secrets),
             'relids', jsonb_build_array('auth.config'::regclass::oid::int8,
                                         'auth.secrets'::regclass::oid::int8))",
        &[],
    )?
    .ok_or_else(|| AuthError::internal("The settings are unreadable."))?;
    let l = Rc::new(Loaded {
        config: Rc::new(Config::from_overrides(&stored.config)?),
        overrides: stored.config,
        secrets: stored
            .secrets
            .into_iter()
            .map(|(k, v)| (k, db::from_hex(&v)))
            .collect(),
        relids: stored.relids.map(pg_sys::Oid::from),
    });
    if GENERATION.get() == generation {
        LOADED.with(|c| *c.borrow_mut() = Some(l.clone()));
    }
    Ok(l)
}

pub fn load() -> Result<Rc<Config>> {
    Ok(loaded()?.config.clone())
}

/// Makes every backend drop its cached settings when the transaction that changed them commits
/// (and this one at once). Called by the statement triggers on auth.config and auth.secrets.
#[pg_extern(name = "_forget_settings")]
fn forget(rel: pg_sys::Oid) {
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(rel) };
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
    Err(update_required())
}

/// The answer of a call this library cannot serve until the database's schema is updated.
pub fn update_required() -> AuthError {
    AuthError::new(
        503,
        "update-required",
        format!(
            "The pg_otp_auth library is version {}; run ALTER EXTENSION pg_otp_auth UPDATE in this database.",
            env!("CARGO_PKG_VERSION")
        ),
    )
}

pub fn secret(name: &str) -> Result<Vec<u8>> {
    loaded()?
        .secrets
        .get(name)
        .cloned()
        .ok_or_else(|| AuthError::internal(format!("The {name} secret is missing.")))
}

/// One setting's value in effect, as `auth.settings()` lists it, from this backend's copy.
fn value_of(name: &str) -> Result<Value> {
    let setting = config::setting(name)?;
    Ok(loaded()?
        .overrides
        .get(setting.name)
        .cloned()
        .unwrap_or_else(setting.default))
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
fn settings_impl() -> crate::Answer {
    crate::respond(listing())
}

#[pg_extern(name = "_setting")]
fn setting_impl(name: Option<&str>) -> crate::Answer {
    crate::respond(required(name, "name").and_then(value_of))
}

fn set_setting(name: Option<&str>, value: Option<JsonB>) -> Result<Value> {
    let name = required(name, "name")?;
    let JsonB(value) = required(value, "value")?;
    set(name, &value)
}

crate::answer::api_function!(
    auth_set_setting,
    (name: Option<&str>, value: Option<JsonB>) => set_setting(name, value)
);

crate::answer::api_function!(
    auth_reset_setting,
    (name: Option<&str>) => required(name, "name").and_then(reset)
);
