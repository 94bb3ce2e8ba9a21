//! Cross-site request forgery defence for the gateway's forms (catalogue D7):
//! every POST must come from our own origin (`Origin`, or `Sec-Fetch-Site` when
//! a browser sends no `Origin`) and carry a token bound to the visitor: the
//! session for members, a random pre-session cookie for everyone else (which
//! also stops login CSRF).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The token for a binding (session id hash, or the pre-session cookie value).
pub fn token(key: &[u8; 32], binding: &[u8]) -> String {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return String::new();
    };
    mac.update(b"csrf");
    mac.update(binding);
    URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..16])
}

/// Compares a submitted token in constant time.
pub fn token_matches(key: &[u8; 32], binding: &[u8], submitted: &str) -> bool {
    let expected = token(key, binding);
    !expected.is_empty() && expected.as_bytes().ct_eq(submitted.as_bytes()).into()
}

/// Whether the request comes from a page of this site: the browser's
/// `Origin` names `authority` (`host[:port]`), or without one `Sec-Fetch-Site`
/// says `same-origin`. Over TLS only `https://` will do. On a plain connection
/// either scheme: that is the sidecar behind a TLS-terminating ingress, where
/// browsers say `https://`, and an https page of this host is no less trusted
/// than an http one.
pub fn same_origin(headers: &http::HeaderMap, authority: &str, tls: bool) -> bool {
    if let Some(origin) = headers.get(http::header::ORIGIN) {
        let Some((scheme, host)) = origin.to_str().ok().and_then(|o| o.split_once("://")) else {
            return false;
        };
        let scheme_ok =
            scheme.eq_ignore_ascii_case("https") || (!tls && scheme.eq_ignore_ascii_case("http"));
        return scheme_ok && host.eq_ignore_ascii_case(authority);
    }
    headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site == "same-origin")
}

/// A fresh random pre-session value.
pub fn new_pre_session() -> String {
    let mut bytes = [0u8; 24];
    let _ = getrandom::fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_to_their_binding() {
        let key = [7u8; 32];
        let t = token(&key, b"session-a");
        assert!(token_matches(&key, b"session-a", &t));
        assert!(!token_matches(&key, b"session-b", &t));
        assert!(!token_matches(&[8u8; 32], b"session-a", &t));
        assert!(!token_matches(&key, b"session-a", ""));
    }

    #[test]
    fn origin_checks() {
        let mut h = http::HeaderMap::new();
        assert!(!same_origin(&h, "gw.test", true));
        h.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert!(same_origin(&h, "gw.test", true));
        h.insert("origin", "https://evil.com".parse().unwrap());
        assert!(!same_origin(&h, "gw.test", true));
        h.insert("origin", "null".parse().unwrap());
        assert!(!same_origin(&h, "gw.test", true));
        h.insert("origin", "https://GW.test".parse().unwrap());
        assert!(same_origin(&h, "gw.test", true));
        // Behind a TLS-terminating ingress the connection is plain, the
        // browser's page https.
        assert!(same_origin(&h, "gw.test", false));
        h.insert("origin", "http://gw.test".parse().unwrap());
        assert!(same_origin(&h, "gw.test", false));
        assert!(!same_origin(&h, "gw.test", true));
        h.insert("origin", "https://gw.test.evil.com".parse().unwrap());
        assert!(!same_origin(&h, "gw.test", false));
        h.insert("origin", "https://gw.test:8443".parse().unwrap());
        assert!(!same_origin(&h, "gw.test", false));
        // Without `Origin`, only `same-origin` will do: `same-site` is a
        // sibling subdomain's page, `none` one the browser opened itself.
        for site in ["cross-site", "same-site", "none", ""] {
            let mut other = http::HeaderMap::new();
            other.insert("sec-fetch-site", site.parse().unwrap());
            assert!(!same_origin(&other, "gw.test", true), "{site:?}");
        }
    }
}
