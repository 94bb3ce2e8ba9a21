//! Turns a parsed [`ConfigFile`] into a [`Config`], applying defaults and
//! collecting every problem (as `key.path: what was expected; got ...`) before failing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::file::{
    CertificateSection, ChatSection, ConfigFile, IdentificationSection, MailSection,
    MemberStoreFile, MembersSection, RouteSection, RuleSection, SiteHostsSection, SiteSection,
};
use super::{
    Admin, ApiKey, Certificate, Chat, ChatProvider, ChatRule, ChatShow, Config, HttpMode,
    Identification, Limits, Log, LogFormat, Mail, MailTransport, MemberStoreConfig, Members,
    Registration, Route, Server, Site, Tls, Upstream, WidgetLoader,
};
use crate::policy::{Access, Rule, Rules, Teaser};
use crate::portal::pages::Templates;

/// The longest duration any setting takes: longer ones are typing slips, and
/// some (cache lifetimes) would overflow what their libraries accept.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A host name pattern, matched against the normalised (lower-case, no trailing
/// dot, no port) request host or TLS server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com`: stores `.example.com`; matches exactly one more label.
    Wildcard(String),
    /// `*`: any host.
    Any,
}

/// The site that serves `host`: the first in config order that names it
/// exactly, else the first with a wildcard for it, else the first with `*`.
/// The gateway and `policy check` both choose with this.
pub fn site_for_host<'s, S>(
    sites: &'s [S],
    hosts_of: impl Fn(&S) -> &[HostPattern],
    host: &str,
) -> Option<&'s S> {
    (0..3).find_map(|wanted| {
        sites.iter().find(|site| {
            hosts_of(site)
                .iter()
                .any(|p| p.rank() == wanted && p.matches(host))
        })
    })
}

impl HostPattern {
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => name == host,
            HostPattern::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            HostPattern::Any => true,
        }
    }

    /// The pattern as it is written in the configuration.
    fn describe(&self) -> String {
        match self {
            HostPattern::Exact(name) => format!("{name:?}"),
            HostPattern::Wildcard(suffix) => format!("\"*{suffix}\""),
            HostPattern::Any => "\"*\"".to_owned(),
        }
    }

    /// Whether the pattern names only this machine (`localhost`, a loopback
    /// address) or nothing in particular (`*`): no name the world uses.
    fn is_local(&self) -> bool {
        let loopback = |name: &str| {
            let bare = name.trim_start_matches('[').trim_end_matches(']');
            name == "localhost"
                || name.ends_with(".localhost")
                || bare
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        };
        match self {
            HostPattern::Exact(name) => loopback(name),
            HostPattern::Wildcard(suffix) => suffix == ".localhost",
            HostPattern::Any => true,
        }
    }

    /// Exact names rank before wildcards, and wildcards before `*`.
    fn rank(&self) -> u8 {
        match self {
            HostPattern::Exact(_) => 0,
            HostPattern::Wildcard(_) => 1,
            HostPattern::Any => 2,
        }
    }

    fn parse(text: &str) -> Result<HostPattern, String> {
        let lower = text.trim_end_matches('.').to_ascii_lowercase();
        if lower == "*" {
            return Ok(HostPattern::Any);
        }
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        // An IP address in the canonical form requests are matched in:
        // IPv6 in brackets, as a Host header writes it (`::1` is `[::1]`).
        let bare = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        match bare.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) if !wildcard => {
                return Ok(HostPattern::Exact(format!("[{v6}]")));
            }
            Ok(std::net::IpAddr::V4(v4)) if !wildcard && bare == name => {
                return Ok(HostPattern::Exact(v4.to_string()));
            }
            _ => {}
        }
        if name.is_empty() || !name.split('.').all(valid_label) {
            return Err(format!(
                "expected a host name, \"*.domain\" or \"*\"; got {text:?}"
            ));
        }
        Ok(if wildcard {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }
}

/// Collects problems with their key paths.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, key: &str, message: impl std::fmt::Display) {
        self.0.push(format!("{key}: {message}"));
    }

    fn duration(&mut self, key: &str, value: Option<&str>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(text) => match humantime::parse_duration(text) {
                Ok(d) if !d.is_zero() && d <= MAX_DURATION => d,
                Ok(d) if d.is_zero() => {
                    self.add(key, "expected a duration above zero");
                    default
                }
                Ok(_) => {
                    self.add(key, "expected a duration of at most 100 years");
                    default
                }
                Err(_) => {
                    self.add(
                        key,
                        format!("expected a duration like \"10s\" or \"500ms\"; got {text:?}"),
                    );
                    default
                }
            },
        }
    }

    fn listen(&mut self, key: &str, value: Option<&str>, default: &str) -> Option<SocketAddr> {
        let text = value.unwrap_or(default);
        if text.is_empty() {
            return None;
        }
        match text.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.add(key, format!("expected an address like \"127.0.0.1:8443\" or \"\" to disable; got {text:?}"));
                None
            }
        }
    }

    /// A path setting. An empty one names no file: it is refused, and
    /// counts as not set.
    fn path(&mut self, key: &str, value: Option<&str>) -> Option<PathBuf> {
        match value? {
            "" => {
                self.add(key, "expected a path; got \"\"");
                None
            }
            text => Some(PathBuf::from(text)),
        }
    }

    /// A count a limit is made of: 0 would mean no request or entry at all
    /// (or, as operators read it, no limit), so it is refused.
    fn at_least_one<T: Copy + Default + PartialEq>(
        &mut self,
        key: &str,
        value: Option<T>,
        default: T,
        what: &str,
    ) -> T {
        match value {
            Some(n) if n == T::default() => {
                self.add(key, format!("expected at least 1; {what}"));
                default
            }
            Some(n) => n,
            None => default,
        }
    }

    fn hosts(&mut self, key: &str, values: &[String]) -> Vec<HostPattern> {
        let mut out = Vec::with_capacity(values.len());
        for (i, value) in values.iter().enumerate() {
            match HostPattern::parse(value) {
                Ok(p) => out.push(p),
                Err(message) => self.add(&format!("{key}[{i}]"), message),
            }
        }
        out
    }
}

/// `admin.listen` when the file does not set it.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
const DEFAULT_HTTPS_LISTEN: &str = "127.0.0.1:8443";
const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";

/// The largest `server.workers`: past it threads cost memory and switches
/// for no throughput (no single host the gateway runs on has that many
/// cores), and tens of thousands exhaust the process's thread limit.
const MAX_WORKERS: usize = 1024;

