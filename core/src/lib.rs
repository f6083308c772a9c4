//! Database-independent logic of pg_otp_auth.
//!
//! Everything here is plain Rust with unit tests beside it; the extension crate calls into these
//! modules and keeps only the SQL glue for itself.

pub mod account;
pub mod budget;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod error;
pub mod mfa;
pub mod otp;
pub mod outbox;
pub mod phone;
pub mod profile;
pub mod ratelimit;
pub mod session;
pub mod template;
pub mod totp;

pub use error::AuthError;
