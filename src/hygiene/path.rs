//! Request-path normalisation: done once, before any decision, so that routing,
//! access policy and the origin all see the same path.
//!
//! The rules (RFC 3986 §5.2.4 plus the attack catalogue, section A):
//! - `//` collapses to `/`; `.` and `..` segments are resolved, never above the root;
//! - `%XX` escapes are decoded once; an escape that decodes to `/`, `\`, `.`, `?`,
//!   `#`, `;` or a control byte is refused, as is a literal `\` or `;`, a broken
//!   escape, anything that is not valid UTF-8 after decoding, and a C1 control
//!   character (U+0080..U+009F), raw or escaped;
//! - the origin is sent a canonical re-encoding of exactly the decoded path.
//!
//! `http::Uri` has already dropped any `#fragment` from the request target, so a
//! target like `/public/#/../members` reaches us as `/public/` and is forwarded as such.

use std::fmt;

/// A path in normal form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath {
    /// The decoded path that decisions are made on. Starts with `/`.
    pub decoded: String,
    /// `decoded`, percent-encoded for the request line sent upstream.
    pub encoded: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    BadEscape,
    ForbiddenEscape,
    ForbiddenCharacter,
    InvalidUtf8,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the path does not start with /",
            PathError::BadEscape => "a %-escape is malformed",
            PathError::ForbiddenEscape => "a %-escape encodes a separator or control character",
            PathError::ForbiddenCharacter => "the path contains \\ or ;",
            PathError::InvalidUtf8 => "the path is not valid UTF-8",
        })
    }
}

/// Normalises a raw request path (without query). See the module docs for the rules.
pub fn normalise(raw: &str) -> Result<NormalPath, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_already_normal(raw) {
        return Ok(NormalPath {
            decoded: raw.to_owned(),
            encoded: raw.to_owned(),
        });
    }
    // Each kept segment's decoded bytes are appended to `out`; `starts` remembers
    // where each segment began so that `..` can pop it.
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    let mut starts: Vec<usize> = Vec::new();
    let mut trailing_slash = false;
    for segment in raw[1..].split('/') {
        trailing_slash = false;
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                if let Some(start) = starts.pop() {
                    out.truncate(start);
                }
                trailing_slash = true;
            }
            _ => {
                starts.push(out.len());
                out.push(b'/');
                decode_segment(segment, &mut out)?;
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push(b'/');
    }
    let decoded = String::from_utf8(out).map_err(|_| PathError::InvalidUtf8)?;
    // C1 controls (U+0080..U+009F, NEL among them) are line breaks or worse to
    // some software, raw or escaped; ASCII controls were refused above.
    if decoded.chars().any(char::is_control) {
        return Err(PathError::ForbiddenEscape);
    }
    let encoded = encode(&decoded);
    Ok(NormalPath { decoded, encoded })
}

/// True when `raw` has nothing to decode or resolve, which is nearly every request:
/// only path characters that need no escaping, and no empty or dot segments.
fn is_already_normal(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let plain = bytes.iter().all(|&b| is_path_char(b) && b != b'%');
    plain && !raw.contains("//") && !raw.split('/').skip(1).any(|s| s == "." || s == "..")
}

fn decode_segment(segment: &str, out: &mut Vec<u8>) -> Result<(), PathError> {
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let value = (hex_value(hex[0]).ok_or(PathError::BadEscape)? << 4)
                    | hex_value(hex[1]).ok_or(PathError::BadEscape)?;
                if value < 0x20
                    || value == 0x7f
                    || matches!(value, b'/' | b'\\' | b'.' | b'?' | b'#' | b';')
                {
                    return Err(PathError::ForbiddenEscape);
                }
                out.push(value);
                i += 3;
            }
            b'\\' | b';' => return Err(PathError::ForbiddenCharacter),
            // `http::Uri` has already refused controls, spaces and other bytes that
            // may not appear raw; bytes >= 0x80 pass here and are UTF-8 checked later.
            _ if b < 0x20 || b == 0x7f => return Err(PathError::ForbiddenCharacter),
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(())
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Bytes that may stand unescaped in a path segment (RFC 3986 `pchar`, minus `;`)
/// plus the `/` separator.
fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