/// The configuration and every problem found in it; with problems, defaults
/// stand in for the invalid values (see [`super::Checked`]). The sections at
/// the key paths `failed` could not be read and hold defaults: no check that
/// reads one is reported, as it would be about values the file does not have
/// (a `public_url` that is there, a certificate list with a misspelt key).
pub fn validate(file: ConfigFile, failed: &[String]) -> (Config, Vec<String>) {
    let read = |section: &str| !failed.iter().any(|f| within(f, section));
    let mut p = Problems::default();

    let s = file.server;
    let http_mode = match s.http_mode.as_deref() {
        None | Some("redirect") => HttpMode::Redirect,
        Some("serve") => HttpMode::Serve,
        Some(other) => {
            p.add(
                "server.http_mode",
                format!("expected one of redirect, serve; got {other:?}"),
            );
            HttpMode::Redirect
        }
    };
    let mut trusted_proxies = Vec::new();
    for (i, cidr) in s.trusted_proxies.unwrap_or_default().iter().enumerate() {
        match cidr
            .parse::<IpNet>()
            .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from))
        {
            // Peers are read in their IPv4 form (`::ffff:a.b.c.d` from a
            // dual-stack listener is a.b.c.d): so are these.
            Ok(net) => trusted_proxies.push(ipv4_form(net)),
            Err(_) => p.add(
                &format!("server.trusted_proxies[{i}]"),
                format!("expected a CIDR block like \"10.0.0.0/8\"; got {cidr:?}"),
            ),
        }
    }
    let mut identity_header_prefix = s
        .identity_header_prefix
        .unwrap_or_else(|| "X-Member-".into());
    if identity_header_prefix.len() < 3
        || !identity_header_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        p.add(
            "server.identity_header_prefix",
            format!(
                "expected a header-name prefix like \"X-Member-\"; got {identity_header_prefix:?}"
            ),
        );
        // The headers are built from it next: not twice the same problem.
        identity_header_prefix = "X-Member-".into();
    }
    let workers = s.workers.unwrap_or(0);
    if workers > MAX_WORKERS {
        p.add(
            "server.workers",
            format!("expected 0 (one per core) to {MAX_WORKERS}; got {workers}"),
        );
    }
    let server = Server {
        workers: workers.min(MAX_WORKERS),
        https_listen: p.listen(
            "server.https_listen",
            s.https_listen.as_deref(),
            DEFAULT_HTTPS_LISTEN,
        ),
        http_listen: p.listen(
            "server.http_listen",
            s.http_listen.as_deref(),
            DEFAULT_HTTP_LISTEN,
        ),
        http_mode,
        https_redirect_port: match s.https_redirect_port {
            Some(0) => {
                p.add(
                    "server.https_redirect_port",
                    "expected a port from 1 to 65535",
                );
                None
            }
            port => port,
        },
        trusted_proxies,
        shutdown_grace: p.duration(
            "server.shutdown_grace",
            s.shutdown_grace.as_deref(),
            Duration::from_secs(30),
        ),
        identity_header_prefix: crate::hygiene::headers::normalise_header_name(
            &identity_header_prefix,
        ),
    };
    // Both switched off; one that does not parse is reported as such.
    if s.https_listen.as_deref() == Some("") && s.http_listen.as_deref() == Some("") {
        p.add(
            "server",
            "at least one of https_listen and http_listen must be set",
        );
    }

    let l = file.limits;
    let limits = Limits {
        max_header_bytes: l.max_header_bytes.unwrap_or(16 * 1024),
        max_headers: l.max_headers.unwrap_or(100),
        max_uri_bytes: l.max_uri_bytes.unwrap_or(8 * 1024),
        header_timeout: p.duration(
            "limits.header_timeout",
            l.header_timeout.as_deref(),
            Duration::from_secs(10),
        ),
        tls_handshake_timeout: p.duration(
            "limits.tls_handshake_timeout",
            l.tls_handshake_timeout.as_deref(),
            Duration::from_secs(10),
        ),
        body_idle_timeout: p.duration(
            "limits.body_idle_timeout",
            l.body_idle_timeout.as_deref(),
            Duration::from_secs(30),
        ),
        http2_max_concurrent_streams: l.http2_max_concurrent_streams.unwrap_or(128),
        http2_idle_timeout: p.duration(
            "limits.http2_idle_timeout",
            l.http2_idle_timeout.as_deref(),
            Duration::from_secs(60),
        ),
        max_rewrite_bytes: l.max_rewrite_bytes.unwrap_or(32 << 20),
        send_timeout: p.duration(
            "limits.send_timeout",
            l.send_timeout.as_deref(),
            Duration::from_secs(60),
        ),
        max_connections_per_ip: l.max_connections_per_ip.unwrap_or(256),
    };
    if !(1024..=1024 * 1024).contains(&limits.max_header_bytes) {
        p.add(
            "limits.max_header_bytes",
            format!("expected 1024 to 1048576; got {}", limits.max_header_bytes),
        );
    }
    if !(1..=1000).contains(&limits.max_headers) {
        p.add(
            "limits.max_headers",
            format!("expected 1 to 1000; got {}", limits.max_headers),
        );
    }
    if !(64..=65_000).contains(&limits.max_uri_bytes) {
        p.add(
            "limits.max_uri_bytes",
            format!("expected 64 to 65000; got {}", limits.max_uri_bytes),
        );
    }
    if limits.max_rewrite_bytes < 4096 {
        p.add("limits.max_rewrite_bytes", "expected at least 4096");
    }
    if limits.http2_max_concurrent_streams == 0 {
        p.add("limits.http2_max_concurrent_streams", "expected at least 1");
    }

    let admin = Admin {
        listen: p.listen(
            "admin.listen",
            file.admin.listen.as_deref(),
            DEFAULT_ADMIN_LISTEN,
        ),
        api_key_file: p.path("admin.api_key_file", file.admin.api_key_file.as_deref()),
    };
    // A clash is reported under the later listener's key: admin.listen's
    // own is dropped below if `[admin]` failed; the server's are skipped here.
    let listeners = [
        (
            "server.https_listen",
            server.https_listen.filter(|_| read("server")),
        ),
        (
            "server.http_listen",
            server.http_listen.filter(|_| read("server")),
        ),
        ("admin.listen", admin.listen),
    ];
    for (i, (key, addr)) in listeners.iter().enumerate() {
        let Some(addr) = addr else { continue };
        let clash = listeners[..i].iter().find(|(_, other)| {
            other.is_some_and(|o| {
                o.port() == addr.port() && addr.port() != 0 && overlap(o.ip(), addr.ip())
            })
        });
        if let Some((other, _)) = clash {
            p.add(
                key,
                format!("{addr} overlaps {other}; each listener needs an address of its own"),
            );
        }
    }

    let log = Log {
        format: match file.log.format.as_deref() {
            None | Some("human") => LogFormat::Human,
            Some("json") => LogFormat::Json,
            Some(other) => {
                p.add(
                    "log.format",
                    format!("expected one of human, json; got {other:?}"),
                );
                LogFormat::Human
            }
        },
        level: file.log.level.unwrap_or_else(|| "info".into()),
        access_log: file.log.access_log.unwrap_or(true),
    };
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log.level) {
        p.add(
            "log.level",
            format!("expected a filter like \"info\" or \"membergate=debug\"; {e}"),
        );
    }

    let tls = Tls {
        dev_certificate: file.tls.dev_certificate.unwrap_or(false),
        session_tickets: file.tls.session_tickets.unwrap_or(true),
        certificates: file
            .tls
            .certificates
            .iter()
            .enumerate()
            .filter_map(|(i, _)| certificate(&mut p, i, &file.tls.certificates))
            .collect(),
    };
    // `tls.certificates` is asked for by the server's listen addresses.
    if read("server") {
        for (key, problem) in listener_problems(&server, &tls) {
            p.add(key, problem);
        }
    }

    let members = members(&mut p, &file.members, &server);
    let mail = mail(&mut p, &file.mail);
    let identification = identification(&mut p, &file.identification);

    let mut sites = Vec::with_capacity(file.sites.len());
    for (i, section) in file.sites.iter().enumerate() {
        sites.push(site(&mut p, &format!("sites[{i}]"), section));
    }
    if sites.is_empty() {
        p.add("sites", "expected at least one [[sites]] entry");
    }
    if file.members.public_url.is_none() {
        let site_hosts = sites.iter().map(|site| site.hosts.as_slice());
        public_url_needed(&mut p, &members.public_url, site_hosts);
    }
    for (i, a) in sites.iter().enumerate() {
        if sites[..i].iter().any(|b| b.name == a.name) {
            p.add(
                &format!("sites[{i}].name"),
                format!("{:?} is used by an earlier site", a.name),
            );
        }
        // The first site that names a host serves it: a later one's rules
        // for the same host would never apply, and that is always a mistake.
        for host in &a.hosts {
            if let Some(k) = sites[..i].iter().position(|b| b.hosts.contains(host)) {
                p.add(
                    &format!("sites[{i}].hosts"),
                    format!(
                        "{} is already served by sites[{k}] ({:?}); a host belongs to one site",
                        host.describe(),
                        sites[k].name
                    ),
                );
            }
        }
    }
    for (i, key) in identification.api_keys.iter().enumerate() {
        for (j, name) in key.sites.iter().enumerate() {
            if !sites.iter().any(|s| s.name == *name) && read("sites") {
                p.add(
                    &format!("identification.api_keys[{i}].sites[{j}]"),
                    format!("no site is named {name:?}"),
                );
            }
        }
    }

    // A problem under the key of a section left out is about its defaults
    // (a `[[sites]]` entry keeps its place with them), not about the file.
    p.0.retain(|problem| !failed.iter().any(|f| within(problem, f)));

    let config = Config {
        server,
        limits,
        admin,
        log,
        tls,
        members,
        mail,
        identification,
        sites,
    };
    (config, p.0)
}

