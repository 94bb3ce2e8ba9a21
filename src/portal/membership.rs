//! The membership state shared by the portal and the authorise phase: the
//! member store, sessions, signing keys, mail and rate limits. Built once at
//! start; not replaced by a configuration reload (the database path and
//! secret apply after a restart). The portal's templates are part of the
//! configuration instead, and reload with it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::admin::metrics::MembershipCounters;
use crate::config::Config;
use crate::files::{self, IfExists};
use crate::mail::Mailer;
use crate::members::MemberStore;
use crate::members::sqlite::SqliteStore;
use crate::session::Sessions;

use super::device::DeviceCookies;

pub struct Membership {
    pub store: Arc<dyn MemberStore>,
    pub sessions: Arc<Sessions>,
    pub csrf_key: [u8; 32],
    pub mailer: Mailer,
    pub limits: RateLimits,
    /// Browsers that logged in before, outside the account-wide login limit.
    pub devices: DeviceCookies,
    pub counters: MembershipCounters,
    /// Mail sent to an address at anyone's request, at most once a while.
    pub mail_cooldown: MailCooldown,
    /// The key self-minted identification tokens use when none is configured.
    pub identity_secret: [u8; 32],
}

impl Membership {
    pub async fn open(config: &Config) -> Result<Membership, String> {
        let mailer = Mailer::new(&config.mail)?;
        let config = &config.members;
        let secret = load_secret(&config.secret_file)?;
        let store: Arc<dyn MemberStore> = Arc::new(
            SqliteStore::open(&config.database)
                .await
                .map_err(|e| e.to_string())?,
        );
        let sessions = Arc::new(Sessions::new(store.clone(), &secret, config));
        Ok(Membership {
            store,
            sessions,
            csrf_key: derive(&secret, b"membergate csrf v1"),
            mailer,
            limits: RateLimits::new(
                config.max_attempts_per_ip,
                config.max_attempts_per_account,
                config.max_attempts_per_account_per_ip,
            ),
            devices: DeviceCookies::new(
                &derive(&secret, b"membergate device cookie v1"),
                &config.cookie_name,
                config.cookie_secure,
            ),
            counters: MembershipCounters::default(),
            mail_cooldown: MailCooldown::new(),
            identity_secret: derive(&secret, b"membergate identification v1"),
        })
    }
}

/// The secret from `MEMBERGATE_SECRET` (hashed), if it is set: `check-config`
/// asks this too, so that a secret the gateway would refuse is reported
/// before it starts.
pub fn secret_from_env() -> Option<Result<[u8; 32], String>> {
    let text = std::env::var("MEMBERGATE_SECRET").ok()?;
    if text.len() < 32 {
        return Some(Err(
            "MEMBERGATE_SECRET must be at least 32 characters".into()
        ));
    }
    Some(Ok(Sha256::digest(text.as_bytes()).into()))
}

/// 32 secret bytes: `MEMBERGATE_SECRET` (hashed) if set, else the secret file,
/// created with 32 random bytes (hex, owner-only) on first start.
fn load_secret(path: &Path) -> Result<[u8; 32], String> {
    if let Some(secret) = secret_from_env() {
        return secret;
    }
    if !path.exists() {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| e.to_string())?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        // Whole or not at all; if another process won the race, its secret stands.
        let created = files::write_whole(path, hex.as_bytes(), 0o600, IfExists::Keep)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        if created {
            tracing::info!(file = %path.display(), "generated the gateway secret");
        }
    }
    // Whoever reads it can forge sessions. Not refused: a file an
    // orchestrator mounts (a Kubernetes Secret) is often readable by all.
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "the gateway secret is readable by other users, who could forge sessions: chmod 600 it, or use MEMBERGATE_SECRET"
            );
        }
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = text.trim();
    if text.len() < 32 {
        return Err(format!(
            "{} must hold at least 32 characters",
            path.display()
        ));
    }
    Ok(Sha256::digest(text.as_bytes()).into())
}

fn derive(secret: &[u8; 32], label: &[u8]) -> [u8; 32] {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return *secret;
    };
    mac.update(label);
    mac.finalize().into_bytes().into()
}

/// Attempts per minute, estimated in bounded memory (pingora-limits' count-min
/// sketch), per client IP, per canonical account from one IP, and per
/// account from all IPs (decision 0009).
pub struct RateLimits {
    rate: pingora_limits::rate::Rate,
    per_ip: isize,
    per_account: isize,
    per_account_per_ip: isize,
}

#[derive(Debug, Clone, Copy)]
pub enum Action {
    Login,
    Register,
    Reset,
}

/// Whether a device cookie vouches that this browser logged in to the
/// account before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Browser {
    Known,
    Unknown,
}

impl RateLimits {
    pub fn new(per_ip: u32, per_account: u32, per_account_per_ip: u32) -> RateLimits {
        RateLimits {
            rate: crate::limits::per_minute(),
            per_ip: per_ip as isize,
            per_account: per_account as isize,
            per_account_per_ip: per_account_per_ip as isize,
        }
    }

