//! Header hygiene for requests going to an origin and responses coming back.
//!
//! Order matters (attack catalogue B3): the tokens named by `Connection` are
//! removed first, then every hop-by-hop header, then every client copy of a
//! reserved header in any spelling, and only then does the gateway add its own.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus legacy ones that must never be forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Headers some origins (IIS, Symfony, nginx auth modules) read as the "real" path;
/// a client must never be able to send them past a path-based check.
const PATH_OVERRIDES: [&str; 6] = [
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-forwarded-uri",
    "x-forwarded-prefix",
    "x-forwarded-path",
];

/// Forwarding headers: believed only from trusted proxies, else replaced.
const FORWARDING: [&str; 6] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
];

/// Lower case, with `_` and `.` read as `-`: the spellings origins and CGI-style
/// frameworks treat as the same header.
pub fn normalise_header_name(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'_' | b'.' => '-',
            _ => b.to_ascii_lowercase() as char,
        })
        .collect()
}

/// Compares a header name with an already normalised name or prefix without allocating.
fn normalised_eq(name: &str, normal: &str, prefix_only: bool) -> bool {
    let (name, normal) = (name.as_bytes(), normal.as_bytes());
    if name.len() < normal.len() || (!prefix_only && name.len() != normal.len()) {
        return false;
    }
    name.iter().zip(normal).all(|(&a, &b)| {
        let a = match a {
            b'_' | b'.' => b'-',
            _ => a.to_ascii_lowercase(),
        };
        a == b
    })
}

/// True for any spelling of a header under the reserved identity prefix.
pub fn is_reserved(name: &str, reserved_prefix: &str) -> bool {
    normalised_eq(name, reserved_prefix, true)
}

/// What the gateway knows about the client from the connection itself.
#[derive(Debug, Clone, Copy)]
pub struct ClientFacts<'a> {
    pub peer_ip: IpAddr,
    pub tls: bool,
    pub host: &'a str,
}

/// Whether `ip` is one of the configured trusted proxies.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// Cleans a request's headers for the origin and sets the forwarding headers.
pub fn prepare_request(
    headers: &mut HeaderMap,
    reserved_prefix: &str,
    trusted: bool,
    facts: ClientFacts<'_>,
) {
    strip_hop_by_hop(headers);
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let n = name.as_str();
            is_reserved(n, reserved_prefix)
                || PATH_OVERRIDES.iter().any(|p| normalised_eq(n, p, false))
                || FORWARDING.iter().any(|f| {
                    normalised_eq(n, f, false) && (!trusted || !n.bytes().all(is_canonical_byte))
                })
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
    set_forwarding(headers, trusted, facts);
}

/// Alias spellings (`x_forwarded_for`) are never believed, even from a trusted proxy.
fn is_canonical_byte(b: u8) -> bool {
    b != b'_' && b != b'.'
}

fn set_forwarding(headers: &mut HeaderMap, trusted: bool, facts: ClientFacts<'_>) {
    let proto = if facts.tls { "https" } else { "http" };
    let ip = facts.peer_ip.to_string();
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) if trusted => format!("{earlier}, {ip}"),
        _ => ip.clone(),
    };
    let node = match facts.peer_ip {
        IpAddr::V4(_) => ip.clone(),
        IpAddr::V6(_) => format!("\"[{ip}]\""),
    };
    let element = format!("for={node};proto={proto};host=\"{}\"", facts.host);
    let forwarded = match headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(earlier) if trusted => format!("{earlier}, {element}"),
        _ => element,
    };
    let set = |headers: &mut HeaderMap, name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    };
    set(headers, "x-forwarded-for", forwarded_for);
    set(headers, "forwarded", forwarded);
    if !(trusted && headers.contains_key("x-forwarded-proto")) {
        headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    }
    if !(trusted && headers.contains_key("x-forwarded-host")) {
        set(headers, "x-forwarded-host", facts.host.to_owned());
    }
    if !trusted {
        set(headers, "x-real-ip", ip);
    }
}

/// Plain printable ASCII as is; anything else as an RFC 8187 ext-value.
pub fn header_text(value: &str) -> String {
    if value.bytes().all(|b| (0x20..0x7f).contains(&b)) && !value.starts_with("UTF-8''") {
        return value.to_owned();
    }
    let mut out = String::from("UTF-8''");
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Adds `field` to the response's `Vary` unless a `Vary` value already names
/// it (or is `*`), so no field is listed twice.
pub fn add_vary(headers: &mut HeaderMap, field: &'static str) {
    let listed = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|f| f.trim() == "*" || f.trim().eq_ignore_ascii_case(field));
    if !listed {
        headers.append(header::VARY, HeaderValue::from_static(field));
    }
}