/// Whether `path` (a key path, or a problem that starts with one) is the
/// section `section` or inside it: `sites[1].name` is inside `sites[1]` and
/// `sites`, not inside `sites[10]`.
fn within(path: &str, section: &str) -> bool {
    path.strip_prefix(section)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[', ':']))
}

/// The `i`th of the certificates `all`.
fn certificate(p: &mut Problems, i: usize, all: &[CertificateSection]) -> Option<Certificate> {
    let key = format!("tls.certificates[{i}]");
    let c = all.get(i)?;
    let cert_file = p.path(&format!("{key}.cert_file"), c.cert_file.as_deref());
    let key_file = p.path(&format!("{key}.key_file"), c.key_file.as_deref());
    if c.cert_file.is_none() {
        p.add(&format!("{key}.cert_file"), "is required");
    }
    if c.key_file.is_none() {
        p.add(&format!("{key}.key_file"), "is required");
    }
    let hosts = p.hosts(&format!("{key}.hosts"), &c.hosts);
    // A certificate is chosen for the names it lists, or as the default:
    // the first one, unless another says "*" (see `server::tls`).
    let names_any = |c: &CertificateSection| {
        c.hosts
            .iter()
            .any(|h| HostPattern::parse(h) == Ok(HostPattern::Any))
    };
    if c.hosts.is_empty() {
        if i > 0 {
            p.add(
                &format!("{key}.hosts"),
                "no client would get this certificate: list the names it serves (\"*\" makes it the default for the rest)",
            );
        } else if let Some(k) = all.iter().position(names_any) {
            p.add(
                &format!("{key}.hosts"),
                format!("no client would get this certificate: tls.certificates[{k}] says \"*\", so it answers the names no certificate lists; list the names this one serves"),
            );
        }
    }
    Some(Certificate {
        entry: key,
        cert_file: cert_file?,
        key_file: key_file?,
        hosts,
    })
}

fn site(p: &mut Problems, key: &str, s: &SiteSection) -> Site {
    let name = s.name.clone().unwrap_or_default();
    // Shown in page titles and mail subjects, and a label in metrics and
    // logs: any text on one line.
    if name.chars().any(char::is_control) {
        p.add(
            &format!("{key}.name"),
            format!("expected a name on one line, without control characters; got {name:?}"),
        );
    }
    if name.is_empty() {
        p.add(&format!("{key}.name"), "is required");
    }
    if s.hosts.is_empty() {
        p.add(
            &format!("{key}.hosts"),
            "expected at least one host (\"*\" matches any)",
        );
    }
    let hosts = p.hosts(&format!("{key}.hosts"), &s.hosts);
    let mut routes: Vec<Route> = Vec::with_capacity(s.routes.len());
    for (i, r) in s.routes.iter().enumerate() {
        let route_key = format!("{key}.routes[{i}]");
        if let Some(route) = route(p, &route_key, r) {
            if routes
                .iter()
                .any(|other| other.path.eq_ignore_ascii_case(&route.path))
            {
                p.add(
                    &format!("{route_key}.path"),
                    format!("{:?} is used by an earlier route of this site", route.path),
                );
            }
            routes.push(route);
        }
    }
    if s.routes.is_empty() {
        p.add(
            &format!("{key}.routes"),
            "expected at least one [[sites.routes]] entry",
        );
    }
    let default = match s.default_policy.as_deref() {
        None => Access::Public,
        Some("groups") => {
            p.add(
                &format!("{key}.default_policy"),
                "expected public or members; for groups, end the rules with one for \"/\" that names them",
            );
            Access::Members
        }
        Some(text) => access(p, &format!("{key}.default_policy"), text, &[]),
    };
    let mut rules = Vec::with_capacity(s.rules.len());
    for (i, r) in s.rules.iter().enumerate() {
        if let Some(rule) = rule(p, &format!("{key}.rules[{i}]"), r) {
            rules.push(rule);
        }
    }
    let chat = s.chat.as_ref().map(|c| chat(p, &format!("{key}.chat"), c));
    Site {
        name,
        hosts,
        routes,
        rules: Rules { rules, default },
        chat,
    }
}

fn route(p: &mut Problems, key: &str, r: &RouteSection) -> Option<Route> {
    let path = match r.path.as_deref() {
        None => {
            p.add(&format!("{key}.path"), "is required");
            None
        }
        Some(text) => match route_prefix(text) {
            Ok(path) => Some(path),
            Err(message) => {
                p.add(&format!("{key}.path"), message);
                None
            }
        },
    };
    let upstream = match r.upstream.as_deref() {
        None => {
            p.add(&format!("{key}.upstream"), "is required");
            None
        }
        Some(text) => match parse_upstream(text) {
            Ok(u) => Some(u),
            Err(message) => {
                p.add(&format!("{key}.upstream"), message);
                None
            }
        },
    };
    if let (Some(Upstream::Dir(dir)), true) = (
        &upstream,
        r.ca_file.is_some() || r.rewrite_host == Some(true),
    ) {
        p.add(
            key,
            format!(
                "ca_file and rewrite_host apply to http(s) upstreams, not dir:{}",
                dir.display()
            ),
        );
    }
    if let Some(Upstream::Dir(dir)) = &upstream
        && !dir.is_dir()
    {
        p.add(
            &format!("{key}.upstream"),
            format!("directory {} does not exist", dir.display()),
        );
    }
    let route = Route {
        path: path?,
        upstream: upstream?,
        rewrite_host: r.rewrite_host.unwrap_or(false),
        max_body_bytes: r.max_body_bytes.unwrap_or(1024 * 1024),
        connect_timeout: p.duration(
            &format!("{key}.connect_timeout"),
            r.connect_timeout.as_deref(),
            Duration::from_secs(5),
        ),
        response_timeout: p.duration(
            &format!("{key}.response_timeout"),
            r.response_timeout.as_deref(),
            Duration::from_secs(30),
        ),
        idle_timeout: p.duration(
            &format!("{key}.idle_timeout"),
            r.idle_timeout.as_deref(),
            Duration::from_secs(60),
        ),
        ca_file: p.path(&format!("{key}.ca_file"), r.ca_file.as_deref()),
    };
    Some(route)
}

/// Whether two listen addresses on one port would take the same
/// connections: the same address, or an unspecified one that covers the
/// other (`0.0.0.0` every IPv4 address; `::` every address, IPv4 too, as
/// the gateway's sockets are dual-stack).
fn overlap(a: std::net::IpAddr, b: std::net::IpAddr) -> bool {
    let (a, b) = (a.to_canonical(), b.to_canonical());
    let covers = |wide: std::net::IpAddr, other: std::net::IpAddr| {
        wide.is_unspecified() && (wide.is_ipv6() || other.is_ipv4())
    };
    a == b || covers(a, b) || covers(b, a)
}

/// What the listeners need of the rest: certificates for HTTPS, an HTTPS
/// listener to redirect to. Checked again on reload, after the running
/// listen addresses are put back (a reload does not move listeners).
pub fn listener_problems(server: &Server, tls: &Tls) -> Vec<(&'static str, &'static str)> {
    let mut problems = Vec::new();
    if server.https_listen.is_none()
        && server.http_mode == HttpMode::Redirect
        && server.http_listen.is_some()
    {
        problems.push((
            "server.http_mode",
            "\"redirect\" needs an https_listen to redirect to; use \"serve\"",
        ));
    }
    if server.https_listen.is_some() && tls.certificates.is_empty() {
        problems.push((
            "tls.certificates",
            "https_listen is set, so at least one certificate is needed",
        ));
    }
    problems
}

/// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) as the IPv4 network
/// it maps (`10.0.0.0/8`); any other network as it is.
fn ipv4_form(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

/// The portal's templates: the built-in ones, replaced by the files in the
/// site's own folder. The folder must exist (a typo would quietly give the
/// built-in pages), and every template in it must compile.
fn portal_templates(p: &mut Problems, dir: Option<&str>) -> Arc<Templates> {
    let dir = p.path("members.templates_dir", dir);
    if let Some(dir) = dir.as_ref().filter(|d| !d.is_dir()) {
        p.add(
            "members.templates_dir",
            format!("directory {} does not exist", dir.display()),
        );
        return Arc::new(Templates::none());
    }
    match Templates::load(dir.as_deref()) {
        Ok(templates) => Arc::new(templates),
        Err(e) => {
            p.add("members.templates_dir", e);
            Arc::new(Templates::none())
        }
    }
}

/// A route prefix must already be in the normal form the path normaliser produces,
/// so that what an operator writes is what gets matched.
fn route_prefix(text: &str) -> Result<String, String> {
    let expected =
        "expected a path prefix like \"/members\" (no dot segments, no //, no %-escapes)";
    if !text.starts_with('/') || text.contains("//") || text.contains('%') || text.contains('\\') {
        return Err(format!("{expected}; got {text:?}"));
    }
    match crate::hygiene::path::normalise(text) {
        Ok(normal) if normal.decoded == text || normal.decoded == format!("{text}/") => {
            let trimmed = text.trim_end_matches('/');
            Ok(if trimmed.is_empty() {
                "/".into()
            } else {
                trimmed.to_owned()
            })
        }
        _ => Err(format!("{expected}; got {text:?}")),
    }
}

fn parse_upstream(text: &str) -> Result<Upstream, String> {
    if let Some(dir) = text.strip_prefix("dir:") {
        if dir.is_empty() {
            return Err("expected a directory after dir:".into());
        }
        return Ok(Upstream::Dir(PathBuf::from(dir)));
    }
    let expected = "expected http://host:port, https://host:port or dir:PATH";
    let uri: http::Uri = text
        .parse()
        .map_err(|_| format!("{expected}; got {text:?}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("{expected}; got {text:?}")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{expected}; got {text:?}"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "credentials in the upstream URL are not supported; got {text:?}"
        ));
    }
    // `http` parses a port of 84535 (or none after the colon) and then
    // reports no port at all: the connection would go to 80 or 443.
    let written_port = authority.as_str().rsplit_once(':').map(|(_, p)| p);
    let bracketed_v6_without_port = authority.as_str().ends_with(']');
    if let Some(port) = written_port.filter(|_| !bracketed_v6_without_port)
        && !port.parse::<u16>().is_ok_and(|p| p != 0)
    {
        return Err(format!("expected a port from 1 to 65535; got {text:?}"));
    }
    if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
        return Err(format!(
            "an upstream is scheme and authority only, with no path; got {text:?}"
        ));
    }
    let uri = http::Uri::builder()
        .scheme(uri.scheme_str().unwrap_or("http"))
        .authority(authority.as_str())
        .path_and_query("/")
        .build()
        .map_err(|_| format!("{expected}; got {text:?}"))?;
    Ok(Upstream::Http { uri, tls })
}

