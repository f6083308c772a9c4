//! The client's address behind reverse proxies.
//!
//! Each proxy that forwards a request appends the address it received the connection from to
//! `x-forwarded-for` (or a `for=` element to `forwarded`, RFC 7239). Whatever the client sent
//! itself comes first, so only entries appended by proxies the install trusts can be believed:
//! with `hops` trusted proxies in front of PostgREST, the client is the `hops`-th entry from the
//! right. Headers that a proxy sets whole (`cf-connecting-ip`, `x-real-ip`) are believed when at
//! least one proxy is trusted. Anything malformed falls back to the connection's address; nothing
//! here ever fails.

use std::net::{IpAddr, SocketAddr};

/// The header names a DBA may configure: lower case, as PostgREST hands headers over.
pub fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The string value of header `name` in `headers`, the JSON object PostgREST sets as
/// `request.headers`; None if the JSON is malformed or the value is not a string. Of repeated
/// names the last wins, as for a parsed object. Only that value is copied out: the other
/// headers are skipped, not built.
pub fn header_value(headers: &str, name: &str) -> Option<String> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
    use std::fmt;

    /// Whether a key is `name`.
    struct Is<'n>(&'n str);
    impl<'de> DeserializeSeed<'de> for Is<'_> {
        type Value = bool;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl Visitor<'_> for Is<'_> {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a header name")
        }
        fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<bool, E> {
            Ok(key == self.0)
        }
    }

    /// The object's value under `name`, if a string.
    struct Find<'n>(&'n str);
    impl<'de> Visitor<'de> for Find<'_> {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object of headers")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(wanted) = map.next_key_seed(Is(self.0))? {
                if wanted {
                    found = match map.next_value::<serde_json::Value>()? {
                        serde_json::Value::String(v) => Some(v),
                        _ => None,
                    };
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }

    let mut de = serde_json::Deserializer::from_str(headers);
    let found = de.deserialize_map(Find(name)).ok()?;
    de.end().ok()?;
    found
}

/// The client address for a request whose `header` (by the configured name) holds `value`,
/// behind `hops` trusted proxies, connected from `peer`.
pub fn client_ip(
    header: &str,
    value: Option<&str>,
    hops: usize,
    peer: Option<&str>,
) -> Option<String> {
    let from_header = if hops == 0 {
        None
    } else {
        value.and_then(|v| match header {
            "x-forwarded-for" => nth_from_right(v.split(','), hops).and_then(parse_plain),
            "forwarded" => nth_from_right(v.split(','), hops).and_then(forwarded_for),
            _ => parse_plain(v),
        })
    };
    from_header.or_else(|| peer.and_then(parse_plain))
}

fn nth_from_right<'a>(
    entries: impl DoubleEndedIterator<Item = &'a str>,
    n: usize,
) -> Option<&'a str> {
    entries.rev().nth(n - 1)
}

fn parse_plain(s: &str) -> Option<String> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .or_else(|_| s.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
        .map(|ip| ip.to_string())
}