fn encode(decoded: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(decoded.len());
    for &b in decoded.as_bytes() {
        if is_path_char(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(raw: &str) -> Result<String, PathError> {
        normalise(raw).map(|p| p.decoded)
    }

    #[test]
    fn resolves_dot_segments_and_empty_segments() {
        let cases = [
            ("/", "/"),
            ("/blog/", "/blog/"),
            ("/blog", "/blog"),
            ("/public/../members/x", "/members/x"),
            ("/../../members/x", "/members/x"),
            ("//members/x", "/members/x"),
            ("/./members/x", "/members/x"),
            ("/public/./../members/x", "/members/x"),
            ("/members/x/.", "/members/x/"),
            ("/members/x/..", "/members/"),
            ("/a/b/../../..", "/"),
            ("/members./x", "/members./x"),
            ("/...", "/..."),
        ];
        for (raw, want) in cases {
            assert_eq!(decoded(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn refuses_encoded_separators_dots_and_controls() {
        let cases = [
            ("/public/%2e%2e/members/x", PathError::ForbiddenEscape),
            ("/public/%2E%2E%2Fmembers/x", PathError::ForbiddenEscape),
            ("/members%2Fx", PathError::ForbiddenEscape),
            ("/public%2F..%2Fmembers", PathError::ForbiddenEscape),
            ("/members%5Cx", PathError::ForbiddenEscape),
            ("/members%00.css", PathError::ForbiddenEscape),
            ("/members%3B.css", PathError::ForbiddenEscape),
            ("/kb/%C2%85x", PathError::ForbiddenEscape),
            ("/kb/\u{85}x", PathError::ForbiddenEscape),
            ("/kb//\u{9d}", PathError::ForbiddenEscape),
            ("/public%23/../members", PathError::ForbiddenEscape),
            ("/public%3F/../members", PathError::ForbiddenEscape),
            ("/api%2e/admin", PathError::ForbiddenEscape),
            ("/members%0d%0aX", PathError::ForbiddenEscape),
            ("/members\\x", PathError::ForbiddenCharacter),
            ("/members;a=1/x", PathError::ForbiddenCharacter),
            ("/members/x;.css", PathError::ForbiddenCharacter),
            ("/%C0%AE%C0%AE/members/x", PathError::InvalidUtf8),
            ("/%ff", PathError::InvalidUtf8),
            ("/%zz", PathError::BadEscape),
            ("/%4", PathError::BadEscape),
            ("*", PathError::NotAbsolute),
            ("members", PathError::NotAbsolute),
        ];
        for (raw, want) in cases {
            assert_eq!(decoded(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn keeps_unicode_without_folding_and_reencodes_canonically() {
        let p = normalise("/members%EF%BC%8Fx").unwrap();
        assert_eq!(p.decoded, "/members\u{FF0F}x");
        assert_eq!(p.encoded, "/members%EF%BC%8Fx");
        let p = normalise("/%E2%80%AEmembers").unwrap();
        assert_eq!(p.decoded, "/\u{202E}members");
        let p = normalise("/a%20b/%41%25").unwrap();
        assert_eq!(p.decoded, "/a b/A%");
        assert_eq!(p.encoded, "/a%20b/A%25");
        let p = normalise("/members%20/x").unwrap();
        assert_eq!(p.decoded, "/members /x");
    }

    #[test]
    fn normal_paths_pass_unchanged() {
        for raw in [
            "/",
            "/kb/getting-started.html",
            "/a-b_c~d/e:f@g!h$i&j'k(l)m*n+o,p=q",
        ] {
            let p = normalise(raw).unwrap();
            assert_eq!((p.decoded.as_str(), p.encoded.as_str()), (raw, raw));
        }
    }

    #[test]
    fn encoding_round_trips_through_normalise() {
        for raw in ["/a%20b", "/%E2%80%AE", "/x%25y", "/q%22", "/b%7B%7D"] {
            let once = normalise(raw).unwrap();
            let twice = normalise(&once.encoded).unwrap();
            assert_eq!(once, twice, "{raw}");
        }
    }
}
