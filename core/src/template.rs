//! Message templates: `{{code}}`-style placeholders, validated when a DBA sets them.

use crate::error::{AuthError, Result};

pub const VARIABLES: &[&str] = &["code", "ttl_minutes"];
/// One SMS segment of UCS-2 is 70 characters; 320 leaves room for a few segments without
/// letting a template turn every code into a long, expensive message.
pub const MAX_TEMPLATE_CHARS: usize = 320;

enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
}

fn parse(template: &str) -> Result<Vec<Piece<'_>>> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        pieces.push(Piece::Text(&rest[..start]));
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| bad("an unclosed {{"))?;
        let name = after[..end].trim();
        if !VARIABLES.contains(&name) {
            return Err(bad(&format!("unknown placeholder {{{{{name}}}}}")));
        }
        pieces.push(Piece::Var(name));
        rest = &after[end + 2..];
    }
    pieces.push(Piece::Text(rest));
    Ok(pieces)
}

fn bad(what: &str) -> AuthError {
    AuthError::invalid_request(format!("The message template is invalid: {what}."))
}

/// A template must be parseable, name only known placeholders, and include the code.
pub fn validate(template: &str) -> Result<()> {
    if template.chars().count() > MAX_TEMPLATE_CHARS {
        return Err(bad(&format!("longer than {MAX_TEMPLATE_CHARS} characters")));
    }
    if template.chars().any(|c| c.is_control() && c != '\n') {
        return Err(bad("it contains control characters"));
    }
    let pieces = parse(template)?;
    if !pieces.iter().any(|p| matches!(p, Piece::Var("code"))) {
        return Err(bad("it must contain {{code}}"));
    }
    Ok(())
}

pub fn render(template: &str, code: &str, ttl_minutes: i64) -> Result<String> {
    let ttl = ttl_minutes.to_string();
    let mut out = String::with_capacity(template.len() + code.len());
    for piece in parse(template)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Var("code") => out.push_str(code),
            Piece::Var(_) => out.push_str(&ttl),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders_with_optional_spaces() {
        assert_eq!(
            render("Your code is {{code}}", "123456", 5).unwrap(),
            "Your code is 123456"
        );
        assert_eq!(
            render("{{ code }} is valid for {{ttl_minutes}} min", "999999", 10).unwrap(),
            "999999 is valid for 10 min"
        );
    }

    #[test]
    fn rejects_bad_templates() {
        for t in [
            "No code here",
            "{{code",
            "{{ secret }} {{code}}",
            "{{code}}\u{7}",
        ] {
            assert_eq!(validate(t).unwrap_err().code, "invalid-request", "{t:?}");
        }
        assert!(validate(&format!("{{{{code}}}}{}", "x".repeat(400))).is_err());
        assert!(validate("Dein Code: {{code}}\nGültig {{ttl_minutes}} Minuten").is_ok());
    }
}
