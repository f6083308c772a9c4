//! What the caller's request says about itself: client IP and JWT claims, as PostgREST sets them.

use crate::db;
use pg_otp_auth_core::config::Config;
use pg_otp_auth_core::error::{AuthError, Result};
use serde::Deserialize;

/// The client IP: from the configured forwarding header of `request.headers` (as PostgREST
/// sets it), believing only what the trusted proxies appended (see `core::client_ip`), else the
/// address of the database connection (none over a Unix socket). Never fails on bad headers.
pub fn client_ip(cfg: &Config) -> Result<Option<String>> {
    let v = db::row(
        "SELECT jsonb_build_object('headers', nullif(current_setting('request.headers', true), ''),
                                   'peer', host(inet_client_addr()))",
        &[],
    )?
    .unwrap_or_default();
    let header = v["headers"]
        .as_str()
        .and_then(|h| serde_json::from_str::<serde_json::Value>(h).ok())
        .and_then(|h| {
            h.get(cfg.client_ip_header.as_str())
                .and_then(|x| x.as_str().map(str::to_string))
        });
    Ok(pg_otp_auth_core::client_ip::client_ip(
        &cfg.client_ip_header,
        header.as_deref(),
        cfg.trusted_proxy_hops,
        v["peer"].as_str(),
    ))
}

#[derive(Debug, Deserialize)]
pub struct CurrentSession {
    pub user_id: String,
    pub session_id: String,
    /// The session row's level: raised by an MFA verification.
    pub aal: String,
    /// The presented access token's `aal` claim: what the credential in hand was issued for.
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

/// The caller's session: the `sub` and `session_id` claims must name a live session of that
/// user. Checking the session row, not just the claims, means that a SQL client who can set
/// `request.jwt.claims` still needs an unguessable, unrevoked session id to act as a user, and
/// an expired token's claims are refused.
pub fn current_session() -> Result<CurrentSession> {
    db::row_as::<CurrentSession>(
        "WITH c AS (SELECT auth.jwt() AS j)
         SELECT jsonb_build_object('user_id', s.user_id, 'session_id', s.id, 'aal', s.aal,
                                  'claim_aal', c.j ->> 'aal', 'amr', s.amr)
         FROM c, auth.sessions s JOIN auth.users u ON u.id = s.user_id
         WHERE s.id = CASE WHEN (c.j ->> 'session_id') ~* '^[0-9a-f-]{36}$'
                           THEN (c.j ->> 'session_id')::uuid END
           AND s.user_id::text = c.j ->> 'sub'
           AND s.revoked_at IS NULL AND NOT u.disabled
           AND (c.j ->> 'exp') ~ '^[0-9]{1,12}$'
           AND (c.j ->> 'exp')::bigint > extract(epoch FROM clock_timestamp())",
        &[],
    )?
    .ok_or_else(AuthError::not_authenticated)
}
