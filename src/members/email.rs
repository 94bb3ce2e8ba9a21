//! The one canonical form of an email address, used for uniqueness, login and
//! reset lookups (attack catalogue E4): trimmed, exactly one `@`, the local part
//! lower-cased and NFC-normalised, the domain IDNA-mapped to lower-case ASCII
//! with one trailing dot removed. Quoted local parts and control characters are
//! refused rather than interpreted.
//!
//! RFC 5321 lets a mail server treat `Alice` and `alice` as two mailboxes; no
//! common provider does, and two accounts for one mailbox invite confusion, so
//! the local part is lower-cased too (Unicode lower case, so `ı` stays `ı`).

use unicode_normalization::UnicodeNormalization;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailError {
    Empty,
    TooLong,
    NotOneAt,
    BadLocalPart,
    BadDomain,
}

impl std::fmt::Display for EmailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EmailError::Empty => "Enter an email address.",
            EmailError::TooLong => "That email address is too long.",
            EmailError::NotOneAt => "An email address has exactly one @.",
            EmailError::BadLocalPart => {
                "The part before the @ contains characters that are not allowed."
            }
            EmailError::BadDomain => "The part after the @ is not a valid domain.",
        })
    }
}

/// The canonical form of an address for a new account. `/`, `?` and `#` are
/// legal in a mailbox name, but would make the address unusable in a URL
/// path (the admin API's `/members/{email}`), and no real provider hands them
/// out. Accounts made before this rule keep working: lookups use
/// [`canonical`].
pub fn canonical_new(input: &str) -> Result<String, EmailError> {
    let address = canonical(input)?;
    let local = address.split('@').next().unwrap_or_default();
    if local.contains(['/', '?', '#']) {
        return Err(EmailError::BadLocalPart);
    }
    Ok(address)
}

/// Returns the canonical form of `input`, or why it is not an address we accept.
pub fn canonical(input: &str) -> Result<String, EmailError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(EmailError::Empty);
    }
    if trimmed.len() > 254 {
        return Err(EmailError::TooLong);
    }
    let mut parts = trimmed.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(EmailError::NotOneAt);
    };
    let local: String = local.to_lowercase().nfc().collect();
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| {
            !c.is_control()
                && !c.is_whitespace()
                && !matches!(
                    c,
                    '"' | '(' | ')' | ',' | ':' | ';' | '<' | '>' | '[' | '\\' | ']'
                )
        });
    if !local_ok {
        return Err(EmailError::BadLocalPart);
    }
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() || domain.starts_with('.') || domain.contains("..") {
        return Err(EmailError::BadDomain);
    }
    let ascii = idna::domain_to_ascii(domain).map_err(|_| EmailError::BadDomain)?;
    let labels_ok = ascii.contains('.')
        && ascii.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !labels_ok {
        return Err(EmailError::BadDomain);
    }
    Ok(format!("{local}@{ascii}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_form_for_variants_of_the_same_address() {
        for variant in [
            " alice@example.com ",
            "alice@EXAMPLE.com",
            "alice@example.com.",
            "alice@Example.COM",
        ] {
            assert_eq!(
                canonical(variant).unwrap(),
                "alice@example.com",
                "{variant:?}"
            );
        }
        assert_eq!(canonical("Alice@example.com").unwrap(), "alice@example.com");
        assert_eq!(canonical("ALICE@EXAMPLE.COM").unwrap(), "alice@example.com");
        assert_eq!(
            canonical("zoë@bücher.example").unwrap(),
            "zoë@xn--bcher-kva.example"
        );
        // NFC: a decomposed ë is the same address as a composed one.
        assert_eq!(
            canonical("zoe\u{308}@example.com").unwrap(),
            "zoë@example.com"
        );
    }

    #[test]
    fn refuses_ambiguous_addresses() {
        let cases = [
            ("", EmailError::Empty),
            ("   ", EmailError::Empty),
            ("a@evil.com@example.com", EmailError::NotOneAt),
            ("alice", EmailError::NotOneAt),
            ("\"a@b\"@example.com", EmailError::NotOneAt),
            ("\"ab\"@example.com", EmailError::BadLocalPart),
            ("a b@example.com", EmailError::BadLocalPart),
            ("a\r\nb@example.com", EmailError::BadLocalPart),
            (".a@example.com", EmailError::BadLocalPart),
            ("a..b@example.com", EmailError::BadLocalPart),
            ("a@localhost", EmailError::BadDomain),
            ("a@exa mple.com", EmailError::BadDomain),
            ("a@example..com", EmailError::BadDomain),
            ("a@-example.com", EmailError::BadDomain),
            ("a@example.com..", EmailError::BadDomain),
        ];
        for (input, want) in cases {
            assert_eq!(canonical(input), Err(want), "{input:?}");
        }
        // Unusable in the admin API's /members/{email}: not for new accounts,
        // still found for old ones.
        for address in ["a/b@example.com", "a?b@example.com", "a#b@example.com"] {
            assert_eq!(canonical_new(address), Err(EmailError::BadLocalPart));
            assert_eq!(canonical(address).as_deref(), Ok(address));
        }
        assert_eq!(
            canonical(&format!("{}@example.com", "a".repeat(65))),
            Err(EmailError::BadLocalPart)
        );
        assert_eq!(
            canonical(&format!("a@{}.com", "b".repeat(260))),
            Err(EmailError::TooLong)
        );
    }

    #[test]
    fn dotless_i_is_not_folded_into_i() {
        assert_ne!(
            canonical("\u{131}@example.com").unwrap(),
            canonical("i@example.com").unwrap()
        );
    }
}
