//! Error text for logs and the outbox: an error with its causes, and never a URL (a URL may carry
//! a token in its path or query string).

/// "error performing TLS handshake: invalid peer certificate: …": the outer error alone rarely
/// says what to fix.
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Replaces anything shaped like a URL, in case a lower layer names one.
pub fn without_urls(text: &str) -> String {
    text.split(' ')
        .map(|word| if word.contains("://") { "<url>" } else { word })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_scrubbed_and_causes_kept() {
        assert_eq!(
            without_urls("error for url (http://h/otp?token=s3cret) here"),
            "error for url <url> here"
        );
        assert_eq!(without_urls("connection refused"), "connection refused");
        let io = std::io::Error::other("connection refused");
        let outer = std::io::Error::other(io);
        assert_eq!(with_causes(&outer), "connection refused");
    }
}
