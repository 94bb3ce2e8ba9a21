//! Where to send a visitor after login, logout or registration: only a path on
//! this site (attack catalogue C1).

/// `value` has already been percent-decoded once (by the form or query parser).
/// Accepted: `/` followed by anything but `/` or `\`, with no control or
/// whitespace character anywhere and no `\`. Everything else becomes `/`.
pub fn safe(value: Option<&str>) -> String {
    let Some(value) = value else {
        return "/".into();
    };
    let bytes = value.as_bytes();
    let ok = bytes.first() == Some(&b'/')
        && !matches!(bytes.get(1), Some(b'/' | b'\\'))
        && value.len() <= 2048
        && !value
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\');
    if ok { value.to_owned() } else { "/".into() }
}

#[cfg(test)]
mod tests {
    use super::safe;

    #[test]
    fn only_same_site_paths_survive() {
        for good in ["/", "/members/", "/kb/a.html?x=1#top", "/a/b%2Fc"] {
            assert_eq!(safe(Some(good)), good);
        }
        let corpus = [
            "//evil.com",
            "/\\evil.com",
            "/\t/evil.com",
            "\\\\evil.com",
            "/./\\evil.com",
            "https:evil.com",
            "https://evil.com",
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            "data:text/html,x",
            "https://gw.evil.com",
            "https://gw@evil.com",
            "\r\nSet-Cookie:x=1",
            "/x\r\nSet-Cookie:x=1",
            " /x",
            "",
            "evil.com",
            "/\u{2028}x",
        ];
        for bad in corpus {
            assert_eq!(safe(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe(None), "/");
    }
}
