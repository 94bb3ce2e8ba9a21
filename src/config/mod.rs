//! Configuration: the TOML file (`file`), checked and turned into the typed
//! [`Config`] the gateway runs on (`validate`).
//!
//! Loading reports every problem at once, each prefixed by its key path, so an
//! operator fixes a file in one pass.

mod file;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::portal::pages::Templates;
pub use validate::{HostPattern, listener_problems, site_for_host};

/// Checks a group name (letters, digits, `-`, `_`; 1 to 64 characters).
pub fn validate_group_name(name: &str) -> Result<(), String> {
    if validate::valid_group_name(name) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a group name: use 1 to 64 letters, digits, - or _"
        ))
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub limits: Limits,
    pub admin: Admin,
    pub log: Log,
    pub tls: Tls,
    pub members: Members,
    pub mail: Mail,
    pub identification: Identification,
    pub sites: Vec<Site>,
}

/// Visitor identification tokens minted by the gateway itself.
#[derive(Debug, Clone)]
pub struct Identification {
    /// Lifetime of self-minted tokens (HubSpot's are fixed at 12 hours).
    pub token_lifetime: Duration,
    /// How long a page waits for a token before it is served without one.
    pub mint_timeout: Duration,
    /// Signing and verification keys, the first signs. Empty: one key derived
    /// from the gateway secret.
    pub keys: Vec<(String, Vec<u8>)>,
    /// Keys for the token API, stored as SHA-256 digests.
    pub api_keys: Vec<ApiKey>,
}

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: String,
    pub sha256: [u8; 32],
    /// May mint tokens (`create`).
    pub create: bool,
    /// May check tokens (`verify`).
    pub verify: bool,
    /// The sites (by name) the key is good for; empty: every site.
    pub sites: Vec<String>,
}

/// The chat widget of a site: who gets it, identified or not.
#[derive(Debug, Clone)]
pub struct Chat {
    pub provider: ChatProvider,
    /// Who sees the widget where no rule matches.
    pub default: ChatShow,
    pub rules: Vec<ChatRule>,
    pub load_immediately: Option<bool>,
    pub inline_embed_selector: Option<String>,
    /// Who loads the widget script.
    pub loader: WidgetLoader,
}

/// Who puts the provider's widget script into pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WidgetLoader {
    /// membergate inserts it, after the settings.
    Membergate,
    /// The page has it already (HubSpot's embed code, a CMS plugin):
    /// membergate adds only the settings, and nothing for visitors it does
    /// not identify.
    Page,
}

#[derive(Debug, Clone)]
pub enum ChatProvider {
    /// HubSpot: tokens from its Visitor Identification API, its loader script.
    HubSpot {
        portal_id: String,
        /// Scheme and authority, e.g. `https://api.hubapi.com`.
        api_base: http::Uri,
        access_token: String,
    },
    /// Tokens minted by membergate; the widget script from `widget_url`.
    Builtin { widget_url: String },
}

#[derive(Debug, Clone)]
pub struct ChatRule {
    pub path: String,
    pub pattern: crate::policy::PathPattern,
    /// Also required: a query parameter, by name (`chat`) or name and value
    /// (`chat=off`).
    pub query: Option<(String, Option<String>)>,
    pub show: ChatShow,
}

/// Who a chat rule shows the widget to. Members are always identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatShow {
    Never,
    /// Everyone; anonymous visitors get the widget without identification.
    Everyone,
    /// Logged-in members only.
    Members,
    /// Members of any of these groups only.
    Groups(Vec<String>),
}

/// What the member, group, session and backup commands need (see
/// [`Config::load_member_store`]).
#[derive(Debug, Clone)]
pub struct MemberStoreConfig {
    /// `members.database`.
    pub database: PathBuf,
    /// `members.public_url`, what invitation links start with.
    pub public_url: String,
    /// The site that serves `public_url`'s host, which invitations name.
    pub site_name: Option<String>,
    pub mail: Mail,
}

/// Outgoing mail (verification, reset and invitation links).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// The `From` mailbox, e.g. `Example Members <members@example.com>`.
    pub from: String,
    pub transport: MailTransport,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailTransport {
    /// Development: one `.eml` file per message in this folder, text logged.
    Outbox(PathBuf),
    /// Production: an SMTP URL as lettre reads it (`smtps://user@host:465`,
    /// `smtp://user@host:587?tls=required`); the password may come from
    /// `MEMBERGATE_SMTP_PASSWORD`.
    Smtp { url: String },
}