/// The address in one `forwarded` element's `for=` parameter: `for=192.0.2.60`,
/// `for="192.0.2.60:4711"`, `for="[2001:db8:cafe::17]:4711"`. `unknown` and obfuscated
/// identifiers (`_hidden`) are no address.
fn forwarded_for(element: &str) -> Option<String> {
    let value = element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
    })?;
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    if let Some(rest) = value.strip_prefix('[') {
        let (ip, _port) = rest.split_once(']')?;
        return ip
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|ip| ip.to_string());
    }
    parse_plain(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: Option<&str> = Some("10.0.0.2");

    fn xff(v: &str, hops: usize) -> Option<String> {
        client_ip("x-forwarded-for", Some(v), hops, PEER)
    }

    #[test]
    fn the_last_trusted_proxy_appended_entry_wins() {
        // The client wrote "1.2.3.4"; the one trusted proxy appended the real address.
        assert_eq!(
            xff("1.2.3.4, 203.0.113.7", 1).as_deref(),
            Some("203.0.113.7")
        );
        // Two trusted proxies: the second appended the first's address.
        assert_eq!(
            xff("1.2.3.4, 203.0.113.7, 10.1.1.1", 2).as_deref(),
            Some("203.0.113.7")
        );
        assert_eq!(xff("203.0.113.7", 1).as_deref(), Some("203.0.113.7"));
        assert_eq!(xff(" 2001:db8::1 ", 1).as_deref(), Some("2001:db8::1"));
        assert_eq!(xff("198.51.100.1:4711", 1).as_deref(), Some("198.51.100.1"));
    }

    #[test]
    fn no_trusted_proxy_means_the_connection_address() {
        assert_eq!(xff("203.0.113.7", 0).as_deref(), Some("10.0.0.2"));
        assert_eq!(
            client_ip("x-real-ip", Some("203.0.113.7"), 0, PEER).as_deref(),
            Some("10.0.0.2")
        );
    }

    #[test]
    fn malformed_or_short_headers_fall_back_to_the_connection() {
        for bad in [
            "",
            "garbage",
            "1.2.3.4, not-an-ip",
            "300.1.1.1",
            ",",
            "unknown",
        ] {
            assert_eq!(xff(bad, 1).as_deref(), Some("10.0.0.2"), "{bad:?}");
        }
        // Fewer entries than trusted hops: the request did not come through all the proxies.
        assert_eq!(xff("203.0.113.7", 2).as_deref(), Some("10.0.0.2"));
        assert_eq!(client_ip("x-forwarded-for", None, 1, None), None);
        assert_eq!(
            client_ip("x-forwarded-for", Some("junk"), 1, Some("junk")),
            None
        );
    }

    #[test]
    fn rfc7239_forwarded() {
        let f = |v: &str, hops| client_ip("forwarded", Some(v), hops, PEER);
        assert_eq!(
            f("for=192.0.2.60;proto=http;by=203.0.113.43", 1).as_deref(),
            Some("192.0.2.60")
        );
        assert_eq!(
            f("for=1.2.3.4, for=\"[2001:db8:cafe::17]:4711\"", 1).as_deref(),
            Some("2001:db8:cafe::17")
        );
        assert_eq!(
            f("For=\"192.0.2.43:47011\", for=198.51.100.17", 2).as_deref(),
            Some("192.0.2.43")
        );
        assert_eq!(f("for=unknown", 1).as_deref(), Some("10.0.0.2"));
        assert_eq!(f("for=_hidden", 1).as_deref(), Some("10.0.0.2"));
        assert_eq!(f("proto=https", 1).as_deref(), Some("10.0.0.2"));
        assert_eq!(f("for=\"[::1", 1).as_deref(), Some("10.0.0.2"));
    }

    #[test]
    fn single_value_headers() {
        let h = |name: &str, v: &str| client_ip(name, Some(v), 1, PEER);
        assert_eq!(
            h("cf-connecting-ip", "203.0.113.9").as_deref(),
            Some("203.0.113.9")
        );
        assert_eq!(
            h("x-real-ip", "2001:db8::2").as_deref(),
            Some("2001:db8::2")
        );
        assert_eq!(
            h("x-real-ip", "1.2.3.4, 5.6.7.8").as_deref(),
            Some("10.0.0.2")
        );
    }

    #[test]
    fn header_names() {
        assert!(valid_header_name("x-forwarded-for") && valid_header_name("cf-connecting-ip"));
        assert!(
            !valid_header_name("X-Real-IP") && !valid_header_name("") && !valid_header_name("a b")
        );
    }

    #[test]
    fn header_values_from_the_headers_json() {
        let h = r#"{"accept": "*/*", "x-forwarded-for": "203.0.113.9, 10.0.0.1", "n": 1}"#;
        assert_eq!(
            header_value(h, "x-forwarded-for").as_deref(),
            Some("203.0.113.9, 10.0.0.1")
        );
        assert_eq!(header_value(h, "x-real-ip"), None);
        // Only strings are values.
        assert_eq!(header_value(h, "n"), None);
        assert_eq!(header_value(r#"{"a": {"b": "c"}}"#, "a"), None);
        // Escapes in names and values are read as JSON.
        assert_eq!(
            header_value(r#"{"x-real-\u0069p": "192.0.2.\u0031"}"#, "x-real-ip").as_deref(),
            Some("192.0.2.1")
        );
        // The last of repeated names wins, as in a parsed object.
        assert_eq!(
            header_value(
                r#"{"x-real-ip": "192.0.2.1", "x-real-ip": "192.0.2.2"}"#,
                "x-real-ip"
            )
            .as_deref(),
            Some("192.0.2.2")
        );
        // Malformed JSON has no values, even where the name was read before the fault.
        for bad in [
            r#"{"x-real-ip": "192.0.2.1", "#,
            r#"{"x-real-ip": "192.0.2.1"} trailing"#,
            r#"["x-real-ip", "192.0.2.1"]"#,
            "",
        ] {
            assert_eq!(header_value(bad, "x-real-ip"), None, "{bad}");
        }
    }
}