fn access(p: &mut Problems, key: &str, policy: &str, groups: &[String]) -> Access {
    match policy {
        "public" | "members" if !groups.is_empty() => {
            p.add(
                key,
                format!("groups apply only to policy \"groups\"; this rule is {policy:?}"),
            );
            Access::Members
        }
        "public" => Access::Public,
        "members" => Access::Members,
        "groups" if groups.is_empty() => {
            p.add(key, "policy \"groups\" needs a non-empty groups list");
            Access::Members
        }
        "groups" => Access::Groups(groups.to_vec()),
        other => {
            p.add(
                key,
                format!("expected one of public, members, groups; got {other:?}"),
            );
            Access::Members
        }
    }
}

fn rule(p: &mut Problems, key: &str, r: &RuleSection) -> Option<Rule> {
    let path = match r.path.as_deref() {
        None => {
            p.add(&format!("{key}.path"), "is required");
            None
        }
        Some(text) => match rule_path(text) {
            Ok(path) => Some(path),
            Err(message) => {
                p.add(&format!("{key}.path"), message);
                None
            }
        },
    };
    for (i, group) in r.groups.iter().enumerate() {
        if !valid_group_name(group) {
            p.add(
                &format!("{key}.groups[{i}]"),
                format!("expected letters, digits, - or _; got {group:?}"),
            );
        }
    }
    let access = match r.policy.as_deref() {
        None => {
            p.add(
                &format!("{key}.policy"),
                "is required (public, members or groups)",
            );
            Access::Members
        }
        Some(policy) => access(p, &format!("{key}.policy"), policy, &r.groups),
    };
    if path
        .as_deref()
        .is_some_and(|x| x == "/_membergate" || x.starts_with("/_membergate/"))
    {
        p.add(
            &format!("{key}.path"),
            "/_membergate/ belongs to the gateway's own pages",
        );
    }
    let teaser = p
        .path(&format!("{key}.teaser"), r.teaser.as_deref())
        .and_then(|file| {
            if access == Access::Public {
                p.add(
                    &format!("{key}.teaser"),
                    "a teaser replaces the login redirect, so a public rule cannot have one",
                );
            }
            match std::fs::read_to_string(&file) {
                Ok(source) => {
                    let mut env = minijinja::Environment::new();
                    if let Err(e) = env.add_template("teaser", &source) {
                        p.add(
                            &format!("{key}.teaser"),
                            format!("{} is not a valid template: {e}", file.display()),
                        );
                    }
                    Some(Arc::new(Teaser { file, source }))
                }
                Err(e) => {
                    p.add(
                        &format!("{key}.teaser"),
                        format!("cannot read {}: {e}", file.display()),
                    );
                    None
                }
            }
        });
    let mut rule = match Rule::new(&path?, access) {
        Ok(rule) => rule,
        Err(message) => {
            p.add(&format!("{key}.path"), message);
            return None;
        }
    };
    rule.teaser = teaser;
    rule.private = r.private.unwrap_or(true);
    Some(rule)
}

