//! Visitor identification for the chat widget: which visitors see it and
//! identified or not (`decide`, pure), and their identification tokens, from
//! HubSpot or minted here, cached per member and site so a page view normally
//! costs no mint at all.
//!
//! Concurrent page views of one member share one mint (moka's `try_get_with`
//! coalesces them). A page never waits longer than `mint_timeout`: a slow or
//! failing mint is counted and logged, the page goes out without
//! identification, and the mint that was started keeps going in the
//! background so the next page has its token. HubSpot's refusal of one
//! member is remembered for a while, and an account that is down is given a
//! rest (`backoff`), so that neither costs a call per page view.

pub mod api;
mod backoff;
pub mod hubspot;
pub mod token;

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::admin::metrics::OutcomeLabels;
use crate::config::{Chat, ChatProvider, ChatShow, Identification};
use crate::members::MemberId;
use crate::session::Visitor;
use token::{Fingerprint, Identity, Key, Keys};

/// What the chat widget does on one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatDecision {
    /// No widget.
    Off,
    /// The widget, without identification.
    Anonymous,
    /// The widget, told who the member is.
    Identified,
}

/// The decision for `path` (and its `query`) and the index of the rule that
/// made it (`None`: the site's default). `groups` is `None` for anonymous
/// visitors.
pub fn decide(
    chat: &Chat,
    path: &str,
    query: Option<&str>,
    groups: Option<&[String]>,
) -> (ChatDecision, Option<usize>) {
    let matched = chat
        .rules
        .iter()
        .position(|r| r.pattern.matches(path) && query_matches(r.query.as_ref(), query));
    let show = matched.map_or(&chat.default, |i| &chat.rules[i].show);
    let decision = match (show, groups) {
        (ChatShow::Never, _) => ChatDecision::Off,
        (ChatShow::Everyone, None) => ChatDecision::Anonymous,
        (ChatShow::Members | ChatShow::Groups(_), None) => ChatDecision::Off,
        (ChatShow::Everyone | ChatShow::Members, Some(_)) => ChatDecision::Identified,
        (ChatShow::Groups(wanted), Some(have)) => {
            if wanted.iter().any(|w| have.contains(w)) {
                ChatDecision::Identified
            } else {
                ChatDecision::Off
            }
        }
    };
    (decision, matched)
}

/// The decision for a page that is also served under another path (`alias`:
/// a directory origin's `/dir/index.html` for `/dir/`): the stricter of the
/// two holds, so a rule that keeps the widget off a file keeps it off its
/// alias too.
pub fn decide_page(
    chat: &Chat,
    path: &str,
    alias: Option<&str>,
    query: Option<&str>,
    groups: Option<&[String]>,
) -> (ChatDecision, Option<usize>) {
    let decided = decide(chat, path, query, groups);
    match alias.map(|alias| decide(chat, alias, query, groups)) {
        Some(other) if other.0.reach() < decided.0.reach() => other,
        _ => decided,
    }
}

impl ChatDecision {
    /// How far a decision lets the widget go: of two for one page, the one
    /// that goes less far holds.
    fn reach(self) -> u8 {
        match self {
            ChatDecision::Off => 0,
            ChatDecision::Anonymous => 1,
            ChatDecision::Identified => 2,
        }
    }
}

/// Whether a rule's query condition holds for a request's query string.
fn query_matches(wanted: Option<&(String, Option<String>)>, query: Option<&str>) -> bool {
    let Some((name, value)) = wanted else {
        return true;
    };
    let Some(query) = query else {
        return false;
    };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    pairs
        .iter()
        .any(|(n, v)| n == name && value.as_ref().is_none_or(|want| want == v))
}

/// A token in the cache, with the identity it was minted for (a member who
/// changes their name gets a new one) and who issued it. `None`: HubSpot
/// refused this identity, and is not asked again for it until `reuse_for`
/// has passed.
#[derive(Debug)]
struct Minted {
    identity: Identity,
    token: Option<Arc<str>>,
    reuse_for: Duration,
    issuer: Issuer,
}

