//! The database connection's TLS, as libpq's `sslmode` and `sslrootcert` ask for it.
//!
//! tokio-postgres itself knows `disable`, `prefer` and `require`, and no `sslrootcert`; both
//! are taken out of the connection string here and carried out with rustls:
//! - `disable`: no TLS. `prefer` (libpq's default): TLS if the server offers it.
//! - `require`: TLS or no connection; the certificate is checked against `sslrootcert` when one
//!   is given (as libpq does), else not at all (encryption only).
//! - `verify-ca`: the chain must lead to a trusted root; `verify-full`: and name the host.
//!
//! Trusted roots are `sslrootcert` (a PEM file), else the system's (`/etc/ssl/certs`). Errors
//! name options, never values: the string carries a password.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(
                    "sslmode=allow is not supported; use prefer, require, verify-ca or verify-full"
                        .into(),
                )
            }
            _ => {
                return Err(
                    "sslmode must be disable, prefer, require, verify-ca or verify-full".into(),
                )
            }
        })
    }
}

/// A parsed `--database-url`.
#[derive(Clone)]
pub struct Database {
    pub config: tokio_postgres::Config,
    pub mode: SslMode,
    pub root_cert: Option<String>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the connection string: it may carry a password.
        f.debug_struct("Database")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Splits `sslmode` and `sslrootcert` off a connection string, URL or key=value form.
fn split_tls_options(s: &str) -> Result<(String, Option<String>, Option<String>), String> {
    let s = s.trim();
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        let mut url = reqwest::Url::parse(s)
            .map_err(|e| format!("--database-url is not a valid URL: {e}"))?;
        let (mut mode, mut root) = (None, None);
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter_map(|(k, v)| match k.as_ref() {
                "sslmode" => {
                    mode = Some(v.into_owned());
                    None
                }
                "sslrootcert" => {
                    root = Some(v.into_owned());
                    None
                }
                _ => Some((k.into_owned(), v.into_owned())),
            })
            .collect();
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        return Ok((url.to_string(), mode, root));
    }
    let pairs = key_values(s)?;
    let (mut mode, mut root, mut kept) = (None, None, Vec::new());
    for (k, v) in pairs {
        match k.as_str() {
            "sslmode" => mode = Some(v),
            "sslrootcert" => root = Some(v),
            _ => kept.push(format!(
                "{k}='{}'",
                v.replace('\\', "\\\\").replace('\'', "\\'")
            )),
        }
    }
    Ok((kept.join(" "), mode, root))
}

/// libpq's key=value syntax: values bare, or single-quoted with backslash escapes.
fn key_values(s: &str) -> Result<Vec<(String, String)>, String> {
    let bad = || "--database-url is not a valid key=value connection string".to_string();
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || key.is_empty() {
            return Err(bad());
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or_else(bad)?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(bad()),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key, value));
    }
}

/// Parses `--database-url`.
pub fn parse(database_url: &str) -> Result<Database, String> {
    let (rest, mode, root_cert) = split_tls_options(database_url)?;
    let mode = SslMode::parse(mode.as_deref().unwrap_or("prefer"))?;
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e| format!("--database-url is invalid: {e}"))?;
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    let db = Database {
        config,
        mode,
        root_cert,
    };
    // Load the roots now, so that a bad sslrootcert stops the start with a clear message.
    db.connector()?;
    Ok(db)
}

impl Database {
    pub fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match (self.mode, &self.root_cert) {
            (SslMode::Disable | SslMode::Prefer | SslMode::Require, None) => {
                Arc::new(EncryptOnly(provider.clone()))
            }
            (SslMode::VerifyFull, root) => webpki(roots(root.as_deref())?, &provider)?,
            (_, root) => Arc::new(AnyHostName(webpki(roots(root.as_deref())?, &provider)?)),
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up failed: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

fn roots(path: Option<&str>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match path {
        Some(p) => {
            let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(p)
                .map_err(|e| format!("sslrootcert cannot be read: {e}"))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("sslrootcert is not PEM certificates: {e}"))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err("sslrootcert holds no usable certificate".into());
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(
                    "no system root certificates found (install ca-certificates, or give sslrootcert)"
                        .into(),
                );
            }
        }
    }
    Ok(store)
}

fn webpki(
    roots: RootCertStore,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("TLS set-up failed: {e}"))
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require` without `sslrootcert`, as libpq: encrypted, but any certificate is accepted (the
/// handshake's signatures are still checked against it).
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_come_out_of_both_forms() {
        let (rest, mode, root) = split_tls_options(
            "host=db.example port=5432 user=otp password='p ss\\'w' sslmode=verify-full sslrootcert=/etc/ca.pem",
        )
        .unwrap();
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        assert!(!rest.contains("ssl"));
        let c: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(c.get_password(), Some(&b"p ss'w"[..]));
        assert_eq!(c.get_user(), Some("otp"));

        let (rest, mode, root) = split_tls_options(
            "postgresql://otp:s3cret@db.example:6543/app?sslmode=require&application_name=x",
        )
        .unwrap();
        assert_eq!((mode.as_deref(), root), (Some("require"), None));
        let c: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(c.get_dbname(), Some("app"));
        assert_eq!(c.get_application_name(), Some("x"));
    }

    #[test]
    fn modes_and_errors_never_echo_the_string() {
        for (url, mode) in [
            ("host=h user=u", SslMode::Prefer),
            ("host=h user=u sslmode=disable", SslMode::Disable),
            ("host=h user=u sslmode=require", SslMode::Require),
            ("postgres://u@h/d?sslmode=verify-ca", SslMode::VerifyCa),
        ] {
            assert_eq!(parse(url).unwrap().mode, mode, "{url}");
        }
        for bad in [
            "host=h password=s3cret sslmode=bogus",
            "host=h password=s3cret sslmode=verify-full sslrootcert=/nonexistent/s3cret.pem",
            "host=h password='s3cret",
            "postgres://u:s3cret@h:notaport/d",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(!e.contains("s3cret"), "{e}");
        }
        assert!(format!("{:?}", parse("host=h password=s3cret").unwrap())
            .find("s3cret")
            .is_none());
    }
}
