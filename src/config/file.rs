//! The TOML file as written by an operator: a serde mirror with no meaning attached.
//!
//! Every field is optional here (defaults are applied by `validate`), enums and
//! durations are kept as strings, and unknown keys are refused, so that
//! `validate` can check everything at once and name each problem by its key path.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub members: MembersSection,
    #[serde(default)]
    pub mail: MailSection,
    #[serde(default)]
    pub identification: IdentificationSection,
    #[serde(default)]
    pub sites: Vec<SiteSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembersSection {
    pub database: Option<String>,
    pub public_url: Option<String>,
    pub secret_file: Option<String>,
    pub cookie_name: Option<String>,
    pub cookie_secure: Option<bool>,
    pub session_lifetime: Option<String>,
    pub session_idle: Option<String>,
    pub session_cache_capacity: Option<u64>,
    pub registration: Option<String>,
    pub allowed_domains: Option<Vec<String>>,
    pub require_verification: Option<bool>,
    pub templates_dir: Option<String>,
    pub identity_headers: Option<bool>,
    pub max_attempts_per_ip: Option<u32>,
    pub max_attempts_per_account: Option<u32>,
    pub max_attempts_per_account_per_ip: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentificationSection {
    pub token_lifetime: Option<String>,
    pub mint_timeout: Option<String>,
    #[serde(default)]
    pub keys: Vec<KeySection>,
    #[serde(default)]
    pub api_keys: Vec<ApiKeySection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySection {
    pub name: Option<String>,
    pub key_sha256: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub sites: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySection {
    pub id: Option<String>,
    pub secret_file: Option<String>,
    pub secret_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatSection {
    pub provider: Option<String>,
    pub portal_id: Option<String>,
    pub api_base: Option<String>,
    pub access_token_env: Option<String>,
    pub widget_url: Option<String>,
    pub show: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub load_immediately: Option<bool>,
    pub inline_embed_selector: Option<String>,
    pub loader: Option<String>,
    #[serde(default)]
    pub rules: Vec<ChatRuleSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRuleSection {
    pub path: Option<String>,
    pub query: Option<String>,
    pub show: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailSection {
    pub from: Option<String>,
    pub outbox_dir: Option<String>,
    pub smtp_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    pub path: Option<String>,
    pub policy: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub teaser: Option<String>,
    pub private: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub workers: Option<usize>,
    pub https_listen: Option<String>,
    pub http_listen: Option<String>,
    pub http_mode: Option<String>,
    pub https_redirect_port: Option<u16>,
    pub trusted_proxies: Option<Vec<String>>,
    pub shutdown_grace: Option<String>,
    pub identity_header_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub max_header_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    pub max_uri_bytes: Option<usize>,
    pub header_timeout: Option<String>,
    pub tls_handshake_timeout: Option<String>,
    pub body_idle_timeout: Option<String>,
    pub http2_max_concurrent_streams: Option<u32>,
    pub http2_idle_timeout: Option<String>,
    pub max_rewrite_bytes: Option<usize>,
    pub send_timeout: Option<String>,
    pub max_connections_per_ip: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub listen: Option<String>,
    pub api_key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub format: Option<String>,
    pub level: Option<String>,
    pub access_log: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub dev_certificate: Option<bool>,
    pub session_tickets: Option<bool>,
    #[serde(default)]
    pub certificates: Vec<CertificateSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSection {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    pub name: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    pub default_policy: Option<String>,
    #[serde(default)]
    pub rules: Vec<RuleSection>,
    pub chat: Option<ChatSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub path: Option<String>,
    pub upstream: Option<String>,
    pub rewrite_host: Option<bool>,
    pub max_body_bytes: Option<u64>,
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub ca_file: Option<String>,
}

/// The parts of the file the member, group, session and backup commands
/// read (see `validate::member_store`). Other sections, and other keys of
/// `[server]` and `[[sites]]`, are not looked at: they are the whole file's
/// to check. `[members]` and `[mail]` are read whole, so that a misspelt key
/// there (`databse`) stops a command instead of sending it to another
/// database.
#[derive(Debug, Default, Deserialize)]
pub struct MemberStoreFile {
    #[serde(default)]
    pub server: ListenSection,
    #[serde(default)]
    pub members: MembersSection,
    #[serde(default)]
    pub mail: MailSection,
    #[serde(default)]
    pub sites: Vec<SiteHostsSection>,
}

/// The listen addresses, which `members.public_url` defaults to.
#[derive(Debug, Default, Deserialize)]
pub struct ListenSection {
    pub https_listen: Option<String>,
    pub http_listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct SiteHostsSection {
    pub name: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// Parses the file, or the parts of it that `T` mirrors, naming the key path
/// of the first structural problem (an unknown key or a value of the wrong
/// type).
pub fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| e.to_string())?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.message().to_string();
        match inner.span() {
            Some(span) => format!("{path}: {message} (line {})", line_of(text, span.start)),
            None => format!("{path}: {message}"),
        }
    })
}

/// The line, counted from 1, that byte `offset` of `text` is on.
fn line_of(text: &str, offset: usize) -> usize {
    let before = text.get(..offset).unwrap_or(text);
    before.matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_at_the_start_of_a_line_is_named_on_that_line() {
        let error = parse::<MemberStoreFile>("[members]\ndatabse = \"x\"\n").unwrap_err();
        assert!(
            error.starts_with("members.databse: unknown field") && error.ends_with("(line 2)"),
            "{error}"
        );
    }
}
