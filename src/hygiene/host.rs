//! The request's host: taken from the absolute-form target or `:authority` when
//! present (RFC 9112 §3.2.2), else from exactly one `Host` header; then validated
//! and put in one normal form (lower case, one trailing dot removed).

use http::header::HOST;
use http::request::Parts;

/// A validated host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHost {
    /// Lower-case name or IP literal, no port, no trailing dot: what sites match on.
    pub name: String,
    /// `name` plus `:port` when one was given: what is forwarded as `Host`.
    pub authority: String,
    /// True when the host came from the request target (HTTP/1 absolute form).
    pub from_target: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    Missing,
    Duplicate,
    Malformed,
    /// HTTP/2 `:authority` and `Host` disagree.
    Conflict,
}

pub fn request_host(parts: &Parts) -> Result<RequestHost, HostError> {
    let mut host_headers = parts.headers.get_all(HOST).iter();
    let header = host_headers.next();
    if host_headers.next().is_some() {
        return Err(HostError::Duplicate);
    }
    let header = header
        .map(|v| v.to_str().map_err(|_| HostError::Malformed).and_then(parse))
        .transpose()?;
    let target = parts
        .uri
        .authority()
        .map(|a| parse(a.as_str()))
        .transpose()?;
    let is_http2 = parts.version == http::Version::HTTP_2;
    match (target, header) {
        (Some(t), Some(h)) if is_http2 && t.0 != h.0 => Err(HostError::Conflict),
        (Some((name, authority)), _) => Ok(RequestHost {
            name,
            authority,
            from_target: !is_http2,
        }),
        (None, Some((name, authority))) => Ok(RequestHost {
            name,
            authority,
            from_target: false,
        }),
        (None, None) => Err(HostError::Missing),
    }
}

/// Parses `host[:port]` into (name, authority), refusing userinfo, empty names and
/// any character not valid in a DNS name or IP literal.
fn parse(text: &str) -> Result<(String, String), HostError> {
    // An IPv6 literal's name is its canonical form (`[0:0::1]` is `[::1]`),
    // as the configuration's host patterns hold it.
    let mut ipv6 = None;
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let end = rest.find(']').ok_or(HostError::Malformed)?;
        let literal = &rest[..end];
        let address = literal
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| HostError::Malformed)?;
        ipv6 = Some(format!("[{address}]"));
        (&text[..end + 2], &rest[end + 1..])
    } else {
        match text.rfind(':') {
            Some(i) => (&text[..i], &text[i..]),
            None => (text, ""),
        }
    };
    if let Some(digits) = port.strip_prefix(':') {
        if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HostError::Malformed);
        }
    } else if !port.is_empty() {
        return Err(HostError::Malformed);
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    let valid = !host.is_empty()
        && host.len() <= 253
        && (host.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
        && !host.starts_with('.')
        && !host.ends_with('.')
        && !host.contains("..");
    if !valid {
        return Err(HostError::Malformed);
    }
    let mut authority = String::with_capacity(host.len() + port.len());
    authority.push_str(host);
    authority.make_ascii_lowercase();
    authority.push_str(port);
    let name = ipv6.unwrap_or_else(|| authority[..host.len()].to_owned());
    Ok((name, authority))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of(builder: http::request::Builder) -> Result<RequestHost, HostError> {
        let (parts, ()) = builder.body(()).unwrap().into_parts();
        request_host(&parts)
    }

    #[test]
    fn normalises_the_host_header() {
        let h = host_of(http::Request::get("/").header("host", "GW.Example.com.:8443")).unwrap();
        assert_eq!(h.name, "gw.example.com");
        assert_eq!(h.authority, "gw.example.com:8443");
        let h = host_of(http::Request::get("/").header("host", "[::1]:8080")).unwrap();
        assert_eq!(h.name, "[::1]");
        let h = host_of(http::Request::get("/").header("host", "[0:0:0::0001]")).unwrap();
        assert_eq!(h.name, "[::1]");
    }

    #[test]
    fn absolute_form_wins_over_host() {
        let h = host_of(http::Request::get("http://other/members/x").header("host", "gw")).unwrap();
        assert_eq!(h.name, "other");
        assert!(h.from_target);
    }

    #[test]
    fn refuses_missing_duplicate_and_malformed_hosts() {
        assert_eq!(host_of(http::Request::get("/")), Err(HostError::Missing));
        let two = http::Request::get("/")
            .header("host", "a")
            .header("host", "a");
        assert_eq!(host_of(two), Err(HostError::Duplicate));
        for bad in [
            "gw@evil",
            "",
            "gw:",
            "gw:abc",
            "gw:123456",
            "a..b",
            ".gw",
            "gw/x",
            "[zz]",
            "gw:80:80",
            "gw..",
            "[::1]x",
            "[::1]evil.com",
            "[::1].",
        ] {
            let req = http::Request::get("/").header("host", bad);
            assert_eq!(host_of(req), Err(HostError::Malformed), "{bad:?}");
        }
    }

    /// A DNS name is at most 253 characters (RFC 1035); longer is refused.
    #[test]
    fn refuses_names_longer_than_dns_allows() {
        let label = "a".repeat(63);
        let longest = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(longest.len(), 253);
        let h = host_of(http::Request::get("/").header("host", longest.as_str())).unwrap();
        assert_eq!(h.name, longest);
        let over = format!("{longest}b");
        let req = http::Request::get("/").header("host", over.as_str());
        assert_eq!(host_of(req), Err(HostError::Malformed));
    }

    #[test]
    fn http2_authority_and_host_must_agree() {
        let req = http::Request::get("https://gw/")
            .version(http::Version::HTTP_2)
            .header("host", "other");
        assert_eq!(host_of(req), Err(HostError::Conflict));
        let req = http::Request::get("https://gw/").version(http::Version::HTTP_2);
        assert!(!host_of(req).unwrap().from_target);
    }
}
