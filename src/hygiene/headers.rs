//! Header hygiene for requests going to an origin and responses coming back.
//!
//! Order matters (attack catalogue B3): the tokens named by `Connection` are
//! removed first, then every hop-by-hop header, then every client copy of a
//! reserved header in any spelling, and only then does the gateway add its own.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

// Named once: a lookup by `&str` parses the name again on every call.
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus legacy ones that must never be forwarded.
static HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::PROXY_AUTHORIZATION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &HTTP2_SETTINGS,
];

/// The index in [`HOP_BY_HOP`] of a header name (lower case, as `HeaderName`
/// keeps it), if it is one.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    match name {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "proxy-authorization" => Some(3),
        "te" => Some(4),
        "trailer" => Some(5),
        "transfer-encoding" => Some(6),
        "upgrade" => Some(7),
        "http2-settings" => Some(8),
        _ => None,
    }
}

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

/// Forwarding headers: believed only from trusted proxies, else removed (the
/// gateway sets the first six itself). The rest are other spellings of "the
/// client's address" or "the client used TLS" that frameworks and CDNs read
/// (Rails reads `Client-IP`, Laravel `X-Forwarded-Ssl`, Cloudflare and Akamai
/// set `CF-Connecting-IP` and `True-Client-IP`), so a client must not send them.
const FORWARDING: [&str; 16] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-server",
    "x-url-scheme",
    "front-end-https",
    "x-client-ip",
    "client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
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

/// A header-name byte as [`normalise_header_name`] reads it.
fn normal_byte(b: u8) -> u8 {
    match b {
        b'_' | b'.' => b'-',
        _ => b.to_ascii_lowercase(),
    }
}

/// Compares a header name with an already normalised name or prefix without allocating.
fn normalised_eq(name: &str, normal: &str, prefix_only: bool) -> bool {
    let (name, normal) = (name.as_bytes(), normal.as_bytes());
    if name.len() < normal.len() || (!prefix_only && name.len() != normal.len()) {
        return false;
    }
    name.iter().zip(normal).all(|(&a, &b)| normal_byte(a) == b)
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

/// Whether any `name` field lists `token` among its comma-separated items,
/// in any case (`Connection: keep-alive, Upgrade` lists `upgrade`).
pub fn lists_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// The credential of a request's one `Authorization: Bearer <credential>`
/// field. The scheme is matched in any case (RFC 9110, 11.1); everything else
/// exactly: two fields, an empty credential or one with whitespace in or
/// around it is none (catalogue J1, B6).
pub fn bearer_credential(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let value = value.to_str().ok()?;
    let (scheme, credential) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case("Bearer ")
        || credential.is_empty()
        || credential.bytes().any(|b| b.is_ascii_whitespace())
    {
        return None;
    }
    Some(credential)
}

/// The visitor's address, for rate limits: the peer, or, when the peer is a
/// trusted proxy, the nearest address in `X-Forwarded-For` that is not a
/// trusted proxy (read right to left, as each proxy appended its peer).
/// Behind an ingress every visitor arrives from its address: limits keyed by
/// the peer alone would let one visitor spend everyone's budget. An entry
/// that is not an address ends the walk at the last good one.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|v| v.to_str().unwrap_or("").rsplit(','));
    for hop in hops {
        let Some(ip) = hop_address(hop.trim()) else {
            break;
        };
        // A dual-stack proxy may write an IPv4 client as `::ffff:a.b.c.d`.
        let ip = ip.to_canonical();
        client = ip;
        if !is_trusted(ip, trusted) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry's address: plain, or as some proxies write it
/// (Azure Application Gateway, IIS with ARR) with its port, `a.b.c.d:port`
/// or `[v6]:port`, or in brackets alone.
fn hop_address(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<std::net::SocketAddr>().map(|a| a.ip()))
        .ok()
        .or_else(|| {
            let bracketed = hop.strip_prefix('[')?.strip_suffix(']')?;
            bracketed.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
        })
}

/// Cleans a request's headers for the origin and sets the forwarding headers.
pub fn prepare_request(
    headers: &mut HeaderMap,
    reserved_prefix: &str,
    trusted: bool,
    facts: ClientFacts<'_>,
) {
    strip_hop_by_hop(headers);
    // Every path-override and forwarding name starts with `x`, `f`, `c` or
    // `t`: most headers are passed over on their first byte.
    let prefix_first = reserved_prefix.bytes().next();
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let n = name.as_str();
            let first = n.bytes().next().map(normal_byte);
            if !matches!(first, Some(b'x' | b'f' | b'c' | b't')) && first != prefix_first {
                return false;
            }
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
    let mut ip = String::with_capacity(48);
    push_ip(&mut ip, facts.peer_ip);
    // What a trusted proxy forwarded, every field line in order: a proxy
    // that adds a line of its own (HAProxy's `option forwardfor`) puts the
    // client it saw in the last one, after any the client sent.
    let push_earlier = |out: &mut String, name: &HeaderName| {
        if trusted {
            for value in headers.get_all(name) {
                if let Ok(value) = value.to_str() {
                    out.push_str(value);
                    out.push_str(", ");
                }
            }
        }
    };
    let mut forwarded_for = String::with_capacity(ip.len());
    push_earlier(&mut forwarded_for, &X_FORWARDED_FOR);
    forwarded_for.push_str(&ip);
    let mut forwarded = String::with_capacity(64 + facts.host.len());
    push_earlier(&mut forwarded, &header::FORWARDED);
    forwarded.push_str("for=");
    match facts.peer_ip {
        IpAddr::V4(_) => forwarded.push_str(&ip),
        IpAddr::V6(_) => {
            forwarded.push_str("\"[");
            forwarded.push_str(&ip);
            forwarded.push_str("]\"");
        }
    }
    forwarded.push_str(";proto=");
    forwarded.push_str(proto);
    forwarded.push_str(";host=\"");
    forwarded.push_str(facts.host);
    forwarded.push('"');
    let set = |headers: &mut HeaderMap, name: &HeaderName, value: String| {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(name.clone(), value);
        }
    };
    set(headers, &X_FORWARDED_FOR, forwarded_for);
    set(headers, &header::FORWARDED, forwarded);
    if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        set(headers, &X_FORWARDED_HOST, facts.host.to_owned());
    }
    if !trusted {
        set(headers, &X_REAL_IP, ip);
    }
}

