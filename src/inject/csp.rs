//! Content-Security-Policy for the injected script, never weakening the
//! origin's policy: reuse its nonce when it has one; otherwise, where the
//! policy restricts inline scripts, allow exactly our script by its SHA-256.
//!
//! A policy that allows `'unsafe-inline'` without nonces or hashes is left
//! alone: adding a hash there would switch `'unsafe-inline'` off for the
//! site's own inline scripts (CSP Level 2).

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use http::header::{
    CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY_REPORT_ONLY, HeaderName, HeaderValue,
};
use sha2::{Digest, Sha256};

/// The directive that governs `<script>` elements in one policy.
fn script_directive(policy: &str) -> Option<(usize, &str)> {
    let directives: Vec<&str> = policy.split(';').collect();
    for name in ["script-src-elem", "script-src", "default-src"] {
        if let Some(i) = directives.iter().position(|d| {
            d.split_ascii_whitespace()
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        }) {
            return Some((i, directives[i]));
        }
    }
    None
}

/// `source` without `prefix`, which is matched case-insensitively, as
/// browsers match CSP keywords (`'NONCE-…'` is a nonce source too).
fn strip_keyword<'s>(source: &'s str, prefix: &str) -> Option<&'s str> {
    source
        .get(..prefix.len())
        .filter(|start| start.eq_ignore_ascii_case(prefix))
        .map(|_| &source[prefix.len()..])
}

fn nonce_in(directive: &str) -> Option<&str> {
    directive.split_ascii_whitespace().find_map(|source| {
        strip_keyword(source, "'nonce-")
            .and_then(|rest| rest.strip_suffix('\''))
            .filter(|n| {
                !n.is_empty()
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+/=-_".contains(&b))
            })
    })
}

/// The enforced policies of a response, one `&str` each. A field may hold
/// several, separated by commas (CSP 3, 3.1), as it does when an
/// intermediary joins two fields into one; a script must satisfy every one.
fn policies(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONTENT_SECURITY_POLICY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|field| field.split(','))
}

/// The nonce the origin's enforced policy gives scripts, if any.
pub fn script_nonce(headers: &HeaderMap) -> Option<String> {
    policies(headers).find_map(|policy| {
        script_directive(policy)
            .and_then(|(_, d)| nonce_in(d))
            .map(str::to_owned)
    })
}

/// Whether an enforced policy allows no script element at all: its governing
/// directive lists no source that allows one (see `policy_forbids_scripts`).
/// The widget could not load there, and a hash beside `'none'` would make
/// browsers ignore the `'none'`.
pub fn forbids_scripts(headers: &HeaderMap) -> bool {
    policies(headers).any(policy_forbids_scripts)
}

/// Whether a `<meta http-equiv>` policy allows no script element at all,
/// as far as the gateway can tell. A comma in it counts as no: browsers
/// read one differently (Chromium splits the content into policies as in a
/// header, the HTML standard parses it as one), and no added hash is sure
/// to allow our script in both readings without loosening the policy in one.
pub fn meta_forbids_scripts(content: &str) -> bool {
    content.contains(',') || policy_forbids_scripts(content)
}

/// Whether the policy's script directive lets no script run: none of its
/// sources allows one (`'none'`, and keywords that only qualify others:
/// `'report-sample'`, `'strict-dynamic'`, `'unsafe-eval'` ...). Adding a hash
/// beside them would let ours run where the page's author let none.
fn policy_forbids_scripts(policy: &str) -> bool {
    script_directive(policy).is_some_and(|(_, directive)| {
        !directive
            .split_ascii_whitespace()
            .skip(1)
            .any(allows_some_script)
    })
}

/// Whether a source expression lets some script run by itself: a host or
/// scheme, `'self'`, `'unsafe-inline'`, a nonce or a hash.
fn allows_some_script(source: &str) -> bool {
    let Some(keyword) = source.strip_prefix('\'') else {
        return true;
    };
    let keyword = keyword.to_ascii_lowercase();
    [
        "self'",
        "unsafe-inline'",
        "nonce-",
        "sha256-",
        "sha384-",
        "sha512-",
    ]
    .iter()
    .any(|allowing| keyword.starts_with(allowing))
}