#[derive(Debug, Clone)]
pub struct Members {
    pub database: PathBuf,
    /// Scheme, host and port that links in emails start with; never taken from a request.
    pub public_url: String,
    /// Where the signing secret lives (created on first start); `MEMBERGATE_SECRET` overrides.
    pub secret_file: PathBuf,
    pub cookie_name: String,
    pub cookie_secure: bool,
    pub session_lifetime: Duration,
    pub session_idle: Duration,
    pub session_cache_capacity: u64,
    pub registration: Registration,
    pub allowed_domains: Vec<String>,
    pub require_verification: bool,
    /// The portal's pages (`templates_dir`'s files over the built-in ones),
    /// read with the file: a reload serves the edited templates.
    pub templates: Arc<Templates>,
    pub identity_headers: bool,
    /// Login, registration and reset attempts allowed per minute from one IP.
    pub max_attempts_per_ip: u32,
    /// The same, per canonical account, from all IPs together: the ceiling
    /// for guessing spread over many addresses.
    pub max_attempts_per_account: u32,
    /// The same, per canonical account from one IP: the limit a single
    /// guesser meets, and which leaves the owner, elsewhere, free to log in.
    pub max_attempts_per_account_per_ip: u32,
}

/// Who may create an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Anyone.
    Open,
    /// Only members an administrator created; they set their password by email.
    Invite,
    /// Anyone with an address in `allowed_domains`.
    Domain,
    /// Anyone, but the account waits for an administrator's approval.
    Approval,
}

#[derive(Debug, Clone)]
pub struct Server {
    /// Data-plane worker threads; 0 means one per core.
    pub workers: usize,
    pub https_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub http_mode: HttpMode,
    pub https_redirect_port: Option<u16>,
    pub trusted_proxies: Vec<IpNet>,
    pub shutdown_grace: Duration,
    /// Lower-case, `-`-separated prefix of the identity headers only the gateway may set.
    pub identity_header_prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMode {
    /// Answer every plain-HTTP request with a 308 to HTTPS.
    Redirect,
    /// Proxy plain HTTP as usual (sidecar behind a TLS-terminating ingress).
    Serve,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    pub header_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
    /// An HTTP/2 connection that starts no request for this long is sent
    /// GOAWAY; it closes once the streams still running finish.
    pub http2_idle_timeout: Duration,
    /// The largest page, after decompression, the gateway rewrites; a
    /// compressed page that decodes to more is cut off (decompression bombs).
    pub max_rewrite_bytes: usize,
    /// A write to a client that makes no progress for this long closes the
    /// connection: a client that stops reading cannot hold it open.
    pub send_timeout: Duration,
    /// Connections open at once from one client IP (trusted proxies are not
    /// counted); 0 turns the cap off.
    pub max_connections_per_ip: u32,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: Option<SocketAddr>,
    /// A file holding the admin API's bearer key; `MEMBERGATE_ADMIN_KEY`
    /// overrides it. Without either, the admin API is off.
    pub api_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Log {
    pub format: LogFormat,
    pub level: String,
    pub access_log: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub dev_certificate: bool,
    pub session_tickets: bool,
    pub certificates: Vec<Certificate>,
}

#[derive(Debug, Clone)]
pub struct Certificate {
    /// Where the file has it (`tls.certificates[1]`), for messages.
    pub entry: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub hosts: Vec<HostPattern>,
}

#[derive(Debug, Clone)]
pub struct Site {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub routes: Vec<Route>,
    pub rules: crate::policy::Rules,
    pub chat: Option<Chat>,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Normalised path prefix: starts with `/`, no trailing `/` unless it is `/`.
    pub path: String,
    pub upstream: Upstream,
    pub rewrite_host: bool,
    pub max_body_bytes: u64,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// An HTTP origin; `uri` holds only scheme and authority.
    Http { uri: http::Uri, tls: bool },
    /// A directory served by the gateway itself.
    Dir(PathBuf),
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Http { uri, .. } => write!(f, "{uri}"),
            Upstream::Dir(path) => write!(f, "dir:{}", path.display()),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug)]
pub enum ConfigError {
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file is not valid TOML; for the member commands, which read only
    /// part of it, also a key or value of the wrong shape in that part.
    Syntax(String),
    /// The file has values that are invalid or of the wrong shape; one
    /// message per problem.
    Invalid(Vec<String>),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, error } => {
                write!(f, "cannot read {}: {error}", path.display())
            }
            ConfigError::Syntax(message) => write!(f, "{message}"),
            ConfigError::Invalid(problems) => write!(f, "{}", problems.join("\n")),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Environment variables that override listen addresses (for containers).
const ENV_OVERRIDES: [(&str, Listener); 3] = [
    ("MEMBERGATE_HTTPS_LISTEN", Listener::Https),
    ("MEMBERGATE_HTTP_LISTEN", Listener::Http),
    ("MEMBERGATE_ADMIN_LISTEN", Listener::Admin),
];

#[derive(Clone, Copy)]
enum Listener {
    Https,
    Http,
    Admin,
}

/// The overrides set in the environment: (variable, listener, value).
fn env_overrides() -> impl Iterator<Item = (&'static str, Listener, String)> {
    ENV_OVERRIDES
        .iter()
        .filter_map(|(name, which)| std::env::var(name).ok().map(|v| (*name, *which, v)))
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_owned(),
        error,
    })
}

impl Listener {
    /// The file's key the variable overrides.
    fn key(self) -> &'static str {
        match self {
            Listener::Https => "server.https_listen",
            Listener::Http => "server.http_listen",
            Listener::Admin => "admin.listen",
        }
    }
}