/// A rule path: a route-style prefix, or a glob over normalised paths.
fn rule_path(text: &str) -> Result<String, String> {
    if !crate::policy::is_glob(text) {
        return route_prefix(text).map(|prefix| prefix.to_ascii_lowercase());
    }
    let normal = text.starts_with('/')
        && !text.contains("//")
        && !text.contains(['\\', '%', '#'])
        && !text
            .split('/')
            .any(|segment| segment == "." || segment == "..");
    if normal {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "expected a path like \"/members/\" or a glob like \"/blog/*/premium-*\"; got {text:?}"
        ))
    }
}

/// Group names: 1 to 64 letters, digits, `-` or `_`.
pub fn valid_group_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Why an attempt limit cannot be 0 (where `max_connections_per_ip = 0`
/// turns its cap off, these cannot be).
const ATTEMPTS_OFF: &str = "it is the attempts allowed per minute, a limit that cannot be turned off (a large number relaxes it)";

fn members(p: &mut Problems, m: &MembersSection, server: &Server) -> Members {
    let registration = match m.registration.as_deref() {
        None | Some("open") => Registration::Open,
        Some("invite") => Registration::Invite,
        Some("domain") => Registration::Domain,
        Some("approval") => Registration::Approval,
        Some(other) => {
            p.add(
                "members.registration",
                format!("expected one of open, invite, domain, approval; got {other:?}"),
            );
            Registration::Open
        }
    };
    let mut allowed_domains = Vec::new();
    for (i, d) in m
        .allowed_domains
        .clone()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        match crate::members::email::canonical(&format!("x@{d}")) {
            Ok(e) => allowed_domains.push(e[2..].to_owned()),
            Err(_) => p.add(
                &format!("members.allowed_domains[{i}]"),
                format!("expected a domain; got {d:?}"),
            ),
        }
    }
    if registration == Registration::Domain && allowed_domains.is_empty() {
        p.add(
            "members.allowed_domains",
            "registration \"domain\" needs at least one allowed domain",
        );
    }
    let public_url = public_url(
        p,
        m.public_url.as_deref(),
        server.https_listen,
        server.http_listen,
    );
    let cookie_secure = m.cookie_secure.unwrap_or(true);
    let cookie_name = m.cookie_name.clone().unwrap_or_else(|| {
        if cookie_secure {
            "__Host-membergate".into()
        } else {
            "membergate".into()
        }
    });
    let token_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if cookie_name.is_empty() || !cookie_name.bytes().all(token_char) {
        p.add(
            "members.cookie_name",
            format!("expected a cookie name; got {cookie_name:?}"),
        );
    }
    // Browsers drop a cookie whose name starts with __Secure- or __Host- (in
    // any case) unless it is Secure; __Host- also needs Path=/ and no
    // Domain, which every cookie of the gateway's has.
    let prefix = ["__Secure-", "__Host-"].into_iter().find(|prefix| {
        cookie_name
            .get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    });
    if let (false, Some(prefix)) = (cookie_secure, prefix) {
        p.add(
            "members.cookie_name",
            format!("a {prefix} cookie must be Secure (browsers drop it otherwise); set cookie_secure = true or rename it"),
        );
    }
    let lifetime = p.duration(
        "members.session_lifetime",
        m.session_lifetime.as_deref(),
        Duration::from_secs(30 * 86_400),
    );
    let idle = p.duration(
        "members.session_idle",
        m.session_idle.as_deref(),
        Duration::from_secs(7 * 86_400),
    );
    if idle > lifetime {
        p.add(
            "members.session_idle",
            "must not be longer than session_lifetime",
        );
    }
    Members {
        database: database(p, m.database.as_deref()),
        public_url,
        secret_file: p
            .path("members.secret_file", m.secret_file.as_deref())
            .unwrap_or_else(|| PathBuf::from("data/membergate.secret")),
        cookie_name,
        cookie_secure,
        session_lifetime: lifetime,
        session_idle: idle,
        session_cache_capacity: p.at_least_one(
            "members.session_cache_capacity",
            m.session_cache_capacity,
            100_000,
            "sessions (and identification tokens) are cached in memory, and 0 would keep none",
        ),
        registration,
        allowed_domains,
        require_verification: m.require_verification.unwrap_or(true),
        templates: portal_templates(p, m.templates_dir.as_deref()),
        identity_headers: m.identity_headers.unwrap_or(true),
        max_attempts_per_ip: p.at_least_one(
            "members.max_attempts_per_ip",
            m.max_attempts_per_ip,
            30,
            ATTEMPTS_OFF,
        ),
        max_attempts_per_account: p.at_least_one(
            "members.max_attempts_per_account",
            m.max_attempts_per_account,
            100,
            ATTEMPTS_OFF,
        ),
        max_attempts_per_account_per_ip: p.at_least_one(
            "members.max_attempts_per_account_per_ip",
            m.max_attempts_per_account_per_ip,
            10,
            ATTEMPTS_OFF,
        ),
    }
}