impl Minted {
    /// Whether this is the token `provider` would give the visitor now: for
    /// who they are (a renamed member's is not), from the current issuer.
    fn is_for(&self, visitor: &Visitor, provider: &ChatProvider, signer: &Fingerprint) -> bool {
        let same = &self.identity;
        same.email == visitor.email
            && same.first_name == visitor.first_name
            && same.last_name == visitor.last_name
            && self.issuer.is_current(provider, signer)
    }
}

/// Who issued a cached token. After a key rotation, or a change of provider
/// or of HubSpot portal, the chat backend may no longer accept it.
#[derive(Debug)]
enum Issuer {
    /// The key (id and secret) that signed a self-minted token.
    Key(Fingerprint),
    HubSpot {
        portal_id: Box<str>,
        api_base: http::Uri,
    },
}

impl Issuer {
    /// Whether a token from this issuer is one `provider` would give now.
    fn is_current(&self, provider: &ChatProvider, signer: &Fingerprint) -> bool {
        match (self, provider) {
            (Issuer::Key(key), ChatProvider::Builtin { .. }) => key == signer,
            (
                Issuer::HubSpot {
                    portal_id,
                    api_base,
                },
                ChatProvider::HubSpot {
                    portal_id: now_portal,
                    api_base: now_base,
                    ..
                },
            ) => **portal_id == **now_portal && api_base == now_base,
            _ => false,
        }
    }
}

/// How long a HubSpot call may run, as a multiple of how long a page waits
/// for it (`mint_timeout`). It goes on after the page has stopped waiting,
/// so that the next page finds the token; one that never ends would hold
/// every later page of the member to the same wait, since they join it.
const MINT_DEADLINE_PAGES: u32 = 10;

/// How long HubSpot's refusal of one identity is remembered.
const REFUSAL_REMEMBERED: Duration = Duration::from_secs(600);

/// Why a page has no HubSpot token.
#[derive(Debug)]
enum NoToken {
    /// The account is resting after failures; no call was made.
    Paused,
    /// The call failed (already logged).
    Failed,
}

struct ReuseFor;

impl moka::Expiry<(MemberId, Arc<str>), Arc<Minted>> for ReuseFor {
    fn expire_after_create(
        &self,
        _key: &(MemberId, Arc<str>),
        value: &Arc<Minted>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.reuse_for)
    }
}

pub struct Identifier {
    cache: moka::future::Cache<(MemberId, Arc<str>), Arc<Minted>>,
    hubspot: Arc<hubspot::HubSpotClient>,
    backoff: Arc<backoff::Backoff>,
    /// Used when the configuration names no keys: derived from the gateway secret.
    default_keys: Keys,
    /// `cached`, `minted`, `failed`, `timeout`, `refused`, `paused`.
    outcomes: Family<OutcomeLabels, Counter>,
    /// The `cached` counter of `outcomes`, looked up once: it counts nearly
    /// every page that identifies a member.
    cached: Counter,
    /// Token API calls per key and failed authentications per client, per
    /// minute, in bounded memory.
    pub api_rate: pingora_limits::rate::Rate,
}

impl Identifier {
    pub fn new(default_secret: &[u8; 32], capacity: u64) -> Result<Identifier, String> {
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        let cached = outcomes
            .get_or_create(&OutcomeLabels { result: "cached" })
            .clone();
        Ok(Identifier {
            cache: moka::future::Cache::builder()
                .max_capacity(capacity)
                .expire_after(ReuseFor)
                .support_invalidation_closures()
                .build(),
            hubspot: Arc::new(hubspot::HubSpotClient::new()?),
            backoff: Arc::default(),
            default_keys: Keys::new(vec![Key::new("default", default_secret)?])?,
            outcomes,
            cached,
            api_rate: crate::limits::per_minute(),
        })
    }

    /// Drops a member's cached tokens with the name and address they were
    /// minted for (a deleted member's: no request asks for them again).
    pub fn forget_member(&self, member: MemberId) {
        let _ = self
            .cache
            .invalidate_entries_if(move |(id, _), _| *id == member);
    }

    /// Number of cached tokens (for metrics).
    pub async fn cached(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }

    /// The per-result counters, for export.
    pub fn outcomes(&self) -> Family<OutcomeLabels, Counter> {
        self.outcomes.clone()
    }

