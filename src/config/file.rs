//! The TOML file as written by an operator: a serde mirror with no meaning attached.
//!
//! Every field is optional here (defaults are applied by `validate`), enums and
//! durations are kept as strings, and unknown keys are refused, so that
//! `validate` can check everything at once and name each problem by its key path.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

/// The whole file, read section by section (see [`parse_sections`]).
#[derive(Debug, Default)]
pub struct ConfigFile {
    pub server: ServerSection,
    pub limits: LimitsSection,
    pub admin: AdminSection,
    pub log: LogSection,
    pub tls: TlsSection,
    pub members: MembersSection,
    pub mail: MailSection,
    pub identification: IdentificationSection,
    pub sites: Vec<SiteSection>,
}

/// The top-level sections of [`ConfigFile`], for the message about any other key.
const SECTIONS: &[&str] = &[
    "server",
    "limits",
    "admin",
    "log",
    "tls",
    "members",
    "mail",
    "identification",
    "sites",
];

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

/// A file read as far as its structure allows.
#[derive(Debug, Default)]
pub struct Sections {
    /// The sections that were read; defaults stand in for the others.
    pub file: ConfigFile,
    /// The key paths of the sections left out (`server`, `sites[1]`).
    pub failed: Vec<String>,
    /// The first structural problem of each section left out, and each
    /// unknown top-level key, in the file's order.
    pub problems: Vec<String>,
}

/// Parses the file, reading each top-level section, and each `[[sites]]`
/// entry, on its own: a structural problem (an unknown key, a value of the
/// wrong type) leaves out only the section it is in, so one run names the
/// first such problem of every section. Fails only on a TOML syntax error.
pub fn parse_sections(text: &str) -> Result<Sections, String> {
    let root = DeTable::parse(text).map_err(|e| e.to_string())?;
    let mut entries: Vec<_> = root.into_inner().into_iter().collect();
    // The table is sorted by key; problems are listed in the file's order.
    entries.sort_by_key(|(key, _)| key.span().start);
    let mut read = Sections::default();
    for (key, value) in entries {
        let name: &str = key.get_ref();
        match name {
            "server" => read.file.server = read.section(text, name, value),
            "limits" => read.file.limits = read.section(text, name, value),
            "admin" => read.file.admin = read.section(text, name, value),
            "log" => read.file.log = read.section(text, name, value),
            "tls" => read.file.tls = read.section(text, name, value),
            "members" => read.file.members = read.section(text, name, value),
            "mail" => read.file.mail = read.section(text, name, value),
            "identification" => read.file.identification = read.section(text, name, value),
            "sites" => read.file.sites = read.sites(text, value),
            other => {
                let error = <toml::de::Error as serde::de::Error>::unknown_field(other, SECTIONS);
                let line = line_of(text, key.span().start);
                read.problems
                    .push(format!("{other}: {} (line {line})", error.message()));
            }
        }
    }
    Ok(read)
}

impl Sections {
    /// The section at `key`, or its defaults if it does not have the shape
    /// of `T` (then named as failed, with its first problem).
    fn section<T: DeserializeOwned + Default>(
        &mut self,
        text: &str,
        key: &str,
        value: Spanned<DeValue<'_>>,
    ) -> T {
        match serde_path_to_error::deserialize(ValueDeserializer::from(value)) {
            Ok(section) => section,
            Err(e) => {
                self.failed.push(key.to_owned());
                self.problems.push(describe(text, key, e));
                T::default()
            }
        }
    }

    /// The `[[sites]]` entries, each read on its own; one left out keeps
    /// its place (with defaults), so that the others keep their key paths.
    fn sites(&mut self, text: &str, value: Spanned<DeValue<'_>>) -> Vec<SiteSection> {
        if let DeValue::Array(entries) = value.get_ref() {
            return entries
                .iter()
                .enumerate()
                .map(|(i, entry)| self.section(text, &format!("sites[{i}]"), entry.clone()))
                .collect();
        }
        // Not a list: named as such.
        self.section(text, "sites", value)
    }
}

/// Parses the file, or the parts of it that `T` mirrors, naming the key path
/// of the first structural problem (an unknown key or a value of the wrong
/// type).
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| e.to_string())?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| describe(text, "", e))
}

/// A structural problem as `key.path: message (line N)`, its path taken
/// from inside the value at `section` (`""`: the whole file).
fn describe(text: &str, section: &str, e: serde_path_to_error::Error<toml::de::Error>) -> String {
    let inner_path = e.path().to_string();
    let path = match inner_path.as_str() {
        "." if !section.is_empty() => section.to_owned(),
        inner if section.is_empty() || inner.starts_with('[') => format!("{section}{inner}"),
        inner => format!("{section}.{inner}"),
    };
    let inner = e.into_inner();
    let message = inner.message();
    match inner.span() {
        Some(span) => format!("{path}: {message} (line {})", line_of(text, span.start)),
        None => format!("{path}: {message}"),
    }
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
    fn every_section_names_its_first_structural_problem_and_line() {
        let read = parse_sections(
            "[log]\naccess_log = true\nlevel = 1\n[[sites]]\nname = \"a\"\n[[sites]]\nnmae = \"b\"\n\
             [[sites]]\nname = \"c\"\n[sever]\n",
        )
        .unwrap();
        assert_eq!(read.failed, ["log", "sites[1]"]);
        assert_eq!(read.problems.len(), 3, "{:?}", read.problems);
        let expected = [
            ("log.level: invalid type: integer `1`", "(line 3)"),
            ("sites[1].nmae: unknown field `nmae`", "(line 7)"),
            ("sever: unknown field `sever`, expected one of", "(line 10)"),
        ];
        for (problem, (start, end)) in read.problems.iter().zip(expected) {
            assert!(
                problem.starts_with(start) && problem.ends_with(end),
                "{problem}"
            );
        }
        // The entry left out keeps its place: the next is still sites[2].
        let names: Vec<_> = read.file.sites.iter().map(|s| s.name.as_deref()).collect();
        assert_eq!(names, [Some("a"), None, Some("c")]);
    }

    #[test]
    fn sites_that_is_not_a_list_is_named_whole() {
        let read = parse_sections("sites = 3\n").unwrap();
        assert_eq!(read.failed, ["sites"]);
        assert!(
            read.problems[0].starts_with("sites: invalid type"),
            "{:?}",
            read.problems
        );
    }

    #[test]
    fn a_key_at_the_start_of_a_line_is_named_on_that_line() {
        let error = parse::<MemberStoreFile>("[members]\ndatabse = \"x\"\n").unwrap_err();
        assert!(
            error.starts_with("members.databse: unknown field") && error.ends_with("(line 2)"),
            "{error}"
        );
    }

    #[test]
    fn a_syntax_error_stops_everything() {
        let error = parse_sections("[server]\nworkers = \n").unwrap_err();
        assert!(error.contains("line 2"), "{error}");
    }
}