/// The source expression that allows exactly the inline `script`.
fn hash_source(script: &str) -> String {
    format!(
        "'sha256-{}'",
        STANDARD.encode(Sha256::digest(script.as_bytes()))
    )
}

/// A `<meta http-equiv>` policy, one with no comma (see
/// [`meta_forbids_scripts`]), rewritten to allow the inline `script`;
/// `None` when it already does.
pub fn allow_in_meta(content: &str, script: &str, nonce: Option<&str>) -> Option<String> {
    match allow_in_policy(content, &hash_source(script), nonce) {
        Cow::Borrowed(_) => None,
        Cow::Owned(policy) => Some(policy),
    }
}

fn allow_with_hash(field: &str, hash: &str, nonce: Option<&str>) -> Option<String> {
    let policies: Vec<Cow<'_, str>> = field
        .split(',')
        .map(|policy| allow_in_policy(policy, hash, nonce))
        .collect();
    if policies.iter().all(|p| matches!(p, Cow::Borrowed(_))) {
        return None;
    }
    Some(policies.join(",").trim().to_owned())
}

/// Makes every policy allow the inline `script` (its text between the
/// tags), adding its hash only where nothing else already allows it: the
/// enforced ones, so that it runs, and the report-only ones, so that a site
/// trying a policy out is not sent a violation report for it on every page.
pub fn allow_inline_script(headers: &mut HeaderMap, script: &str, nonce: Option<&str>) {
    let mut hash = None;
    for name in [CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY_REPORT_ONLY] {
        if headers.contains_key(&name) {
            let hash = hash.get_or_insert_with(|| hash_source(script));
            allow_in_fields(headers, name, hash, nonce);
        }
    }
}

fn allow_in_fields(headers: &mut HeaderMap, name: HeaderName, hash: &str, nonce: Option<&str>) {
    let fields: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
    let mut rewritten = Vec::with_capacity(fields.len());
    for value in fields {
        let allowing = value
            .to_str()
            .ok()
            .and_then(|field| allow_with_hash(field, hash, nonce))
            .and_then(|field| HeaderValue::from_str(&field).ok());
        rewritten.push(allowing.unwrap_or(value));
    }
    headers.remove(&name);
    for value in rewritten {
        headers.append(&name, value);
    }
}