fn database(p: &mut Problems, path: Option<&str>) -> PathBuf {
    p.path("members.database", path)
        .unwrap_or_else(|| PathBuf::from("data/membergate.db"))
}

/// `members.public_url`, or the local address it defaults to, without a
/// trailing `/`.
fn public_url(
    p: &mut Problems,
    given: Option<&str>,
    https_listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
) -> String {
    let default_url = match https_listen {
        Some(addr) => format!("https://localhost:{}", addr.port()),
        None => format!("http://localhost:{}", http_listen.map_or(80, |a| a.port())),
    };
    let public_url = given.map_or(default_url, str::to_owned);
    let url_ok = public_url.parse::<http::Uri>().is_ok_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https"))
            && u.authority().is_some_and(|a| !a.as_str().contains('@'))
            && u.path() == "/"
            && u.query().is_none()
    });
    if !url_ok {
        p.add(
            "members.public_url",
            format!("expected an origin like \"https://members.example.com\"; got {public_url:?}"),
        );
    }
    public_url.trim_end_matches('/').to_owned()
}

/// Links in mails start with `public_url`, and its default is this
/// machine's name. A site named for the world with no `public_url` would
/// mail every member a link to localhost, and nobody could confirm an
/// address or reset a password.
fn public_url_needed<'h>(
    p: &mut Problems,
    default_url: &str,
    site_hosts: impl Iterator<Item = &'h [HostPattern]>,
) {
    let named = site_hosts.enumerate().find_map(|(i, hosts)| {
        let public = hosts.iter().find(|h| !h.is_local())?;
        Some((i, public))
    });
    if let Some((i, host)) = named {
        p.add(
            "members.public_url",
            format!(
                "required when a site serves a name other than localhost (sites[{i}].hosts has {}): links in mails would point at {default_url}",
                host.describe(),
            ),
        );
    }
}

/// What the member, group, session and backup commands read, checked as
/// `validate` checks it: the database, and what invitations need (their
/// links and `[mail]`). Nothing else is read, so a problem elsewhere (a
/// site's origin, a chat token not exported in the operator's shell) does
/// not keep an administrator from disabling a member. Without a
/// `public_url`, the links depend on the listen addresses and the sites'
/// hosts, and those are checked too.
pub fn member_store(file: MemberStoreFile) -> Result<MemberStoreConfig, Vec<String>> {
    let mut p = Problems::default();
    let mut listen_problems = Problems::default();
    let https_listen = listen_problems.listen(
        "server.https_listen",
        file.server.https_listen.as_deref(),
        DEFAULT_HTTPS_LISTEN,
    );
    let http_listen = listen_problems.listen(
        "server.http_listen",
        file.server.http_listen.as_deref(),
        DEFAULT_HTTP_LISTEN,
    );
    let public_url = public_url(
        &mut p,
        file.members.public_url.as_deref(),
        https_listen,
        http_listen,
    );
    // Hosts that do not parse are the full check's to report, unless the
    // links depend on them (no `public_url`).
    let mut host_problems = Problems::default();
    let site_hosts: Vec<Vec<HostPattern>> = file
        .sites
        .iter()
        .enumerate()
        .map(|(i, site)| host_problems.hosts(&format!("sites[{i}].hosts"), &site.hosts))
        .collect();
    if file.members.public_url.is_none() {
        p.0.extend(listen_problems.0);
        p.0.extend(host_problems.0);
        public_url_needed(&mut p, &public_url, site_hosts.iter().map(Vec::as_slice));
    }
    let site_name = super::public_host(&public_url).and_then(|host| {
        let named: Vec<(&SiteHostsSection, &[HostPattern])> = file
            .sites
            .iter()
            .zip(site_hosts.iter().map(Vec::as_slice))
            .collect();
        let (site, _) = site_for_host(&named, |(_, hosts)| hosts, &host)?;
        site.name.clone()
    });
    let mail = mail(&mut p, &file.mail);
    let database = database(&mut p, file.members.database.as_deref());
    if p.0.is_empty() {
        Ok(MemberStoreConfig {
            database,
            public_url,
            site_name,
            mail,
        })
    } else {
        Err(p.0)
    }
}

