//! What the caller's request says about itself: client IP and JWT claims, as PostgREST sets them.

use crate::db;
use crate::session::USER_BLOCKED;
use pg_otp_auth_core::config::Config;
use pg_otp_auth_core::error::{AuthError, Result};
use pgrx::pg_sys;
use serde::Deserialize;
use std::sync::LazyLock;

/// The client IP: from the configured forwarding header of `request.headers` (as PostgREST
/// sets it), believing only what the trusted proxies appended (see `core::client_ip`), else the
/// address of the database connection (none over a Unix socket). Never fails on bad headers.
pub fn client_ip(cfg: &Config) -> Result<Option<String>> {
    let headers = setting(c"request.headers");
    // Without a trusted proxy the headers are not believed, so not read.
    let header = headers
        .as_deref()
        .filter(|_| cfg.trusted_proxy_hops > 0)
        .and_then(|h| pg_otp_auth_core::client_ip::header_value(h, &cfg.client_ip_header));
    Ok(pg_otp_auth_core::client_ip::client_ip(
        &cfg.client_ip_header,
        header.as_deref(),
        cfg.trusted_proxy_hops,
        peer_address().as_deref(),
    ))
}

/// A custom setting of this session (`current_setting(name, true)`), None when unset or empty.
fn setting(name: &std::ffi::CStr) -> Option<String> {
    let value = unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) };
    if value.is_null() {
        return None;
    }
    let value = unsafe { std::ffi::CStr::from_ptr(value) }.to_string_lossy();
    (!value.is_empty()).then(|| value.into_owned())
}

/// `inet_client_addr()`: the connection's peer, None over a Unix socket. A backend serves one
/// connection, so it is read once (formatting it costs a `getnameinfo` per call).
fn peer_address() -> Option<String> {
    thread_local! {
        static PEER: std::cell::OnceCell<Option<String>> = const { std::cell::OnceCell::new() };
    }
    PEER.with(|peer| {
        peer.get_or_init(|| {
            unsafe { pgrx::direct_function_call::<pgrx::Inet>(pg_sys::inet_client_addr, &[]) }
                .map(|inet| inet.0)
        })
        .clone()
    })
}

#[derive(Debug, Deserialize)]
pub struct CurrentSession {
    pub user_id: String,
    pub session_id: String,
    /// The session row's level: raised by an MFA verification.
    pub aal: String,
    /// The presented access token's `aal` claim: what the credential in hand was issued for.
    #[serde(default)]
    pub claim_aal: Option<String>,
    pub amr: serde_json::Value,
}

impl CurrentSession {
    /// aal2 needs both the session and the token in hand to be aal2: an aal1 token issued
    /// before the session was raised stays an aal1 credential.
    pub fn is_aal2(&self) -> bool {
        self.aal == "aal2" && self.claim_aal.as_deref() == Some("aal2")
    }

    /// The level the caller acts at: the lower of the session's and the token's.
    pub fn effective_aal(&self) -> &'static str {
        if self.is_aal2() {
            "aal2"
        } else {
            "aal1"
        }
    }
}

/// Session $1 of user $2 (as text), if it is live and its user not blocked.
static LIVE_SESSION_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT jsonb_build_object('user_id', s.user_id, 'session_id', s.id, 'aal', s.aal,
                                  'amr', s.amr)
         FROM auth.sessions s JOIN auth.users u ON u.id = s.user_id
         WHERE s.id = $1::uuid AND s.user_id::text = $2
           AND s.revoked_at IS NULL AND NOT {USER_BLOCKED}"
    )
});

/// The caller's session: the `sub` and `session_id` claims must name a live session of that
/// user. Checking the session row, not just the claims, means that a SQL client who can set
/// `request.jwt.claims` still needs an unguessable, unrevoked session id to act as a user, and
/// an expired token's claims are refused.
pub fn current_session() -> Result<CurrentSession> {
    let claims = setting(c"request.jwt.claims")
        .and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok())
        .unwrap_or_default();
    let text = |name: &str| match &claims[name] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let session_id = text("session_id").filter(|id| is_uuid(id));
    let expires = text("exp")
        .filter(|e| (1..=12).contains(&e.len()) && e.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|e| e.parse::<u64>().ok());
    let (Some(session_id), Some(sub), Some(expires)) = (session_id, text("sub"), expires) else {
        return Err(AuthError::not_authenticated());
    };
    // Whole seconds: for the integer exp, exp > now and exp > floor(now) agree.
    if expires as i64 <= pg_otp_auth_core::clock::unix_seconds() {
        return Err(AuthError::not_authenticated());
    }
    let mut me =
        db::row_as::<CurrentSession>(&LIVE_SESSION_SQL, &[db::text(&session_id), db::text(&sub)])?
            .ok_or_else(AuthError::not_authenticated)?;
    me.claim_aal = text("aal");
    Ok(me)
}

/// The canonical text form of a uuid (8-4-4-4-12 hex digits), as session ids are issued.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}