    /// Counts an attempt; true when it is over any limit. Each action has
    /// its own counters, so failed logins cannot block a password reset.
    ///
    /// A guesser at one address meets the per-(account, IP) limit long before
    /// the account's own, so guessing at an account from one place does not
    /// lock its owner out (attack catalogue E1); only guesses from many
    /// addresses at once reach the account-wide ceiling, and a browser that
    /// logged in to the account before ([`Browser::Known`]) is outside it.
    ///
    /// Only attempts within the address's limits count towards the account's
    /// ceiling: one address sending hundreds would otherwise spend it alone.
    /// The (account, address) pair is counted by the /56 of an IPv6 address,
    /// what an ISP gives one home, so a guesser's own prefix is not 256
    /// addresses towards the ceiling.
    pub fn exceeded(
        &self,
        action: Action,
        ip: std::net::IpAddr,
        account: Option<&str>,
        browser: Browser,
    ) -> bool {
        let action = action as u8;
        let address = crate::limits::client_key(ip);
        let over_ip = self.rate.observe(&(action, 0u8, address), 1) > self.per_ip;
        let Some(account) = account else {
            return over_ip;
        };
        let network = crate::limits::network_key(ip);
        let pair_count = self.rate.observe(&(action, 2u8, account, network), 1);
        if over_ip || pair_count > self.per_account_per_ip {
            return true;
        }
        browser == Browser::Unknown
            && self.rate.observe(&(action, 1u8, account), 1) > self.per_account
    }
}

/// How long a mail sent to an address at anyone's request holds back the
/// next of its kind. The attempt limits above let one client ask for
/// several a minute per address (ten by default), and anyone may ask for
/// any address: without this, one client could fill a stranger's inbox,
/// and each reset would store another live token. Five minutes holds that
/// to a dozen mails an hour, and a member who lost the mail does not wait
/// long to ask again; a reset link lives an hour, so the one sent is still
/// good meanwhile.
pub const MAIL_COOLDOWN: Duration = Duration::from_secs(5 * 60);

/// The mails [`MailCooldown`] holds back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MailKind {
    Reset,
    /// "Your email already has an account" (a registration for a taken address).
    AlreadyRegistered,
    /// To the address a member asked to move their account to: its link,
    /// or, for an address that has an account, a note that someone tried.
    EmailChange,
}

impl MailKind {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            MailKind::Reset => "reset",
            MailKind::AlreadyRegistered => "already_registered",
            MailKind::EmailChange => "email_change",
        }
    }
}

/// At most one mail of each kind per canonical address per
/// [`MAIL_COOLDOWN`]. In memory, per process: a restart forgets it, which
/// costs at most one more mail per address. Bounded: the addresses are kept
/// as SHA-256 digests, at most 100,000 of them; past that some are
/// forgotten early (moka keeps the ones asked for most), and the attempt
/// limits still hold.
#[derive(Clone)]
pub struct MailCooldown {
    sent: moka::sync::Cache<(MailKind, [u8; 32]), ()>,
}

impl MailCooldown {
    pub fn new() -> MailCooldown {
        MailCooldown {
            sent: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(MAIL_COOLDOWN)
                .build(),
        }
    }

    /// True for the first mail of `kind` to `canonical` in
    /// [`MAIL_COOLDOWN`], which it starts; false while one is cooling down.
    pub fn may_send(&self, kind: MailKind, canonical: &str) -> bool {
        let key = (kind, Sha256::digest(canonical.as_bytes()).into());
        // One atomic look-and-insert: of requests at the same moment, one
        // finds the address free.
        self.sent.entry(key).or_insert(()).is_fresh()
    }
}

impl Default for MailCooldown {
    fn default() -> MailCooldown {
        MailCooldown::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    const ACCOUNT: Option<&str> = Some("owner@example.com");

    fn limits() -> RateLimits {
        RateLimits::new(30, 100, 10)
    }

    fn v6(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn one_address_cannot_spend_an_accounts_ceiling() {
        let limits = limits();
        for _ in 0..500 {
            limits.exceeded(
                Action::Login,
                v6("2001:db8:1:200::1"),
                ACCOUNT,
                Browser::Unknown,
            );
        }
        let owner = v6("2001:db8:9::1");
        assert!(!limits.exceeded(Action::Login, owner, ACCOUNT, Browser::Unknown));
    }

    #[test]
    fn a_home_prefix_counts_once_towards_an_accounts_ceiling() {
        let limits = limits();
        // 200 networks of one /56, ten guesses each.
        for net in 0..200u32 {
            let address = v6(&format!("2001:db8:1:2{:02x}::1", net % 256));
            for _ in 0..10 {
                limits.exceeded(Action::Login, address, ACCOUNT, Browser::Unknown);
            }
        }
        let owner = v6("2001:db8:9::1");
        assert!(!limits.exceeded(Action::Login, owner, ACCOUNT, Browser::Unknown));
    }

    #[test]
    fn guesses_from_many_homes_reach_the_ceiling_but_not_a_known_browser() {
        let limits = limits();
        for home in 0..11u32 {
            let address = v6(&format!("2001:db8:{home:x}::1"));
            for _ in 0..10 {
                limits.exceeded(Action::Reset, address, ACCOUNT, Browser::Unknown);
            }
        }
        let owner = v6("2001:db8:ff::1");
        assert!(limits.exceeded(Action::Reset, owner, ACCOUNT, Browser::Unknown));
        assert!(!limits.exceeded(Action::Reset, owner, ACCOUNT, Browser::Known));
        // Another action's counts are its own.
        assert!(!limits.exceeded(Action::Login, owner, ACCOUNT, Browser::Unknown));
    }
}