/// Appends `ip` as text. IPv4, nearly every client, without the formatting
/// machinery, which costs more than the rest of the forwarding headers.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Plain printable ASCII as is; anything else as an RFC 8187 ext-value.
/// A value with an apostrophe counts as anything else: as it is, one like
/// `utf-8''admin%40corp.example` or `UTF-8'en'…` would be read as an
/// ext-value (charset matched in any case) and decode to another member's
/// email, or to a line break.
pub fn header_text(value: &str) -> String {
    if value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'\'')
    {
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
    // Read as bytes: a field name is ASCII, and `str`'s split and trim would
    // decode every character of every value (this runs twice per page with
    // the widget).
    let listed = headers.get_all(header::VARY).iter().any(|value| {
        value.as_bytes().split(|&b| b == b',').any(|listed| {
            let listed = listed.trim_ascii();
            listed == b"*" || listed.eq_ignore_ascii_case(field.as_bytes())
        })
    });
    if !listed {
        headers.append(header::VARY, HeaderValue::from_static(field));
    }
}

/// Marks a response as for this visitor only: `Cache-Control: private,
/// no-store`, and no directive aimed at shared caches.
pub fn mark_private(headers: &mut HeaderMap) {
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    remove_targeted_cache_control(headers);
}

/// Keeps a response out of shared caches but lets the browser keep its copy:
/// for a public page the origin produced knowing who the visitor is, which a
/// CDN must not hand to the next visitor. `public` and `s-maxage` give way to
/// `private`; the browser's own directives (`max-age`, `no-cache` ...) stay.
pub fn keep_from_shared_caches(headers: &mut HeaderMap) {
    remove_targeted_cache_control(headers);
    let mut kept = String::from("private");
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(text) = value.to_str() else { continue };
        for directive in directives(text) {
            let (name, argument) = match directive.split_once('=') {
                Some((name, argument)) => (name.trim(), Some(argument)),
                None => (directive, None),
            };
            // `private="Set-Cookie"` keeps one field private, not the page.
            let whole_page = argument.is_none();
            if whole_page
                && (name.eq_ignore_ascii_case("private") || name.eq_ignore_ascii_case("no-store"))
            {
                // Already kept from shared caches: leave the origin's words.
                return;
            }
            if directive.is_empty()
                || name.eq_ignore_ascii_case("public")
                || name.eq_ignore_ascii_case("s-maxage")
            {
                continue;
            }
            kept.push_str(", ");
            kept.push_str(directive);
        }
    }
    if let Ok(value) = HeaderValue::from_str(&kept) {
        headers.insert(header::CACHE_CONTROL, value);
    }
}

