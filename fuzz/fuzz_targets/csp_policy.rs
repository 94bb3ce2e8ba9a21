//! The page's Content-Security-Policy, as the widget rewrites it: for any
//! policy fields an origin may send, every enforced policy afterwards allows
//! our inline script, and none lost anything. Each directive keeps its
//! sources in order and gains at most our hash; the only new directive is a
//! `script-src` that repeats `default-src`'s sources beside the hash.
//!
//! The input is up to four fields, one per line. The checks read the result
//! with a model of the CSP 3 parse (fields split on `,` into policies,
//! policies on `;` into directives, the first directive of a name wins,
//! keywords case-insensitive), written apart from the code under test.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::header::CONTENT_SECURITY_POLICY;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use membergate::inject::csp;
use sha2::{Digest, Sha256};

const SCRIPT: &str = "window.hsConversationsSettings={};";

/// One directive: its name in lower case and its sources as written.
#[derive(Debug, PartialEq)]
struct Directive {
    name: String,
    sources: Vec<String>,
}

fn directives(policy: &str) -> Vec<Directive> {
    policy
        .split(';')
        .filter_map(|d| {
            let mut tokens = d.split_ascii_whitespace();
            let name = tokens.next()?.to_ascii_lowercase();
            Some(Directive {
                name,
                sources: tokens.map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// The directive a browser checks an inline `<script>` against.
fn governing(directives: &[Directive]) -> Option<&Directive> {
    ["script-src-elem", "script-src", "default-src"]
        .iter()
        .find_map(|name| directives.iter().find(|d| d.name == *name))
}

fn starts_with_ci(source: &str, prefix: &str) -> bool {
    source
        .get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

/// Whether a policy lets our inline script run.
fn allows(directives: &[Directive], hash: &str, nonce: Option<&str>) -> bool {
    let Some(directive) = governing(directives) else {
        return true;
    };
    let sources = &directive.sources;
    // The keyword in any case, the nonce itself exactly.
    let carries_nonce = |s: &str| {
        nonce.is_some_and(|n| {
            starts_with_ci(s, "'nonce-") && s["'nonce-".len()..] == format!("{n}'")
        })
    };
    let keyed = sources
        .iter()
        .any(|s| starts_with_ci(s, "'nonce-") || starts_with_ci(s, "'sha"));
    sources.iter().any(|s| s == hash)
        || sources.iter().any(|s| carries_nonce(s))
        || (!keyed
            && sources
                .iter()
                .any(|s| s.eq_ignore_ascii_case("'unsafe-inline'")))
}

fn fields(headers: &HeaderMap) -> Vec<Option<String>> {
    headers
        .get_all(CONTENT_SECURITY_POLICY)
        .iter()
        .map(|v| v.to_str().ok().map(str::to_owned))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n').take(4) {
        let Ok(value) = HeaderValue::from_bytes(line) else {
            return;
        };
        headers.append(CONTENT_SECURITY_POLICY, value);
    }
    // What the widget does: a page whose policy allows no script at all is
    // not rewritten; otherwise the script carries the page's nonce, if any.
    if csp::forbids_scripts(&headers) {
        return;
    }
    let nonce = csp::script_nonce(&headers);
    let before = fields(&headers);
    csp::allow_inline_script(&mut headers, SCRIPT, nonce.as_deref());
    let after = fields(&headers);
    let hash = format!("'sha256-{}'", STANDARD.encode(Sha256::digest(SCRIPT)));

    assert_eq!(before.len(), after.len(), "fields added or lost");
    for (old, new) in before.iter().zip(&after) {
        // A field that is not text is not a policy a browser enforces.
        let (Some(old), Some(new)) = (old, new) else {
            assert_eq!(old, new, "a field that is not text changed");
            continue;
        };
        let old_policies: Vec<&str> = old.split(',').collect();
        let new_policies: Vec<&str> = new.split(',').collect();
        assert_eq!(old_policies.len(), new_policies.len(), "{old:?} -> {new:?}");
        for (old_policy, new_policy) in old_policies.iter().zip(&new_policies) {
            let was = directives(old_policy);
            let is = directives(new_policy);
            assert!(
                allows(&is, &hash, nonce.as_deref()),
                "our script is blocked by {new_policy:?} (was {old_policy:?})"
            );
            assert!(
                is.len() == was.len() || is.len() == was.len() + 1,
                "{old_policy:?} -> {new_policy:?}"
            );
            for (w, i) in was.iter().zip(&is) {
                let kept = w == i
                    || (w.name == i.name
                        && i.sources.len() == w.sources.len() + 1
                        && i.sources[..w.sources.len()] == w.sources[..]
                        && i.sources.last() == Some(&hash));
                assert!(kept, "{w:?} became {i:?} in {new_policy:?}");
            }
            if let Some(added) = is.get(was.len()) {
                let default = was.iter().find(|d| d.name == "default-src");
                let mut expected = default.map(|d| d.sources.clone()).unwrap_or_default();
                expected.push(hash.clone());
                assert!(
                    added.name == "script-src"
                        && default.is_some()
                        && !was
                            .iter()
                            .any(|d| d.name == "script-src" || d.name == "script-src-elem")
                        && added.sources == expected,
                    "{added:?} added to {old_policy:?}"
                );
            }
        }
    }
});