/// A configuration read as far as it goes: its values, with defaults
/// standing in for invalid ones, and every problem found in it. With
/// problems, the values serve only to check what they name (certificate
/// and key files), so that one run reports everything.
pub struct Checked {
    pub config: Config,
    pub problems: Vec<String>,
    /// Whether every section of the file had the right shape. If not,
    /// defaults stand in for the sections `problems` names, and checks that
    /// read those sections are not made.
    pub all_sections_read: bool,
}

impl Checked {
    /// The configuration, if it has no problems.
    pub fn valid(self) -> Result<Config, ConfigError> {
        if self.problems.is_empty() {
            Ok(self.config)
        } else {
            Err(ConfigError::Invalid(self.problems))
        }
    }
}

/// The host a `public_url` names, as sites' hosts are matched.
fn public_host(public_url: &str) -> Option<String> {
    let uri: http::Uri = public_url.parse().ok()?;
    Some(
        uri.host()?
            .to_ascii_lowercase()
            .trim_end_matches('.')
            .to_owned(),
    )
}

impl Config {
    /// The name of the site that serves `members.public_url`'s host, which
    /// invitations name.
    pub fn public_site_name(&self) -> Option<&str> {
        let host = public_host(&self.members.public_url)?;
        site_for_host(&self.sites, |s| &s.hosts, &host).map(|site| site.name.as_str())
    }

    /// Reads, parses and validates the file at `path`, applying environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::check(path)?.valid()
    }

    /// Reads and parses the file at `path`, applying environment overrides,
    /// and validates it without stopping at its problems. Fails only when
    /// the file cannot be read or is not TOML.
    pub fn check(path: &Path) -> Result<Checked, ConfigError> {
        Config::from_toml(&read(path)?, env_overrides())
    }

    /// Reads and validates only what the member, group, session and backup
    /// commands need (the member database, `[mail]`, and what invitation
    /// links start with): an administrator who must disable a member now is
    /// not stopped by a problem in a site or a chat widget.
    pub fn load_member_store(path: &Path) -> Result<MemberStoreConfig, ConfigError> {
        let text = read(path)?;
        let mut file: file::MemberStoreFile = file::parse(&text).map_err(ConfigError::Syntax)?;
        for (_, which, value) in env_overrides() {
            match which {
                Listener::Https => file.server.https_listen = Some(value),
                Listener::Http => file.server.http_listen = Some(value),
                Listener::Admin => {}
            }
        }
        validate::member_store(file).map_err(ConfigError::Invalid)
    }

    /// Parses and validates TOML text; `overrides` are (variable, listener, value).
    fn from_toml<'a>(
        text: &str,
        overrides: impl Iterator<Item = (&'a str, Listener, String)>,
    ) -> Result<Checked, ConfigError> {
        // A section with a structural problem is read as absent: its
        // problem is named, and the other sections are checked as usual.
        let file::Sections {
            mut file,
            failed,
            mut problems,
        } = file::parse_sections(text).map_err(ConfigError::Syntax)?;
        for (name, which, value) in overrides {
            // A bad value is the variable's problem, not the file's: it is
            // named, and the file's own value stays for the other checks.
            if !value.is_empty() && value.parse::<SocketAddr>().is_err() {
                problems.push(format!(
                    "{} (from {name}): expected an address like \"127.0.0.1:8443\" or \"\" to disable; got {value:?}",
                    which.key()
                ));
                continue;
            }
            let slot = match which {
                Listener::Https => &mut file.server.https_listen,
                Listener::Http => &mut file.server.http_listen,
                Listener::Admin => &mut file.admin.listen,
            };
            *slot = Some(value);
        }
        let (config, found) = validate::validate(file, &failed);
        problems.extend(found);
        Ok(Checked {
            config,
            problems,
            all_sections_read: failed.is_empty(),
        })
    }

    /// Where a running gateway's admin listener is (`None`: switched off):
    /// `MEMBERGATE_ADMIN_LISTEN`, else the file's `admin.listen` alone. A
    /// health probe must not call a serving gateway unhealthy because an edit
    /// it rejected on reload (a missing folder, a bad route) is on disk.
    pub fn admin_listen(path: &Path) -> Result<Option<SocketAddr>, String> {
        let (text, key) = match std::env::var("MEMBERGATE_ADMIN_LISTEN") {
            Ok(value) => (value, "admin.listen (from MEMBERGATE_ADMIN_LISTEN)"),
            Err(_) => {
                let file = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let table: toml::Table = file
                    .parse()
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let text = match table.get("admin").and_then(|admin| admin.get("listen")) {
                    None => validate::DEFAULT_ADMIN_LISTEN.to_owned(),
                    Some(toml::Value::String(listen)) => listen.clone(),
                    Some(other) => {
                        return Err(format!(
                            "admin.listen: expected an address like \"127.0.0.1:9090\"; got {other}"
                        ));
                    }
                };
                (text, "admin.listen")
            }
        };
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| {
            format!("{key}: expected an address like \"127.0.0.1:9090\"; got {text:?}")
        })
    }

    /// Parses and validates TOML text without looking at the environment.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, std::iter::empty())?.valid()
    }
}