/// A message framed two ways at once (`Content-Length` beside
/// `Transfer-Encoding`): RFC 9112 §6.1 calls it a likely smuggling or
/// splitting attempt, so an origin that sends one gets no benefit of the doubt.
pub fn has_conflicting_framing(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING) && headers.contains_key(header::CONTENT_LENGTH)
}

/// A request `Transfer-Encoding` other than one field saying `chunked`, the
/// only coding a request may have (RFC 9112 6.1). hyper refuses most others
/// but reads two `chunked` fields as one; a gateway that believes a framing
/// its peers may read otherwise invites smuggling, so it is refused outright.
pub fn has_odd_transfer_coding(headers: &HeaderMap) -> bool {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (None, _) => false,
        (Some(only), None) => !only
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => true,
    }
}

/// Removes the headers named by `Connection` and every hop-by-hop header.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_chunked_field_is_a_request_coding() {
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::TRANSFER_ENCODING, HeaderValue::from_str(v).unwrap());
            }
            has_odd_transfer_coding(&h)
        };
        assert!(!with(&[]));
        assert!(!with(&["chunked"]));
        assert!(!with(&["Chunked "]));
        assert!(with(&["chunked", "chunked"]));
        assert!(with(&["gzip, chunked"]));
        assert!(with(&["identity"]));
    }

    #[test]
    fn vary_lists_each_field_once() {
        let mut h = HeaderMap::new();
        h.insert(
            header::VARY,
            HeaderValue::from_static("Accept-Language, cookie"),
        );
        add_vary(&mut h, "Cookie");
        add_vary(&mut h, "Accept-Encoding");
        add_vary(&mut h, "Accept-Encoding");
        let all: Vec<_> = h.get_all(header::VARY).iter().collect();
        assert_eq!(all, ["Accept-Language, cookie", "Accept-Encoding"]);
    }

    fn facts() -> ClientFacts<'static> {
        ClientFacts {
            peer_ip: "203.0.113.9".parse().unwrap(),
            tls: true,
            host: "gw.example",
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn strips_reserved_headers_in_every_spelling() {
        let mut h = map(&[
            ("x-member-email", "a@x"),
            ("X_Member_Email", "b@x"),
            ("x.member.groups", "admin"),
            ("x-member-email", "c@x"),
            ("x-membership", "kept"),
            ("accept", "text/html"),
        ]);
        prepare_request(&mut h, "x-member-", false, facts());
        assert!(
            h.keys().all(|k| !is_reserved(k.as_str(), "x-member-")),
            "{h:?}"
        );
        assert_eq!(h.get("x-membership").unwrap(), "kept");
        assert_eq!(h.get("accept").unwrap(), "text/html");
    }

    #[test]
    fn connection_tokens_cannot_remove_gateway_headers() {
        let mut h = map(&[
            (
                "connection",
                "close, X-Member-Email, x-forwarded-for, accept",
            ),
            ("accept", "text/html"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ("te", "trailers"),
        ]);
        prepare_request(&mut h, "x-member-", false, facts());
        for gone in [
            "connection",
            "accept",
            "keep-alive",
            "upgrade",
            "http2-settings",
            "te",
        ] {
            assert!(!h.contains_key(gone), "{gone} survived");
        }
        assert_eq!(h.get("x-forwarded-for").unwrap(), "203.0.113.9");
    }

    #[test]
    fn untrusted_forwarding_headers_are_overwritten() {
        let mut h = map(&[
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil"),
            ("x-forwarded-prefix", "//evil.com"),
            ("x-real-ip", "127.0.0.1"),
            ("x_forwarded_for", "10.0.0.1"),
            ("forwarded", "for=127.0.0.1"),
            ("x-original-url", "/public/"),
        ]);
        prepare_request(&mut h, "x-member-", false, facts());
        assert_eq!(h.get("x-forwarded-for").unwrap(), "203.0.113.9");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "gw.example");
        assert_eq!(h.get("x-real-ip").unwrap(), "203.0.113.9");
        assert_eq!(
            h.get("forwarded").unwrap(),
            "for=203.0.113.9;proto=https;host=\"gw.example\""
        );
        for gone in ["x-forwarded-prefix", "x_forwarded_for", "x-original-url"] {
            assert!(!h.contains_key(gone), "{gone} survived");
        }
    }

    #[test]
    fn trusted_proxies_are_extended() {
        let mut h = map(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=198.51.100.7"),
        ]);
        let f = ClientFacts {
            tls: false,
            ..facts()
        };
        prepare_request(&mut h, "x-member-", true, f);
        assert_eq!(
            h.get("x-forwarded-for").unwrap(),
            "198.51.100.7, 203.0.113.9"
        );
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert!(
            h.get("forwarded")
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("for=198.51.100.7, for=203.0.113.9")
        );
    }
}
