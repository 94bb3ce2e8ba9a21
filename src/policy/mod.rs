//! Access policy: which visitors may open which paths. A pure function over
//! plain types, so it is table-tested here and reused as is by
//! `membergate policy check`.
//!
//! Rules are tried in order and the first whose pattern covers the path
//! decides; a path no rule covers gets the site's default. A pattern is a
//! prefix that matches whole segments, or a glob when it holds `*`, `?`, `[` or
//! `{` (`*` stays within a segment, `**` crosses them); both ignore ASCII case,
//! like routes. A glob covers the whole path, with or without a trailing `/`
//! (end it with `/**` to cover what lies below).

use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Public,
    /// Any active member.
    Members,
    /// Members of at least one of these groups.
    Groups(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// The pattern as configured (normalised), for messages.
    pub path: String,
    pattern: PathPattern,
    pub access: Access,
    /// A page served to anonymous visitors instead of the login redirect.
    pub teaser: Option<Arc<Teaser>>,
    /// The gateway decides caching (the default): members-only responses get
    /// `Cache-Control: private, no-store` and `X-Robots-Tag: noindex`, public
    /// pages served to a member stay out of shared caches. `false` keeps the
    /// origin's caching headers.
    pub private: bool,
}

/// A teaser template (minijinja), read when the configuration is loaded.
#[derive(Debug)]
pub struct Teaser {
    pub file: PathBuf,
    pub source: String,
}

/// A path prefix (whole segments) or a glob, both ignoring ASCII case. Shared
/// by access rules and chat targeting rules.
#[derive(Debug, Clone)]
pub enum PathPattern {
    /// Lower case; no trailing `/` unless it is `/`.
    Prefix(String),
    /// The glob, and for one ending in `/**` the directory itself.
    Glob(globset::GlobMatcher, Option<globset::GlobMatcher>),
}

impl PathPattern {
    /// A normalised prefix, or a glob when `path` holds `*`, `?`, `[` or `{`.
    pub fn new(path: &str) -> Result<PathPattern, String> {
        if is_glob(path) {
            // Matched without its trailing `/`, as `matches` tries paths with
            // and without theirs: `/reports/*/` covers `/reports/q3` too.
            let path = match path.strip_suffix('/') {
                Some(bare) if !bare.is_empty() => bare,
                _ => path,
            };
            // `/members/**` is everything in `/members`, and `/members`
            // itself: an origin that serves `/members/` at `/members` too
            // must not hand it out unprotected. Matched as a glob of its own,
            // not spliced into an alternation: a `,` or `{` in the base would
            // change what the alternation means.
            let build = |text: &str| {
                globset::GlobBuilder::new(text)
                    .case_insensitive(true)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map(|g| g.compile_matcher())
                    .map_err(|e| format!("not a valid glob: {}", e.kind()))
            };
            let directory = match path.strip_suffix("/**") {
                Some(base) if !base.is_empty() => Some(build(base)?),
                _ => None,
            };
            Ok(PathPattern::Glob(build(path)?, directory))
        } else {
            Ok(PathPattern::Prefix(path.to_ascii_lowercase()))
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Prefix(prefix) => crate::routing::prefix_matches(prefix, path),
            // A glob covers the whole path, and `/a/b/` is the same page as
            // `/a/b` to most origins: a rule for one must not miss the other.
            PathPattern::Glob(glob, directory) => {
                let is_match =
                    |p: &str| glob.is_match(p) || directory.as_ref().is_some_and(|d| d.is_match(p));
                is_match(path)
                    || path
                        .strip_suffix('/')
                        .is_some_and(|bare| !bare.is_empty() && is_match(bare))
            }
        }
    }
}