/// One policy that allows the inline script whose source expression is
/// `hash`: borrowed as it is when it already does (by `nonce`, or by
/// `'unsafe-inline'` without nonces or hashes) or restricts no script.
fn allow_in_policy<'p>(policy: &'p str, hash: &str, nonce: Option<&str>) -> Cow<'p, str> {
    let Some((index, directive)) = script_directive(policy) else {
        return Cow::Borrowed(policy);
    };
    let sources: Vec<&str> = directive.split_ascii_whitespace().skip(1).collect();
    let has_nonce_or_hash = sources
        .iter()
        .any(|s| strip_keyword(s, "'nonce-").is_some() || strip_keyword(s, "'sha").is_some());
    let allowed = nonce.is_some_and(|n| nonce_in(directive) == Some(n))
        || (!has_nonce_or_hash
            && sources
                .iter()
                .any(|s| s.eq_ignore_ascii_case("'unsafe-inline'")));
    if allowed {
        return Cow::Borrowed(policy);
    }
    // Whitespace after the policy stays there, before the next comma.
    let body = policy.trim_end();
    let trailing = &policy[body.len()..];
    let mut directives: Vec<String> = body.split(';').map(str::to_owned).collect();
    let name = directive
        .split_ascii_whitespace()
        .next()
        .unwrap_or("script-src");
    if name.eq_ignore_ascii_case("default-src") {
        // Keep default-src as is for everything else; scripts get their own directive.
        directives.push(format!(" script-src {} {hash}", sources.join(" ")));
    } else {
        directives[index] = format!("{} {hash}", directive.trim_end());
    }
    Cow::Owned(format!("{}{trailing}", directives.join(";")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csp(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CONTENT_SECURITY_POLICY, v.parse().unwrap());
        }
        h
    }

    fn after(values: &[&str], nonce: Option<&str>) -> Vec<String> {
        let mut h = csp(values);
        allow_inline_script(&mut h, "x()", nonce);
        h.get_all(CONTENT_SECURITY_POLICY)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    const HASH: &str = "'sha256-D6IGS8VMvCoyaR/l0h9tERrBTATY01CoPS7l6xDv0kI='";

    #[test]
    fn report_only_policies_allow_the_script_too_and_forbid_nothing() {
        let mut h = HeaderMap::new();
        h.append(
            CONTENT_SECURITY_POLICY_REPORT_ONLY,
            "script-src 'self'; report-uri /csp".parse().unwrap(),
        );
        h.append(
            CONTENT_SECURITY_POLICY_REPORT_ONLY,
            "script-src 'none'".parse().unwrap(),
        );
        // Only reported, never enforced: the widget can still load.
        assert!(!forbids_scripts(&h));
        allow_inline_script(&mut h, "x()", None);
        let report_only: Vec<_> = h
            .get_all(CONTENT_SECURITY_POLICY_REPORT_ONLY)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            report_only,
            [
                format!("script-src 'self' {HASH}; report-uri /csp"),
                format!("script-src 'none' {HASH}"),
            ]
        );
        assert!(!h.contains_key(CONTENT_SECURITY_POLICY));
        // Beside an enforced policy, each gets what it needs.
        let mut h = csp(&["script-src 'nonce-n1'"]);
        h.append(
            CONTENT_SECURITY_POLICY_REPORT_ONLY,
            "script-src 'strict-dynamic'".parse().unwrap(),
        );
        allow_inline_script(&mut h, "x()", Some("n1"));
        assert_eq!(h[CONTENT_SECURITY_POLICY], "script-src 'nonce-n1'");
        assert_eq!(
            h[CONTENT_SECURITY_POLICY_REPORT_ONLY],
            format!("script-src 'strict-dynamic' {HASH}").as_str()
        );
    }

    #[test]
    fn a_meta_policy_with_a_comma_is_left_alone() {
        // One policy with odd tokens to the standard, two to Chromium.
        assert!(meta_forbids_scripts("default-src 'self', img-src *"));
        assert!(!meta_forbids_scripts("default-src 'self'; img-src *"));
        assert!(meta_forbids_scripts("default-src 'none'"));
        assert_eq!(
            allow_in_meta("default-src 'self'; img-src *", "x()", None),
            Some(format!(
                "default-src 'self'; img-src *; script-src 'self' {HASH}"
            ))
        );
        assert_eq!(
            allow_in_meta("script-src 'nonce-a'", "x()", Some("a")),
            None
        );
    }

    #[test]
    fn nonces_are_found_in_the_directive_that_governs_scripts() {
        assert_eq!(
            script_nonce(&csp(&[
                "default-src 'self'; script-src 'nonce-abc123' 'strict-dynamic'"
            ])),
            Some("abc123".into())
        );
        assert_eq!(
            script_nonce(&csp(&["default-src 'nonce-d3f'"])),
            Some("d3f".into())
        );
        assert_eq!(script_nonce(&csp(&["style-src 'nonce-s'"])), None);
        assert_eq!(script_nonce(&csp(&["script-src 'nonce-\"><x'"])), None);
        assert_eq!(script_nonce(&HeaderMap::new()), None);
    }

    #[test]
    fn hashes_are_added_only_where_needed_and_nothing_is_loosened() {
        assert_eq!(Sha256::digest(b"x()").len(), 32);
        // With the page's nonce on our script: unchanged.
        assert_eq!(
            after(&["script-src 'nonce-n1'"], Some("n1")),
            ["script-src 'nonce-n1'"]
        );
        // Hash-based policies get our hash.
        assert_eq!(
            after(&["script-src 'sha256-AAAA' 'self'"], None),
            [format!("script-src 'sha256-AAAA' 'self' {HASH}")]
        );
        // 'self' only: our inline script needs its hash.
        assert_eq!(
            after(&["default-src 'self'; img-src *"], None),
            [format!(
                "default-src 'self'; img-src *; script-src 'self' {HASH}"
            )]
        );
        // 'unsafe-inline' without hashes already allows it; a hash would switch it off.
        assert_eq!(
            after(&["script-src 'self' 'unsafe-inline'"], None),
            ["script-src 'self' 'unsafe-inline'"]
        );
        // No script restriction at all: untouched.
        assert_eq!(
            after(&["frame-ancestors 'none'"], None),
            ["frame-ancestors 'none'"]
        );
    }

    /// A field may hold several policies, joined by commas (as an
    /// intermediary joins two fields): each is a policy of its own, and our
    /// hash goes into each one's script directive, not the first one's text.
    #[test]
    fn each_policy_of_a_comma_joined_field_is_its_own() {
        assert_eq!(
            after(&["script-src 'self', object-src 'none'"], None),
            [format!("script-src 'self' {HASH}, object-src 'none'")]
        );
        assert_eq!(
            after(
                &["img-src *, default-src 'self' ,script-src 'sha256-AAAA'"],
                None
            ),
            [format!(
                "img-src *, default-src 'self'; script-src 'self' {HASH} ,script-src 'sha256-AAAA' {HASH}"
            )]
        );
        // The nonce is the first policy's; another policy that does not
        // know it gets the hash.
        let joined = csp(&["script-src 'nonce-n1', script-src 'nonce-n2'"]);
        assert_eq!(script_nonce(&joined), Some("n1".into()));
        assert_eq!(
            after(
                &["script-src 'nonce-n1', script-src 'nonce-n2'"],
                Some("n1")
            ),
            [format!(
                "script-src 'nonce-n1', script-src 'nonce-n2' {HASH}"
            )]
        );
        // Keywords in any case: a nonce source in capitals still switches
        // 'unsafe-inline' off, so our script needs the hash.
        assert_eq!(
            after(&["script-src 'unsafe-inline' 'NONCE-abc'"], None),
            [format!("script-src 'unsafe-inline' 'NONCE-abc' {HASH}")]
        );
        assert_eq!(
            script_nonce(&csp(&["script-src 'Nonce-abc'"])),
            Some("abc".into())
        );
        // A policy after a comma that allows no script is one that forbids.
        assert!(forbids_scripts(&csp(&["default-src *, script-src 'none'"])));
        assert!(forbids_scripts(&csp(&["img-src *,default-src 'none'"])));
        assert!(!forbids_scripts(&csp(&[
            "script-src 'none' 'self', img-src 'none'"
        ])));
    }

    #[test]
    fn policies_that_allow_no_script_are_recognised() {
        for policy in [
            "default-src 'none'",
            "script-src 'NONE'; img-src *",
            "default-src 'self'; script-src",
            "script-src-elem 'none'; script-src 'self'",
            // Keywords that only qualify other sources allow nothing alone.
            "script-src 'none' 'report-sample'",
            "script-src 'strict-dynamic'",
            "script-src 'unsafe-eval' 'wasm-unsafe-eval' 'unsafe-hashes'",
        ] {
            assert!(forbids_scripts(&csp(&[policy])), "{policy}");
        }
        for policy in [
            "default-src 'self'",
            "default-src 'none'; script-src 'self'",
            "img-src 'none'",
            "script-src 'none' 'sha256-abc='",
            "script-src 'strict-dynamic' 'nonce-n0'",
            "script-src 'report-sample' https://cdn.example",
            "script-src 'UNSAFE-INLINE'",
        ] {
            assert!(!forbids_scripts(&csp(&[policy])), "{policy}");
        }
        assert!(forbids_scripts(&csp(&[
            "default-src *",
            "script-src 'none'"
        ])));
    }
}