/// The directives of a `Cache-Control` field, trimmed: split at commas
/// outside quoted strings (`ext="a, private"` is one directive).
fn directives(field: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(field);
    std::iter::from_fn(move || {
        let text = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, b) in text.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    rest = Some(&text[i + 1..]);
                    return Some(text[..i].trim());
                }
                _ => {}
            }
        }
        rest = None;
        Some(text.trim())
    })
}

/// Removes the cache directives aimed at a CDN or other shared cache, which
/// such caches obey before `Cache-Control`: `CDN-Cache-Control` and its
/// vendor forms (RFC 9213), `Surrogate-Control`, Akamai's `Edge-Control`.
fn remove_targeted_cache_control(headers: &mut HeaderMap) {
    let targeted = |name: &HeaderName| {
        let name = name.as_str();
        name.ends_with("-cache-control") || name == "surrogate-control" || name == "edge-control"
    };
    // Almost no response has one: look before collecting.
    if !headers.keys().any(targeted) {
        return;
    }
    let doomed: Vec<HeaderName> = headers.keys().filter(|n| targeted(n)).cloned().collect();
    for name in doomed {
        headers.remove(name);
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
    // One pass over the names notes which hop-by-hop headers are there (bit i
    // for `HOP_BY_HOP[i]`): most messages have none, or only `Connection`.
    // Names are told apart by length first, so most cost one comparison, not
    // nine.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // `Connection` is HOP_BY_HOP[0].
    if present & 1 != 0 {
        let mut named = Vec::new();
        let tokens = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii);
        for token in tokens {
            // `keep-alive`, the usual token, is a hop-by-hop header anyway.
            if token.eq_ignore_ascii_case(b"keep-alive") {
                present |= 1 << 1;
            } else if let Ok(name) = HeaderName::from_bytes(token) {
                named.push(name);
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_credential_is_one_field_any_case_scheme_exact_credential() {
        let credential = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::AUTHORIZATION, v.parse().unwrap());
            }
            bearer_credential(&h).map(str::to_owned)
        };
        assert_eq!(credential(&["Bearer k3y"]).as_deref(), Some("k3y"));
        assert_eq!(credential(&["bearer k3y"]).as_deref(), Some("k3y"));
        assert_eq!(credential(&["BEARER k3y"]).as_deref(), Some("k3y"));
        for refused in [
            &["Bearer k3y", "Bearer k3y"][..],
            &["Bearer "],
            &["Bearer  k3y"],
            &["Bearer k3y "],
            &["Bearer k 3y"],
            &["Basic k3y"],
            &["Bearerk3y"],
            &[],
        ] {
            assert_eq!(credential(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn a_page_is_kept_from_shared_caches_unless_the_whole_of_it_already_is() {
        let kept = |fields: &[&str]| {
            let mut h = HeaderMap::new();
            for f in fields {
                h.append(header::CACHE_CONTROL, f.parse().unwrap());
            }
            keep_from_shared_caches(&mut h);
            h.get_all(header::CACHE_CONTROL)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            kept(&["public, s-maxage=600, max-age=60"]),
            ["private, max-age=60"]
        );
        // Private or not stored as a whole: the origin's words stand.
        assert_eq!(kept(&["private, max-age=60"]), ["private, max-age=60"]);
        assert_eq!(kept(&["no-store"]), ["no-store"]);
        // One field private is not the page private.
        assert_eq!(
            kept(&["public, max-age=600, private=\"Set-Cookie\""]),
            ["private, max-age=600, private=\"Set-Cookie\""]
        );
        // A quoted comma does not start a directive.
        assert_eq!(
            kept(&["public, s-maxage=600, ext=\"a, private\""]),
            ["private, ext=\"a, private\""]
        );
        assert_eq!(
            kept(&["public", "ext=\"a\\\", no-store\", max-age=5"]),
            ["private, ext=\"a\\\", no-store\", max-age=5"]
        );
    }

    #[test]
    fn the_hop_by_hop_lookup_knows_each_hop_by_hop_header() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index("content-type"), None);
        assert_eq!(hop_by_hop_index("tee"), None);
    }

    #[test]
    fn connection_tokens_and_hop_by_hop_headers_are_removed() {
        let mut h = map(&[
            ("connection", "Keep-Alive, X-Secret ,close"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("trailer", "x"),
            ("content-type", "text/html"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-type"]);
    }

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
    fn addresses_read_as_display_writes_them() {
        for text in [
            "0.0.0.0",
            "9.10.99.100",
            "203.0.113.255",
            "::1",
            "2001:db8::7",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            let mut out = String::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
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
        let mut star = HeaderMap::new();
        star.insert(header::VARY, HeaderValue::from_static(" * "));
        add_vary(&mut star, "Cookie");
        assert_eq!(star.get_all(header::VARY).iter().count(), 1);
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

    /// Even from a trusted proxy only the canonical spellings are believed:
    /// `_` and `.` forms are what a client adds to be read by a CGI-style
    /// origin. What the proxy did not send, the gateway says itself.
    #[test]
    fn trusted_proxies_are_believed_only_in_canonical_spelling() {
        let mut h = map(&[
            ("x.forwarded.for", "10.9.9.9"),
            ("x_forwarded_proto", "https"),
            ("X.Forwarded.Host", "evil"),
            ("true.client.ip", "10.9.9.9"),
        ]);
        let f = ClientFacts {
            tls: false,
            ..facts()
        };
        prepare_request(&mut h, "x-member-", true, f);
        for gone in [
            "x.forwarded.for",
            "x_forwarded_proto",
            "x.forwarded.host",
            "true.client.ip",
        ] {
            assert!(!h.contains_key(gone), "{gone} survived");
        }
        assert_eq!(h.get("x-forwarded-for").unwrap(), "203.0.113.9");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "gw.example");
    }

    /// Forwarding names are matched whole: an application's header that
    /// merely begins like one reaches the origin.
    #[test]
    fn only_whole_forwarding_names_are_removed() {
        let kept = [
            ("x-forwarded-for-app", "1"),
            ("client-ip-hint", "2"),
            ("x-original-url-note", "3"),
            ("forwarded-by", "4"),
        ];
        let mut h = map(&kept);
        prepare_request(&mut h, "x-member-", false, facts());
        for (name, value) in kept {
            assert_eq!(
                h.get(name).map(|v| v.to_str().unwrap()),
                Some(value),
                "{name}"
            );
        }
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_hop() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(&X_FORWARDED_FOR, v.parse().unwrap());
            }
            h
        };
        let proxy = ip("10.0.0.2");
        let cases: [(&[&str], &str); 7] = [
            (&[], "10.0.0.2"),
            (&["198.51.100.7"], "198.51.100.7"),
            (&["6.6.6.6, 198.51.100.7, 10.0.0.9"], "198.51.100.7"),
            // An IPv4 hop written by a dual-stack proxy is still a trusted one.
            (&["6.6.6.6, 198.51.100.7, ::ffff:10.0.0.9"], "198.51.100.7"),
            (&["6.6.6.6", "198.51.100.7"], "198.51.100.7"),
            (&["10.0.0.5, 10.0.0.9"], "10.0.0.5"),
            (&["6.6.6.6, junk, 10.0.0.9"], "10.0.0.9"),
        ];
        for (values, want) in cases {
            assert_eq!(
                client_ip(proxy, &with(values), &trusted),
                ip(want),
                "{values:?}"
            );
        }
        // From a peer that is not trusted the header means nothing.
        let peer = ip("203.0.113.9");
        assert_eq!(client_ip(peer, &with(&["198.51.100.7"]), &trusted), peer);
    }

    /// Azure Application Gateway (and some IIS/ARR set-ups) append the
    /// client as `address:port`, IPv6 as `[address]:port`. Read as junk,
    /// every visitor became the proxy, one shared rate-limit bucket for the
    /// whole site.
    #[test]
    fn a_hop_written_with_its_port_is_its_address() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.append(&X_FORWARDED_FOR, value.parse().unwrap());
            h
        };
        let proxy = ip("10.0.0.2");
        for (value, want) in [
            ("198.51.100.7:4711", "198.51.100.7"),
            ("[2001:db8::7]:443", "2001:db8::7"),
            ("6.6.6.6, 198.51.100.7:4711, 10.0.0.9:80", "198.51.100.7"),
            ("[2001:db8::8]", "2001:db8::8"),
            ("198.51.100.7:port", "10.0.0.2"),
        ] {
            assert_eq!(
                client_ip(proxy, &with(value), &trusted),
                ip(want),
                "{value}"
            );
        }
    }
}