    /// The keys tokens are minted and verified with.
    pub fn keys(&self, configured: Option<&Keys>) -> Keys {
        configured.unwrap_or(&self.default_keys).clone()
    }

    fn count(&self, result: &'static str) {
        self.outcomes.get_or_create(&OutcomeLabels { result }).inc();
    }

    /// The member's token for this site's chat provider, within the configured
    /// timeout, or `None` (logged and counted) so the page goes out without it.
    /// With `mint` false (a request that is not a page: an image, a script, a
    /// fetch) a HubSpot token is given only from the cache: such a request is
    /// rarely rewritten, and must not wait for, or start, a HubSpot call. A
    /// token signed here costs nothing to make, and is made either way.
    pub async fn token_for(
        &self,
        request: TokenRequest<'_>,
        visitor: &Visitor,
        mint: bool,
    ) -> Option<Arc<str>> {
        let TokenRequest {
            chat,
            settings,
            keys: configured_keys,
            site,
        } = request;
        let key = (visitor.member_id, site.clone());
        let signer = configured_keys.unwrap_or(&self.default_keys).signer();
        if let Some(found) = self.cache.get(&key).await {
            if found.is_for(visitor, &chat.provider, &signer) {
                return self.served(&found);
            }
            self.cache.invalidate(&key).await;
        }
        let identity = Identity {
            email: visitor.email.clone(),
            first_name: visitor.first_name.clone(),
            last_name: visitor.last_name.clone(),
        };
        match &chat.provider {
            ChatProvider::Builtin { .. } => {
                let keys = self.keys(configured_keys);
                let lifetime = settings.token_lifetime;
                let token: Arc<str> = keys
                    .mint(
                        &identity,
                        site,
                        crate::members::now(),
                        lifetime.as_secs() as i64,
                    )
                    .into();
                let minted = Arc::new(Minted {
                    identity,
                    token: Some(token.clone()),
                    reuse_for: lifetime.mul_f64(0.9),
                    issuer: Issuer::Key(keys.signer()),
                });
                self.cache.insert(key, minted).await;
                self.count("minted");
                Some(token)
            }
            ChatProvider::HubSpot {
                portal_id,
                api_base,
                access_token,
            } => {
                if !mint {
                    return None;
                }
                let account = hubspot_account(site, api_base, portal_id, access_token);
                if self.backoff.paused(account, Instant::now()) {
                    self.count("paused");
                    return None;
                }
                let call = HubSpotCall {
                    account,
                    portal_id: portal_id.as_str().into(),
                    api_base: api_base.clone(),
                    access_token: access_token.as_str().into(),
                    deadline: settings.mint_timeout.saturating_mul(MINT_DEADLINE_PAGES),
                };
                let waited = tokio::time::Instant::now() + settings.mint_timeout;
                // A page joins the call already running for the member, which
                // may have started before the member changed their name: then
                // its token is dropped and one call more is made, within the
                // same wait.
                for _ in 0..2 {
                    let mint = self.mint_at_hubspot(key.clone(), identity.clone(), call.clone());
                    match tokio::time::timeout_at(waited, mint).await {
                        Ok(Ok(Ok(minted))) if !minted.is_for(visitor, &chat.provider, &signer) => {
                            self.cache.invalidate(&key).await;
                        }
                        Ok(Ok(Ok(minted))) => {
                            if minted.token.is_none() {
                                self.count("refused");
                            }
                            return minted.token.clone();
                        }
                        Ok(Ok(Err(why))) => {
                            self.count(match *why {
                                NoToken::Paused => "paused",
                                NoToken::Failed => "failed",
                            });
                            return None;
                        }
                        Ok(Err(join)) => {
                            self.count("failed");
                            tracing::error!(error = %join, "identification task failed");
                            return None;
                        }
                        Err(_) => {
                            self.count("timeout");
                            tracing::warn!(
                                member = visitor.member_id,
                                timeout = ?settings.mint_timeout,
                                "identification token not ready in time; page served without it"
                            );
                            return None;
                        }
                    }
                }
                // Both calls were for a name the member no longer has: they
                // renamed themselves twice within one page's wait.
                self.count("failed");
                tracing::warn!(
                    member = visitor.member_id,
                    "identification token minted for an earlier name; page served without it"
                );
                None
            }
        }
    }