fn identification(p: &mut Problems, s: &IdentificationSection) -> Identification {
    let token_lifetime = p.duration(
        "identification.token_lifetime",
        s.token_lifetime.as_deref(),
        Duration::from_secs(12 * 3600),
    );
    if token_lifetime < Duration::from_secs(60) {
        p.add("identification.token_lifetime", "expected at least 1m");
    }
    let mint_timeout = p.duration(
        "identification.mint_timeout",
        s.mint_timeout.as_deref(),
        Duration::from_millis(1500),
    );
    let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, k) in s.keys.iter().enumerate() {
        let key = format!("identification.keys[{i}]");
        let Some(id) = k.id.clone() else {
            p.add(&format!("{key}.id"), "is required");
            continue;
        };
        let secret = match (&k.secret_file, &k.secret_env) {
            (Some(file), None) if file.is_empty() => {
                Err("expected a path in secret_file; got \"\"".to_owned())
            }
            (Some(file), None) => std::fs::read_to_string(file)
                .map(|s| s.trim().as_bytes().to_vec())
                .map_err(|e| format!("cannot read {file}: {e}")),
            (None, Some(var)) => std::env::var(var)
                .map(|s| s.trim().as_bytes().to_vec())
                .map_err(|_| format!("the environment variable {var} is not set")),
            _ => Err("set exactly one of secret_file and secret_env".to_owned()),
        };
        match secret.and_then(|secret| {
            crate::identity::token::Key::new(&id, &secret)
                .map(|_| secret)
                .map_err(|e| e.to_string())
        }) {
            Ok(_) if keys.iter().any(|(other, _)| *other == id) => {
                p.add(
                    &format!("{key}.id"),
                    format!("{id:?} is used by an earlier key"),
                );
            }
            Ok(secret) => keys.push((id, secret)),
            Err(message) => p.add(&key, message),
        }
    }
    let mut api_keys: Vec<ApiKey> = Vec::new();
    for (i, k) in s.api_keys.iter().enumerate() {
        let key = format!("identification.api_keys[{i}]");
        let name = k.name.clone().unwrap_or_default();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            p.add(
                &format!("{key}.name"),
                "expected a name of 1 to 64 characters",
            );
        } else if api_keys.iter().any(|other| other.name == name) {
            p.add(
                &format!("{key}.name"),
                format!("{name:?} is used by an earlier key"),
            );
        }
        let hex = k.key_sha256.clone().unwrap_or_default();
        let mut sha256 = [0u8; 32];
        let decoded = hex.len() == 64
            && hex.is_ascii()
            && (0..32).all(|j| {
                u8::from_str_radix(&hex[2 * j..2 * j + 2], 16)
                    .map(|b| sha256[j] = b)
                    .is_ok()
            });
        if !decoded {
            p.add(
                &format!("{key}.key_sha256"),
                "expected the key's SHA-256 as 64 hex digits (printf %s \"$KEY\" | sha256sum)",
            );
        } else if let Some(other) = api_keys.iter().find(|other| other.sha256 == sha256) {
            // One key would be two keys' names, scopes and sites at once.
            p.add(
                &format!("{key}.key_sha256"),
                format!("the same key as {:?}; give each key its own", other.name),
            );
        }
        let (mut create, mut verify) = (false, false);
        for (j, scope) in k.scopes.iter().enumerate() {
            match scope.as_str() {
                "create" => create = true,
                "verify" => verify = true,
                other => p.add(
                    &format!("{key}.scopes[{j}]"),
                    format!("expected create or verify; got {other:?}"),
                ),
            }
        }
        if k.scopes.is_empty() {
            p.add(
                &format!("{key}.scopes"),
                "expected at least one of create, verify",
            );
        }
        api_keys.push(ApiKey {
            name,
            sha256,
            create,
            verify,
            sites: k.sites.clone(),
        });
    }
    Identification {
        token_lifetime,
        mint_timeout,
        keys,
        api_keys,
    }
}

fn chat_show(p: &mut Problems, key: &str, show: Option<&str>, groups: &[String]) -> ChatShow {
    for (i, group) in groups.iter().enumerate() {
        if !valid_group_name(group) {
            p.add(
                &format!("{key}.groups[{i}]"),
                format!("expected letters, digits, - or _; got {group:?}"),
            );
        }
    }
    let text = show.unwrap_or("everyone");
    let decided = match text {
        "everyone" => ChatShow::Everyone,
        "members" => ChatShow::Members,
        "never" => ChatShow::Never,
        "groups" if groups.is_empty() => {
            p.add(
                &format!("{key}.groups"),
                "show = \"groups\" needs a non-empty groups list",
            );
            ChatShow::Never
        }
        "groups" => ChatShow::Groups(groups.to_vec()),
        other => {
            p.add(
                &format!("{key}.show"),
                format!("expected one of everyone, members, groups, never; got {other:?}"),
            );
            ChatShow::Never
        }
    };
    if !groups.is_empty() && text != "groups" {
        p.add(
            &format!("{key}.groups"),
            format!("groups apply only to show = \"groups\"; this is {text:?}"),
        );
    }
    decided
}

fn chat(p: &mut Problems, key: &str, c: &ChatSection) -> Chat {
    let provider = match c.provider.as_deref() {
        Some("hubspot") => {
            let portal_id = c.portal_id.clone().unwrap_or_default();
            if portal_id.is_empty() || !portal_id.bytes().all(|b| b.is_ascii_digit()) {
                p.add(
                    &format!("{key}.portal_id"),
                    format!("expected the HubSpot account id (digits); got {portal_id:?}"),
                );
            }
            let api_base_text = c
                .api_base
                .clone()
                .unwrap_or_else(|| "https://api.hubapi.com".into());
            let api_base = match parse_upstream(&api_base_text) {
                Ok(Upstream::Http { uri, .. }) => uri,
                _ => {
                    p.add(
                        &format!("{key}.api_base"),
                        format!("expected an origin like \"https://api.hubapi.com\"; got {api_base_text:?}"),
                    );
                    http::Uri::from_static("https://api.hubapi.com")
                }
            };
            let var = c
                .access_token_env
                .clone()
                .unwrap_or_else(|| "MEMBERGATE_HUBSPOT_TOKEN".into());
            let access_token = std::env::var(&var).unwrap_or_default();
            if access_token.trim().is_empty() {
                p.add(
                    &format!("{key}.access_token_env"),
                    format!(
                        "the environment variable {var} (a HubSpot private app token) is not set"
                    ),
                );
            }
            ChatProvider::HubSpot {
                portal_id,
                api_base,
                access_token: access_token.trim().to_owned(),
            }
        }
        Some("builtin") => {
            let widget_url = c.widget_url.clone().unwrap_or_default();
            let ok = widget_url.parse::<http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("https" | "http")) && u.host().is_some()
            }) || (widget_url.starts_with('/') && !widget_url.starts_with("//"));
            if !ok || widget_url.contains(['"', '<', '>', '\'', ' ']) {
                p.add(
                    &format!("{key}.widget_url"),
                    format!("expected the widget script's URL (https://... or /path); got {widget_url:?}"),
                );
            }
            ChatProvider::Builtin { widget_url }
        }
        other => {
            p.add(
                &format!("{key}.provider"),
                format!("expected one of hubspot, builtin; got {other:?}"),
            );
            ChatProvider::Builtin {
                widget_url: String::new(),
            }
        }
    };
    let default = chat_show(p, key, c.show.as_deref(), &c.groups);
    let mut rules = Vec::new();
    for (i, r) in c.rules.iter().enumerate() {
        let rule_key = format!("{key}.rules[{i}]");
        let show = chat_show(p, &rule_key, r.show.as_deref(), &r.groups);
        if r.show.is_none() {
            p.add(
                &format!("{rule_key}.show"),
                "is required (everyone, members, groups or never)",
            );
        }
        let Some(path) = r.path.as_deref() else {
            p.add(&format!("{rule_key}.path"), "is required");
            continue;
        };
        let query = r.query.as_deref().and_then(|q| {
            let (name, value) = match q.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (q, None),
            };
            if name.is_empty() || q.contains(['&', '#', ' ']) {
                p.add(
                    &format!("{rule_key}.query"),
                    format!("expected a parameter like \"chat\" or \"chat=off\"; got {q:?}"),
                );
                return None;
            }
            Some((name.to_owned(), value))
        });
        match rule_path(path)
            .and_then(|path| crate::policy::PathPattern::new(&path).map(|pattern| (path, pattern)))
        {
            Ok((path, pattern)) => rules.push(ChatRule {
                path,
                pattern,
                query,
                show,
            }),
            Err(message) => p.add(&format!("{rule_key}.path"), message),
        }
    }
    let inline_embed_selector = c.inline_embed_selector.clone();
    if inline_embed_selector
        .as_deref()
        .is_some_and(|s| s.is_empty() || s.len() > 200 || s.chars().any(char::is_control))
    {
        p.add(
            &format!("{key}.inline_embed_selector"),
            "expected a CSS selector such as \"#chat\"",
        );
    }
    let loader = match c.loader.as_deref() {
        None | Some("membergate") => WidgetLoader::Membergate,
        Some("page") => WidgetLoader::Page,
        Some(other) => {
            p.add(
                &format!("{key}.loader"),
                format!("expected membergate (insert the widget script) or page (the page loads it); got {other:?}"),
            );
            WidgetLoader::Membergate
        }
    };
    Chat {
        provider,
        default,
        rules,
        load_immediately: c.load_immediately,
        inline_embed_selector,
        loader,
    }
}