impl Rule {
    /// A rule for `path`: a normalised prefix, or a glob (see the module docs).
    pub fn new(path: &str, access: Access) -> Result<Rule, String> {
        Ok(Rule {
            path: path.to_owned(),
            pattern: PathPattern::new(path)?,
            access,
            teaser: None,
            private: true,
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        self.pattern.matches(path)
    }
}

/// Whether a rule path is a glob rather than a prefix.
pub fn is_glob(path: &str) -> bool {
    path.contains(['*', '?', '[', '{'])
}

#[derive(Debug, Clone)]
pub struct Rules {
    pub rules: Vec<Rule>,
    pub default: Access,
}

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub enum Visitor<'a> {
    Anonymous,
    Member { groups: &'a [String] },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Anonymous on a protected path: log in first.
    Login,
    /// A member without the needed group.
    Forbidden,
}

/// The decision and the index of the rule that made it (`None`: the default).
pub fn decide(rules: &Rules, path: &str, visitor: Visitor<'_>) -> (Decision, Option<usize>) {
    let matched = rules.rules.iter().position(|r| r.matches(path));
    let access = matched.map_or(&rules.default, |i| &rules.rules[i].access);
    let decision = match (access, visitor) {
        (Access::Public, _) => Decision::Allow,
        (_, Visitor::Anonymous) => Decision::Login,
        (Access::Members, Visitor::Member { .. }) => Decision::Allow,
        (Access::Groups(wanted), Visitor::Member { groups }) => {
            if wanted.iter().any(|w| groups.iter().any(|g| g == w)) {
                Decision::Allow
            } else {
                Decision::Forbidden
            }
        }
    };
    (decision, matched)
}

/// The decision for a page that is also served under another path (`alias`:
/// a directory origin's `/dir/index.html` for `/dir/`): the stricter of the
/// two holds, so a rule written for the file covers its alias too.
pub fn decide_page(
    rules: &Rules,
    path: &str,
    alias: Option<&str>,
    visitor: Visitor<'_>,
) -> (Decision, Option<usize>) {
    let alias = alias.map(|alias| decide(rules, alias, visitor));
    stricter(decide(rules, path, visitor), alias)
}

/// Of a page's decision and its alias's (see [`decide_page`]), the stricter;
/// the page's own on a tie.
pub fn stricter(
    own: (Decision, Option<usize>),
    alias: Option<(Decision, Option<usize>)>,
) -> (Decision, Option<usize>) {
    match alias {
        Some(alias) if alias.0.strictness() > own.0.strictness() => alias,
        _ => own,
    }
}

impl Decision {
    /// How much a decision keeps out: of two decisions for one page, the
    /// stricter holds.
    pub fn strictness(self) -> u8 {
        match self {
            Decision::Allow => 0,
            Decision::Login => 1,
            Decision::Forbidden => 2,
        }
    }
}

impl Rules {
    /// True when the path needs a member.
    pub fn is_protected(&self, path: &str) -> bool {
        decide(self, path, Visitor::Anonymous).0 != Decision::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        let rule = |path: &str, access| Rule::new(path, access).unwrap();
        Rules {
            rules: vec![
                rule("/kb/member-handbook.html", Access::Members),
                rule("/members", Access::Members),
                rule("/vip", Access::Groups(vec!["vip".into(), "staff".into()])),
                rule("/members/open-day", Access::Public),
                rule("/blog/*/premium-*.html", Access::Members),
                rule("/kb/**/private", Access::Members),
            ],
            default: Access::Public,
        }
    }

    #[test]
    fn a_glob_covers_its_paths_with_and_without_a_trailing_slash() {
        for glob in ["/reports/*/", "/reports/*"] {
            let pattern = PathPattern::new(glob).unwrap();
            for path in ["/reports/q3", "/reports/q3/", "/REPORTS/Q3"] {
                assert!(pattern.matches(path), "{glob} {path}");
            }
            assert!(!pattern.matches("/reports/q3/x"), "{glob}");
            assert!(!pattern.matches("/reports"), "{glob}");
        }
        // A directory's `/**` covers the directory itself.
        for glob in ["/app/members/**", "/app/members/**/"] {
            let pattern = PathPattern::new(glob).unwrap();
            for path in [
                "/app/members",
                "/App/Members",
                "/app/members/",
                "/app/members/a/b",
            ] {
                assert!(pattern.matches(path), "{glob} {path}");
            }
            assert!(!pattern.matches("/app/membership"), "{glob}");
            assert!(!pattern.matches("/app"), "{glob}");
        }
    }

    /// `/dir/**` covers `/dir` itself (see `PathPattern::new`), whatever
    /// characters the directory's name holds: a comma, or an alternation.
    #[test]
    fn a_directory_glob_covers_its_directory_whatever_its_name() {
        let comma = PathPattern::new("/a,b/**").unwrap();
        for path in ["/a,b", "/a,b/", "/a,b/secret"] {
            assert!(comma.matches(path), "/a,b/** must cover {path}");
        }
        assert!(!comma.matches("/a"), "/a,b/** must not cover /a");
        let braces = PathPattern::new("/{team,staff}/**").unwrap();
        for path in ["/team", "/staff", "/team/", "/staff/x"] {
            assert!(braces.matches(path), "/{{team,staff}}/** must cover {path}");
        }
    }

    #[test]
    fn decides_by_first_matching_rule() {
        let vip = ["vip".to_owned()];
        let plain: [String; 0] = [];
        let anon = Visitor::Anonymous;
        let member = Visitor::Member { groups: &plain };
        let vip_member = Visitor::Member { groups: &vip };
        let table = [
            ("/", anon, Decision::Allow, None),
            ("/blog/x", anon, Decision::Allow, None),
            ("/members", anon, Decision::Login, Some(1)),
            ("/members/", anon, Decision::Login, Some(1)),
            ("/MEMBERS/x", anon, Decision::Login, Some(1)),
            ("/members/x", member, Decision::Allow, Some(1)),
            ("/membership", anon, Decision::Allow, None),
            ("/vip/", anon, Decision::Login, Some(2)),
            ("/vip/", member, Decision::Forbidden, Some(2)),
            ("/vip/", vip_member, Decision::Allow, Some(2)),
            ("/kb/member-handbook.html", anon, Decision::Login, Some(0)),
            ("/kb/getting-started.html", anon, Decision::Allow, None),
            // First match wins: the later, more specific public rule never applies.
            ("/members/open-day", anon, Decision::Login, Some(1)),
            // Globs: `*` stays within one segment, `**` spans several.
            (
                "/blog/2026/premium-tides.html",
                anon,
                Decision::Login,
                Some(4),
            ),
            (
                "/BLOG/2026/Premium-Tides.HTML",
                anon,
                Decision::Login,
                Some(4),
            ),
            (
                "/blog/2026/11/premium-tides.html",
                anon,
                Decision::Allow,
                None,
            ),
            ("/blog/2026/tides.html", anon, Decision::Allow, None),
            ("/kb/private", anon, Decision::Login, Some(5)),
            ("/kb/a/b/private", anon, Decision::Login, Some(5)),
            ("/kb/a/private-not", anon, Decision::Allow, None),
            ("/kb/a/private/", anon, Decision::Login, Some(5)),
            ("/KB/A/Private/", anon, Decision::Login, Some(5)),
        ];
        for (path, visitor, want, rule) in table {
            assert_eq!(
                decide(&rules(), path, visitor),
                (want, rule),
                "{path} {visitor:?}"
            );
        }
    }

    /// `?` and `[` make a glob as `*` and `{` do: read as prefixes, such
    /// rules would cover nothing a visitor asks for.
    #[test]
    fn every_glob_character_makes_a_glob() {
        for (glob, covered, not_covered) in [
            ("/quiz/q?.html", "/quiz/q1.html", "/quiz/q12.html"),
            ("/drafts/[ab].html", "/drafts/b.html", "/drafts/c.html"),
            ("/{team,staff}.html", "/staff.html", "/guest.html"),
            ("/kb/*.html", "/kb/a.html", "/kb/a/b.html"),
        ] {
            assert!(is_glob(glob), "{glob}");
            let rule = Rule::new(glob, Access::Members).unwrap();
            assert!(rule.matches(covered), "{glob} must cover {covered}");
            assert!(
                !rule.matches(not_covered),
                "{glob} must not cover {not_covered}"
            );
        }
    }

    /// A page and the other path it is served as: the stricter decision
    /// holds, with the rule that made it; on a tie the page's own rule, whose
    /// teaser and caching then apply.
    #[test]
    fn a_page_and_its_alias_are_decided_by_the_stricter() {
        let rule = |path: &str, access| Rule::new(path, access).unwrap();
        let rules = Rules {
            rules: vec![
                rule("/kb/index.html", Access::Members),
                rule("/vip/index.html", Access::Groups(vec!["vip".into()])),
                rule("/vip/", Access::Members),
                rule("/guide/", Access::Members),
                rule("/guide/index.html", Access::Members),
            ],
            default: Access::Public,
        };
        let plain: [String; 0] = [];
        let anon = Visitor::Anonymous;
        let member = Visitor::Member { groups: &plain };
        let table = [
            // The alias is the stricter.
            (
                "/kb/",
                Some("/kb/index.html"),
                anon,
                Decision::Login,
                Some(0),
            ),
            (
                "/kb/",
                Some("/kb/index.html"),
                member,
                Decision::Allow,
                None,
            ),
            (
                "/vip/",
                Some("/vip/index.html"),
                member,
                Decision::Forbidden,
                Some(1),
            ),
            (
                "/vip/",
                Some("/vip/index.html"),
                anon,
                Decision::Login,
                Some(2),
            ),
            // The page itself is the stricter: a laxer alias does not open it.
            (
                "/vip/index.html",
                Some("/kb/"),
                member,
                Decision::Forbidden,
                Some(1),
            ),
            // A tie: the page's own rule.
            (
                "/guide/",
                Some("/guide/index.html"),
                anon,
                Decision::Login,
                Some(3),
            ),
            (
                "/guide/index.html",
                Some("/guide/"),
                anon,
                Decision::Login,
                Some(4),
            ),
            ("/open/", None, anon, Decision::Allow, None),
        ];
        for (path, alias, visitor, want, by) in table {
            assert_eq!(
                decide_page(&rules, path, alias, visitor),
                (want, by),
                "{path} as {alias:?} {visitor:?}"
            );
        }
    }

    #[test]
    fn the_default_applies_to_unmatched_paths() {
        let rules = Rules {
            rules: vec![],
            default: Access::Members,
        };
        assert_eq!(
            decide(&rules, "/anything", Visitor::Anonymous).0,
            Decision::Login
        );
        assert!(rules.is_protected("/x"));
    }
}