    /// A cached entry's token, counted.
    fn served(&self, found: &Minted) -> Option<Arc<str>> {
        if found.token.is_none() {
            self.count("refused");
            return None;
        }
        self.cached.inc();
        found.token.clone()
    }

    /// The member's HubSpot token from the cache, or from one call shared by
    /// every page that asks meanwhile. Spawned, so that a page that stops
    /// waiting does not cancel the call.
    fn mint_at_hubspot(
        &self,
        key: (MemberId, Arc<str>),
        identity: Identity,
        call: HubSpotCall,
    ) -> tokio::task::JoinHandle<Result<Arc<Minted>, Arc<NoToken>>> {
        let (cache, hubspot) = (self.cache.clone(), self.hubspot.clone());
        let backoff = self.backoff.clone();
        let outcomes = self.outcomes.clone();
        let member = key.0;
        tokio::spawn(async move {
            cache
                .try_get_with(key, async move {
                    let ticket = backoff
                        .ticket(call.account, Instant::now())
                        .ok_or(NoToken::Paused)?;
                    let deadline = call.deadline;
                    let answer = tokio::time::timeout(
                        deadline,
                        hubspot.mint(&call.api_base, &call.access_token, &identity),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(hubspot::MintError::unavailable(format!(
                            "HubSpot did not answer within {deadline:?}"
                        )))
                    });
                    // Logged here, once per call, whether or not a page is
                    // still waiting for it.
                    let (token, reuse_for) = match answer {
                        Ok(token) => {
                            outcomes
                                .get_or_create(&OutcomeLabels { result: "minted" })
                                .inc();
                            // Reused until an hour before HubSpot's 12 hours run out.
                            let reuse_for = hubspot::TOKEN_LIFETIME - Duration::from_secs(3600);
                            (Some(token.into()), reuse_for)
                        }
                        Err(hubspot::MintError::Refused(error)) => {
                            tracing::warn!(member, %error, "no identification token; HubSpot is not asked again for this member for 10 minutes");
                            (None, REFUSAL_REMEMBERED)
                        }
                        Err(hubspot::MintError::Unavailable { reason, retry_after }) => {
                            tracing::warn!(member, error = %reason, "no identification token");
                            if let Some(pause) = backoff.failed(ticket, Instant::now(), retry_after) {
                                tracing::warn!(?pause, "HubSpot unavailable; pages go out without identification until the pause ends");
                            }
                            return Err(NoToken::Failed);
                        }
                    };
                    backoff.answered(ticket);
                    Ok(Arc::new(Minted {
                        identity,
                        token,
                        reuse_for,
                        issuer: Issuer::HubSpot {
                            portal_id: call.portal_id,
                            api_base: call.api_base,
                        },
                    }))
                })
                .await
        })
    }
}

/// What a page's token is asked of: the site's chat, the identification
/// settings and configured keys, and the site's name (the token's audience).
#[derive(Clone, Copy)]
pub struct TokenRequest<'a> {
    pub chat: &'a Chat,
    pub settings: &'a Identification,
    pub keys: Option<&'a Keys>,
    pub site: &'a Arc<str>,
}

/// One HubSpot account's call, as the spawned mint needs it.
#[derive(Clone)]
struct HubSpotCall {
    account: backoff::Account,
    portal_id: Box<str>,
    api_base: http::Uri,
    access_token: Box<str>,
    /// How long the call may run after the page stopped waiting.
    deadline: Duration,
}

