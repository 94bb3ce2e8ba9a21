//! Routing: the request's host picks a site, the normalised path picks the
//! site's route, and the route names the origin that serves it.
//!
//! Route prefixes match whole segments and ignore ASCII case, so `/members`
//! covers `/members`, `/members/` and `/MEMBERS/x` but not `/membership`.

pub mod pool;
pub mod upstream;

use std::sync::Arc;

use crate::config::{self, HostPattern};

pub use upstream::{DirOrigin, HttpOrigin, Origin};

/// Every site with its routes and their ready-to-use origins.
pub struct Router {
    sites: Vec<Site>,
}

pub struct Site {
    pub name: Arc<str>,
    /// `site:/_membergate`, the metrics label of the portal pages.
    pub portal_id: Arc<str>,
    /// Who may open which paths of this site.
    pub rules: crate::policy::Rules,
    /// The chat widget and who sees it, if the site has one.
    pub chat: Option<config::Chat>,
    hosts: Vec<HostPattern>,
    /// Longest prefix first, so the first match is the most specific.
    routes: Vec<Route>,
}

pub struct Route {
    /// `site:prefix`, used in logs and metrics.
    pub id: Arc<str>,
    pub prefix: String,
    pub origin: Origin,
    pub rewrite_host: bool,
    pub max_body_bytes: u64,
}

impl Router {
    pub fn build(config: &config::Config) -> Result<Router, Vec<String>> {
        let mut sites = Vec::with_capacity(config.sites.len());
        let mut problems = Vec::new();
        for site in &config.sites {
            let mut routes = Vec::with_capacity(site.routes.len());
            for route in &site.routes {
                let origin = match Origin::build(route) {
                    Ok(origin) => origin,
                    Err(e) => {
                        problems.push(format!("site {:?} route {:?}: {e}", site.name, route.path));
                        continue;
                    }
                };
                routes.push(Route {
                    id: format!("{}:{}", site.name, route.path).into(),
                    prefix: route.path.to_ascii_lowercase(),
                    origin,
                    rewrite_host: route.rewrite_host,
                    max_body_bytes: route.max_body_bytes,
                });
            }
            routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
            sites.push(Site {
                name: site.name.as_str().into(),
                portal_id: format!("{}:{}", site.name, crate::portal::PREFIX).into(),
                rules: site.rules.clone(),
                chat: site.chat.clone(),
                hosts: site.hosts.clone(),
                routes,
            });
        }
        if problems.is_empty() {
            Ok(Router { sites })
        } else {
            Err(problems)
        }
    }

    /// The site that serves `host` ([`config::site_for_host`]).
    pub fn site(&self, host: &str) -> Option<&Site> {
        config::site_for_host(&self.sites, |s| &s.hosts, host)
    }

    pub fn sites(&self) -> impl Iterator<Item = &Site> {
        self.sites.iter()
    }
}

impl Site {
    /// The route whose prefix covers `path` (decoded, normalised), if any.
    pub fn route(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| prefix_matches(&r.prefix, path))
    }

    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

/// The other path a directory origin serves `path` as: `/dir/` is
/// `/dir/index.html`, and `/page.html.gz` (or `.br`) is the compressed copy
/// of `/page.html`, which the origin also serves when `/page.html` itself is
/// missing (a site deployed with `gzip *.html` keeps no originals). Access
/// and chat rules for either apply to both.
pub fn served_as(dir_origin: bool, path: &str) -> Option<String> {
    if !dir_origin {
        return None;
    }
    if path.ends_with('/') {
        return Some(format!("{path}index.html"));
    }
    precompressed_original(path).map(str::to_owned)
}

/// The file a `.gz` or `.br` name (any case) is the compressed copy of.
pub fn precompressed_original(path: &str) -> Option<&str> {
    let cut = path.len().checked_sub(3)?;
    let ending = path.as_bytes().get(cut..)?;
    let copy = ending.eq_ignore_ascii_case(b".gz") || ending.eq_ignore_ascii_case(b".br");
    path.get(..cut)
        .filter(|original| copy && !original.ends_with('/'))
}

/// `prefix` is lower case and has no trailing `/` (unless it is `/`).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    path.len() >= prefix.len()
        && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_origin_serves_indexes_and_compressed_copies_as_other_paths() {
        let table = [
            ("/kb/", Some("/kb/index.html")),
            ("/kb/page.html.gz", Some("/kb/page.html")),
            ("/kb/PAGE.HTML.BR", Some("/kb/PAGE.HTML")),
            ("/kb/archive.tar.gz", Some("/kb/archive.tar")),
            ("/kb/page.html", None),
            ("/kb/.gz", None),
            ("/.br", None),
            ("/gz", None),
        ];
        for (path, alias) in table {
            assert_eq!(served_as(true, path).as_deref(), alias, "{path}");
            assert_eq!(served_as(false, path), None, "{path}");
        }
    }

    #[test]
    fn prefixes_match_whole_segments_ignoring_case() {
        let table = [
            ("/members", "/members", true),
            ("/members", "/members/", true),
            ("/members", "/MEMBERS/x", true),
            ("/members", "/Members", true),
            ("/members", "/membership", false),
            ("/members", "/members./x", false),
            ("/members", "/members /x", false),
            ("/members", "/", false),
            ("/kb/private", "/kb/private/a", true),
            ("/kb/private", "/kb/privateer", false),
            ("/", "/anything", true),
        ];
        for (prefix, path, want) in table {
            assert_eq!(prefix_matches(prefix, path), want, "{prefix} vs {path}");
        }
    }
}