fn mail(p: &mut Problems, m: &MailSection) -> Mail {
    let from = m
        .from
        .clone()
        .unwrap_or_else(|| "membergate <no-reply@localhost>".into());
    if from.parse::<lettre::message::Mailbox>().is_err() {
        p.add(
            "mail.from",
            format!("expected an address like \"Members <members@example.com>\"; got {from:?}"),
        );
    }
    let transport = match (&m.smtp_url, &m.outbox_dir) {
        (Some(_), Some(_)) => {
            p.add("mail", "set either smtp_url or outbox_dir, not both");
            MailTransport::Outbox(PathBuf::new())
        }
        (Some(url), None) => {
            let expected = "expected smtps://user@host:465 or smtp://user@host:587?tls=required";
            if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
                p.add("mail.smtp_url", format!("{expected}; got {url:?}"));
            } else if let Err(e) =
                lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url)
            {
                // As the gateway will read it at start (with no secrets
                // involved: the password comes from the environment).
                p.add("mail.smtp_url", format!("{expected}; {e}"));
            }
            MailTransport::Smtp { url: url.clone() }
        }
        (None, dir) => MailTransport::Outbox(
            p.path("mail.outbox_dir", dir.as_deref())
                .unwrap_or_else(|| PathBuf::from("data/outbox")),
        ),
    };
    Mail { from, transport }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_match_one_label_for_wildcards() {
        let w = HostPattern::parse("*.Example.com.").unwrap();
        assert!(w.matches("a.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("a.b.example.com"));
        assert!(!w.matches("aexample.com"));
        assert!(HostPattern::parse("gw@evil").is_err());
        assert!(HostPattern::parse("[::1]").is_ok());
        // IP addresses as requests name them: IPv6 bracketed and compressed.
        for v6 in ["::1", "[::1]", "[0:0::0001]"] {
            let pattern = HostPattern::parse(v6).unwrap();
            assert_eq!(pattern, HostPattern::Exact("[::1]".into()), "{v6}");
        }
    }

    #[test]
    fn trusted_proxies_written_as_mapped_ipv6_are_their_ipv4_networks() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(ipv4_form(net("::ffff:10.0.0.0/104")), net("10.0.0.0/8"));
        assert_eq!(ipv4_form(net("::ffff:10.0.0.2/128")), net("10.0.0.2/32"));
        assert_eq!(ipv4_form(net("2001:db8::/32")), net("2001:db8::/32"));
        assert_eq!(ipv4_form(net("10.0.0.0/8")), net("10.0.0.0/8"));
    }

    #[test]
    fn only_names_the_world_uses_need_a_public_url() {
        for local in [
            "localhost",
            "app.localhost",
            "127.0.0.1",
            "[::1]",
            "::1",
            "*",
        ] {
            assert!(HostPattern::parse(local).unwrap().is_local(), "{local}");
        }
        for public in [
            "members.example.com",
            "*.example.com",
            "10.0.0.5",
            "[2001:db8::1]",
        ] {
            assert!(!HostPattern::parse(public).unwrap().is_local(), "{public}");
        }
    }

    #[test]
    fn listen_addresses_overlap_as_sockets_do() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(overlap(ip("127.0.0.1"), ip("::ffff:127.0.0.1")));
        assert!(overlap(ip("0.0.0.0"), ip("127.0.0.1")));
        assert!(overlap(ip("::"), ip("127.0.0.1")));
        assert!(overlap(ip("::1"), ip("::")));
        assert!(!overlap(ip("0.0.0.0"), ip("::1")));
        assert!(!overlap(ip("127.0.0.1"), ip("127.0.0.2")));
    }

    #[test]
    fn route_prefixes_must_be_normal() {
        assert_eq!(route_prefix("/members/").unwrap(), "/members");
        assert_eq!(route_prefix("/").unwrap(), "/");
        for bad in [
            "members", "/a//b", "/a/../b", "/a/./b", "/%2e", "/a\\b", "/a;b",
        ] {
            assert!(route_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upstreams_are_scheme_and_authority() {
        assert!(matches!(
            parse_upstream("http://127.0.0.1:8080"),
            Ok(Upstream::Http { tls: false, .. })
        ));
        assert!(matches!(
            parse_upstream("https://origin.example"),
            Ok(Upstream::Http { tls: true, .. })
        ));
        assert!(parse_upstream("ftp://x").is_err());
        assert!(parse_upstream("http://u:p@x").is_err());
        assert!(parse_upstream("http://x/base").is_err());
        assert!(parse_upstream("dir:").is_err());
    }
}