/// Which HubSpot account a site's calls go to, for the back-off: a reload
/// that changes the API base, the portal or the access token starts afresh.
fn hubspot_account(
    site: &str,
    api_base: &http::Uri,
    portal_id: &str,
    access_token: &str,
) -> backoff::Account {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (site, api_base, portal_id, access_token).hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ChatRule, WidgetLoader};
    use crate::policy::PathPattern;

    fn chat() -> Chat {
        let rule = |path: &str, show| ChatRule {
            path: path.into(),
            pattern: PathPattern::new(path).unwrap(),
            query: None,
            show,
        };
        Chat {
            provider: ChatProvider::Builtin {
                widget_url: "/w.js".into(),
            },
            default: ChatShow::Everyone,
            rules: vec![
                ChatRule {
                    query: Some(("chat".into(), Some("off".into()))),
                    ..rule("/", ChatShow::Never)
                },
                rule("/checkout", ChatShow::Never),
                rule("/members", ChatShow::Members),
                rule("/vip/**/*.html", ChatShow::Groups(vec!["vip".into()])),
                ChatRule {
                    query: Some(("preview".into(), None)),
                    ..rule("/kb", ChatShow::Never)
                },
                rule(
                    "/staff",
                    ChatShow::Groups(vec!["ops".into(), "sales".into()]),
                ),
            ],
            load_immediately: None,
            inline_embed_selector: None,
            loader: WidgetLoader::Membergate,
        }
    }

    #[test]
    fn targeting_by_path_login_and_group() {
        let vip = ["vip".to_owned()];
        let none: [String; 0] = [];
        type Case<'a> = (&'a str, Option<&'a [String]>, ChatDecision, Option<usize>);
        let sales = ["sales".to_owned()];
        let table: [Case; 18] = [
            ("/", None, ChatDecision::Anonymous, None),
            ("/", Some(&none), ChatDecision::Identified, None),
            ("/checkout/pay", Some(&vip), ChatDecision::Off, Some(1)),
            ("/members/x", None, ChatDecision::Off, Some(2)),
            ("/MEMBERS/x", Some(&none), ChatDecision::Identified, Some(2)),
            ("/vip/a/b.html", Some(&none), ChatDecision::Off, Some(3)),
            (
                "/vip/a/b.html",
                Some(&vip),
                ChatDecision::Identified,
                Some(3),
            ),
            ("/vip/a/b.html", None, ChatDecision::Off, Some(3)),
            ("/vip/a/b.txt", None, ChatDecision::Anonymous, None),
            // Query conditions: ?chat=off switches the widget off anywhere.
            (
                "/vip/a/b.html?chat=off",
                Some(&vip),
                ChatDecision::Off,
                Some(0),
            ),
            ("/?x=1&chat=off", None, ChatDecision::Off, Some(0)),
            ("/?chat=on", None, ChatDecision::Anonymous, None),
            ("/?chat", None, ChatDecision::Anonymous, None),
            // A condition on the name alone holds whatever the value.
            ("/kb/a?preview", Some(&none), ChatDecision::Off, Some(4)),
            ("/kb/a?preview=1", Some(&none), ChatDecision::Off, Some(4)),
            (
                "/kb/a?review=1",
                Some(&none),
                ChatDecision::Identified,
                None,
            ),
            // Any one of a rule's groups will do.
            ("/staff/x", Some(&sales), ChatDecision::Identified, Some(5)),
            ("/staff/x", Some(&vip), ChatDecision::Off, Some(5)),
        ];
        for (target, groups, want, rule) in table {
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (target, None),
            };
            let got = decide(&chat(), path, query, groups);
            assert_eq!(got, (want, rule), "{target} {groups:?}");
        }
    }

    /// A page also served as another path (`/dir/` as `/dir/index.html`):
    /// the decision that lets the widget go less far holds, whichever of
    /// the two it is.
    #[test]
    fn a_page_and_its_alias_get_the_widget_only_as_far_as_both_allow() {
        let none: [String; 0] = [];
        let table = [
            ("/checkout/", Some("/members/"), ChatDecision::Off, Some(1)),
            ("/members/", Some("/checkout/"), ChatDecision::Off, Some(1)),
            ("/members/", Some("/kb/"), ChatDecision::Identified, Some(2)),
            ("/kb/", Some("/members/"), ChatDecision::Identified, None),
        ];
        for (path, alias, want, rule) in table {
            let got = decide_page(&chat(), path, alias, None, Some(&none[..]));
            assert_eq!(got, (want, rule), "{path} as {alias:?}");
        }
        // Anonymous: the members-only alias keeps the widget off.
        let got = decide_page(&chat(), "/kb/", Some("/members/"), None, None);
        assert_eq!(got, (ChatDecision::Off, Some(2)));
    }
}
