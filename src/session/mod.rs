//! Sessions: a random id in a cookie, the record in the member store, and a
//! bounded in-memory cache in front of it so an authenticated request normally
//! costs no store round trip.
//!
//! The cookie carries the 256-bit id plus a 128-bit HMAC tag ([`seal::Seal`]),
//! so a forged or tampered cookie is refused without touching the store. The store keeps only
//! the SHA-256 of the id. A cached session is re-checked on every hit (absolute
//! and idle expiry); every change to a member drops that member's cached
//! sessions, whether made here or by another process (see [`Sessions::follow_changes`]).
//! A member who gains a privilege keeps their session under a new id (see
//! [`Lookup::Renewed`]); one who loses access loses the session.

pub mod seal;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use sha2::{Digest, Sha256};

use crate::config;
use crate::hygiene::headers::header_text;
use crate::members::{Member, MemberId, MemberStore, SessionRecord, Status, StoreError, now};

pub use seal::{Seal, cookie_values};

/// What the gateway knows about a logged-in visitor; shared by cached requests.
#[derive(Debug)]
pub struct Visitor {
    pub id_hash: [u8; 32],
    pub member_id: MemberId,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub groups: Vec<String>,
    pub expires_at: i64,
    /// The identity headers' values for origins, encoded once per session.
    pub identity: IdentityValues,
    /// The hash of the session id this one was renewed from (the member
    /// gained a group), while it is cached: pages made before the renewal
    /// carry forms whose CSRF tokens are bound to that id.
    pub renewed_from: Option<[u8; 32]>,
    last_seen: AtomicI64,
}

/// `X-Member-Id`, `-Email`, `-Name`, `-Groups` values (RFC 8187 when not ASCII).
#[derive(Debug)]
pub struct IdentityValues {
    pub id: http::HeaderValue,
    pub email: http::HeaderValue,
    pub name: http::HeaderValue,
    pub groups: http::HeaderValue,
}

impl IdentityValues {
    fn of(member: &Member) -> IdentityValues {
        let value = |text: &str| {
            // header_text leaves only printable ASCII, which is always a valid value.
            http::HeaderValue::from_str(&header_text(text))
                .unwrap_or_else(|_| http::HeaderValue::from_static(""))
        };
        IdentityValues {
            id: http::HeaderValue::from(member.id),
            email: value(&member.email),
            name: value(&member.display_name()),
            groups: value(&member.groups.join(",")),
        }
    }
}

impl Visitor {
    pub fn display_name(&self) -> String {
        format!("{} {}", self.first_name, self.last_name)
            .trim()
            .to_owned()
    }
}

/// The session a request's cookies name.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// No session cookie.
    Anonymous,
    Member(Arc<Visitor>),
    /// The member gained a privilege since the session began: the same
    /// visitor under a new session id, which the response sets (catalogue
    /// D1). The old id is dead.
    Renewed {
        visitor: Arc<Visitor>,
        cookie_value: String,
    },
    /// A session renewed under a new id moments ago: treat as anonymous and
    /// leave the cookie alone, since the browser may hold the new id by now.
    Replaced,
    /// A cookie that is forged, tampered, expired or revoked: treat as
    /// anonymous and clear it.
    Invalid,
    /// The session could not be checked just now (the store failed): treat
    /// as anonymous for this request, keep the cookie, and answer 503 where a
    /// member is needed, so a bad minute of the store logs nobody out.
    Unavailable,
    /// More than one cookie of our name: refuse the request (catalogue D3).
    Ambiguous,
}

/// A lookup as a response sees it: who the visitor is, and the cookies to
/// set (a renewed session's new id; or a dead one cleared, with the chat reset).
pub struct Settled {
    pub visitor: Option<Arc<Visitor>>,
    pub set_cookies: Vec<String>,
    /// The request named a session that could not be checked just now.
    pub unavailable: bool,
    /// The request named a session that is over (expired, revoked, or its
    /// member changed or disabled elsewhere): the chat widget must forget
    /// the member, as after a log-out.
    pub ended: bool,
}

/// A new session, ready to be sent to the browser.
pub struct Created {
    pub cookie_value: String,
    pub visitor: Arc<Visitor>,
}

pub struct Sessions {
    store: Arc<dyn MemberStore>,
    cache: moka::sync::Cache<[u8; 32], Arc<Visitor>>,
    /// Sessions ended here in the last seconds. A request that read one from
    /// the store just before it was deleted must not put it back in the cache
    /// after the log-out cleared it (see [`Sessions::destroy`]).
    ended: moka::sync::Cache<[u8; 32], ()>,
    /// Counts `forget_member` calls. A session read from the store before a
    /// member change and cached after the change's `forget_member` ran would
    /// stay in the cache with the old member; whoever caches one checks this
    /// did not move meanwhile (see [`Sessions::cache_visitor`]).
    forgets: AtomicU64,
    seal: Seal,
    pub cookie_name: String,
    /// `<cookie_name>-chat-reset`, built once.
    chat_reset_name: String,
    /// The statement in the reset script that clears that cookie: it is
    /// cleared by the page that carried the reset, once a browser ran it.
    chat_reset_clearing: Arc<str>,
    pub cookie_secure: bool,
    lifetime: Duration,
    idle: Duration,
    counters: SessionCounters,
}

/// What session lookups came to, for export.
#[derive(Clone, Default)]
pub struct SessionCounters {
    /// Answered from memory.
    pub hits: Counter,
    /// Read from the store.
    pub misses: Counter,
    /// Moved to a new id after a privilege change.
    pub renewed: Counter,
    /// Could not be checked: the store failed.
    pub unavailable: Counter,
}

/// The chat-reset cookie's value. Before the reset script cleared the cookie
/// itself, the cookie was `HttpOnly` with the value `1`, which no script can
/// clear: such a cookie, left from before an upgrade, is ignored (it expires
/// within a day) rather than reset the widget on every page.
pub const CHAT_RESET_VALUE: &str = "2";

/// How long a chat widget may remember its visitor (HubSpot's widget: six to
/// thirteen months), as the longest a browser keeps a cookie, 400 days. The
/// session cookie stays this long past its session's end. A browser that
/// dropped it when the session ran out would send nothing the next time,
/// and the gateway could not tell the widget to forget the member. Kept, it
/// comes back, is found dead, and is cleared with a chat reset, as any
/// ended session is. The dead id inside names nothing.
const WIDGET_MEMORY: i64 = 400 * 86_400;
/// How long the chat-reset cookie waits for a page whose widget runs it.
/// Until then every page with the widget is this browser's alone (no
/// browser cache, no validators), which a browser that blocks the widget
/// would pay for good; a week covers the next person at a shared computer,
/// and a log-in after another member resets the widget whenever it comes.
const CHAT_RESET_WAITS_FOR: i64 = 7 * 86_400;
/// Asks the browser to drop the pages of this site it keeps, in its cache and
/// its back-forward cache, wherever the widget is told to forget a member
/// (the chat-reset cookie goes with it): the next person at the computer
/// cannot go Back to a page the origin made for the member. Only `"cache"`:
/// the site's cookies and storage (consent, preferences) are not the
/// gateway's to wipe, and it clears its own cookies itself.
pub fn forget_members_pages(headers: &mut http::HeaderMap) {
    headers.insert(
        http::HeaderName::from_static("clear-site-data"),
        http::HeaderValue::from_static("\"cache\""),
    );
}

/// How stale `last_seen` may be in the store before it is written again.
const TOUCH_INTERVAL: i64 = 60;
/// How long a renewed session's old id is told apart from a dead one, so
/// that requests already under way with it do not clear the new cookie.
const REPLACED_FOR: i64 = 60;

impl Sessions {
    pub fn new(
        store: Arc<dyn MemberStore>,
        secret: &[u8; 32],
        config: &config::Members,
    ) -> Sessions {
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.session_cache_capacity)
            .time_to_idle(config.session_idle)
            .support_invalidation_closures()
            .build();
        let chat_reset_name = format!("{}-chat-reset", config.cookie_name);
        let secure = if config.cookie_secure { ";Secure" } else { "" };
        let chat_reset_clearing = format!(
            "document.cookie=\"{chat_reset_name}=;Max-Age=0;Path=/;SameSite=Lax{secure}\";"
        );
        Sessions {
            store,
            cache,
            // Longer than a store read takes, and than the change follower's
            // period, which covers other processes.
            ended: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(10))
                .build(),
            forgets: AtomicU64::new(0),
            seal: Seal::new(secret),
            cookie_name: config.cookie_name.clone(),
            chat_reset_name,
            chat_reset_clearing: chat_reset_clearing.into(),
            cookie_secure: config.cookie_secure,
            lifetime: config.session_lifetime,
            idle: config.session_idle,
            counters: SessionCounters::default(),
        }
    }

    pub fn store(&self) -> &Arc<dyn MemberStore> {
        &self.store
    }

    /// Finds the session named by the request's `Cookie` headers.
    pub async fn lookup(&self, headers: &http::HeaderMap) -> Lookup {
        let mut found = None;
        for value in cookie_values(headers, &self.cookie_name) {
            if found.is_some() {
                return Lookup::Ambiguous;
            }
            found = Some(value);
        }
        let Some(value) = found else {
            return Lookup::Anonymous;
        };
        let Some(id) = self.seal.open(value) else {
            return Lookup::Invalid;
        };
        let id_hash = hash_id(&id);
        let now = now();
        if let Some(visitor) = self.cache.get(&id_hash) {
            self.counters.hits.inc();
            return self.still_valid(visitor, now);
        }
        self.counters.misses.inc();
        let loaded = self.load(id_hash, now).await;
        let counter = match loaded {
            Lookup::Renewed { .. } => Some(&self.counters.renewed),
            Lookup::Unavailable => Some(&self.counters.unavailable),
            _ => None,
        };
        if let Some(counter) = counter {
            counter.inc();
        }
        loaded
    }

    /// What a lookup means for the response; `None` for an ambiguous one,
    /// which is refused.
    pub fn settle(&self, lookup: Lookup) -> Option<Settled> {
        let unavailable = matches!(lookup, Lookup::Unavailable);
        let ended = matches!(lookup, Lookup::Invalid);
        let (visitor, set_cookies) = match lookup {
            // A session renewed moments ago, or one that could not be
            // checked, may well be alive: nothing to clear or reset.
            Lookup::Anonymous | Lookup::Replaced | Lookup::Unavailable => (None, vec![]),
            Lookup::Member(visitor) => (Some(visitor), vec![]),
            Lookup::Renewed {
                visitor,
                cookie_value,
            } => {
                let left = (visitor.expires_at - now()).max(0);
                let cookie = self.cookie(&self.cookie_name, &cookie_value, left + WIDGET_MEMORY);
                (Some(visitor), vec![cookie])
            }
            // Ended without the log-out button: the chat is reset all the
            // same, or the next person at a shared computer reads the
            // member's conversation. Clearing the cookie makes it once (a
            // forged cookie costs a reset, nothing more).
            Lookup::Invalid => (None, vec![self.clear_cookie(), self.chat_reset_cookie()]),
            Lookup::Ambiguous => return None,
        };
        Some(Settled {
            visitor,
            set_cookies,
            unavailable,
            ended,
        })
    }

    fn still_valid(&self, visitor: Arc<Visitor>, now: i64) -> Lookup {
        let last_seen = visitor.last_seen.load(Ordering::Relaxed);
        if now >= visitor.expires_at || now - last_seen > self.idle.as_secs() as i64 {
            self.cache.invalidate(&visitor.id_hash);
            let (store, id_hash) = (self.store.clone(), visitor.id_hash);
            tokio::spawn(async move {
                let _ = store.delete_session(id_hash).await;
            });
            return Lookup::Invalid;
        }
        if now - last_seen >= TOUCH_INTERVAL {
            // Off the request path: the hot path never waits on the store.
            visitor.last_seen.store(now, Ordering::Relaxed);
            let (store, id_hash) = (self.store.clone(), visitor.id_hash);
            tokio::spawn(async move {
                if let Err(e) = store.touch_session(id_hash, now).await {
                    tracing::warn!(error = %e, "could not record session activity");
                }
            });
        }
        Lookup::Member(visitor)
    }

    /// Loads a session from the store (and caches it), ending it if it or
    /// its member is no longer valid, renewing it if the member has gained a
    /// privilege since it began.
    async fn load(&self, id_hash: [u8; 32], now: i64) -> Lookup {
        let forgets = self.forgets.load(Ordering::SeqCst);
        let record = match self.store.session(id_hash).await {
            Ok(Some(record)) => record,
            Ok(None) => return Lookup::Invalid,
            Err(e) => {
                tracing::error!(error = %e, "session lookup failed; treating the visitor as anonymous");
                return Lookup::Unavailable;
            }
        };
        let idle_over = now - record.last_seen_at > self.idle.as_secs() as i64;
        let member = match self.store.member_by_id(record.member_id).await {
            Ok(member) => member,
            Err(e) => {
                tracing::error!(error = %e, "member lookup failed; treating the visitor as anonymous");
                return Lookup::Unavailable;
            }
        };
        let valid = member.as_ref().filter(|m| {
            now < record.expires_at
                && !idle_over
                && m.status == Status::Active
                && m.epoch == record.epoch
        });
        let Some(member) = valid else {
            let _ = self.store.delete_session(id_hash).await;
            return Lookup::Invalid;
        };
        if record.replaced {
            return Lookup::Replaced;
        }
        if record.grants != member.grants {
            return self.renew(&record, member, now, forgets).await;
        }
        let visitor = Arc::new(visitor(
            id_hash,
            member,
            record.expires_at,
            record.last_seen_at,
        ));
        self.cache_visitor(&visitor, forgets);
        // Checked after the insert: a log-out marks the session ended before it
        // clears the cache, so either its clearing comes after this insert or
        // its mark is seen here.
        if self.ended.contains_key(&id_hash) {
            self.cache.invalidate(&id_hash);
            return Lookup::Invalid;
        }
        Lookup::Member(visitor)
    }

    /// Moves a session to a new id after its member gained a privilege: the
    /// old id is marked replaced in the same transaction that stores the new
    /// one, so of two requests racing with the old cookie only one renews it.
    async fn renew(&self, old: &SessionRecord, member: &Member, now: i64, forgets: u64) -> Lookup {
        let id = match fresh_id() {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(error = %e, "cannot renew a session");
                return Lookup::Unavailable;
            }
        };
        // The new id lives as long as the old one would have.
        let record = SessionRecord {
            expires_at: old.expires_at,
            ..self.record_for(member, hash_id(&id), now)
        };
        match self
            .store
            .replace_session(old.id_hash, record.clone(), now + REPLACED_FOR)
            .await
        {
            Ok(true) => {
                tracing::info!(
                    member = member.id,
                    "session renewed under a new id after a privilege change"
                );
                let visitor = Arc::new(Visitor {
                    renewed_from: Some(old.id_hash),
                    ..visitor(record.id_hash, member, record.expires_at, now)
                });
                self.cache_visitor(&visitor, forgets);
                Lookup::Renewed {
                    visitor,
                    cookie_value: self.seal.seal(&id),
                }
            }
            Ok(false) => Lookup::Replaced,
            // Disabled, or its password changed, since it was read: the
            // session is over.
            Err(StoreError::Stale) => Lookup::Invalid,
            Err(e) => {
                tracing::error!(error = %e, "cannot renew a session");
                Lookup::Unavailable
            }
        }
    }

    /// The record of a session for `member` starting now.
    fn record_for(&self, member: &Member, id_hash: [u8; 32], now: i64) -> SessionRecord {
        SessionRecord {
            id_hash,
            member_id: member.id,
            epoch: member.epoch,
            grants: member.grants,
            created_at: now,
            expires_at: now + self.lifetime.as_secs() as i64,
            last_seen_at: now,
            replaced: false,
        }
    }

    /// Caches a session whose member was read from the store when
    /// `forgets` had the value given. If a member was forgotten since, this
    /// one may have been read before the change: the entry is dropped again,
    /// and the next request reads the store. Checked after the insert, so
    /// either the forgetting's sweep comes after the insert or its count is
    /// seen here.
    fn cache_visitor(&self, visitor: &Arc<Visitor>, forgets: u64) {
        self.cache.insert(visitor.id_hash, visitor.clone());
        if self.forgets.load(Ordering::SeqCst) != forgets {
            self.cache.invalidate(&visitor.id_hash);
        }
    }

    /// Starts a session for `member` (a fresh id every time: no fixation).
    pub async fn create(&self, member: &Member) -> Result<Created, String> {
        let id = fresh_id()?;
        let id_hash = hash_id(&id);
        let now = now();
        let record = self.record_for(member, id_hash, now);
        // The store refuses the session if the member changed before the
        // insert; one that changes after it is forgotten after its commit,
        // and `cache_visitor` sees that count move.
        let forgets = self.forgets.load(Ordering::SeqCst);
        self.store
            .create_session(record.clone())
            .await
            .map_err(|e| e.to_string())?;
        let visitor = Arc::new(visitor(id_hash, member, record.expires_at, now));
        self.cache_visitor(&visitor, forgets);
        Ok(Created {
            cookie_value: self.seal.seal(&id),
            visitor,
        })
    }

    /// Ends one session (log out): no request that starts after this
    /// returns is let in with it, here or, within the change follower's
    /// period, in another process.
    pub async fn destroy(&self, id_hash: [u8; 32], member: MemberId) {
        self.ended.insert(id_hash, ());
        if let Err(e) = self.store.end_session(id_hash, member, now()).await {
            tracing::error!(error = %e, "could not delete a session");
        }
        self.cache.invalidate(&id_hash);
    }

    /// Drops a member's cached sessions; the next request re-reads the store.
    pub fn forget_member(&self, member_id: MemberId) {
        self.forgets.fetch_add(1, Ordering::SeqCst);
        let _ = self
            .cache
            .invalidate_entries_if(move |_, v| v.member_id == member_id);
    }

    /// Polls the store's change log and drops cached sessions of changed
    /// members, so that changes made by another process (the admin CLI) apply
    /// within `every`; `deleted` is told of members no longer in the store.
    /// Runs until the process ends.
    pub async fn follow_changes(
        self: Arc<Self>,
        every: Duration,
        deleted: impl Fn(MemberId) + Send + 'static,
    ) {
        let mut seen = match self.store.changes_since(0).await {
            Ok((_, newest)) => newest,
            Err(_) => 0,
        };
        let mut ticker = tokio::time::interval(every);
        let mut sweeps = 0u32;
        loop {
            ticker.tick().await;
            match self.store.changes_since(seen).await {
                Ok((members, newest)) => {
                    for id in members {
                        self.forget_member(id);
                        // Deleted by another process (the admin CLI): what
                        // else this one keeps of the member goes too.
                        if let Ok(None) = self.store.member_by_id(id).await {
                            deleted(id);
                        }
                    }
                    seen = newest;
                }
                Err(e) => tracing::warn!(error = %e, "could not read member changes"),
            }
            sweeps = sweeps.wrapping_add(1);
            if sweeps.is_multiple_of(3600) {
                let _ = self.store.delete_expired(now()).await;
            }
        }
    }

    /// The lookup counters, for export.
    pub fn counters(&self) -> SessionCounters {
        self.counters.clone()
    }

    /// Number of cached sessions (for metrics).
    pub fn cached(&self) -> u64 {
        // moka counts lazily; settle pending inserts and evictions first.
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// One of the gateway's cookies: HttpOnly, SameSite=Lax, Path=/, Secure
    /// unless configured for plain HTTP; a zero `max_age` deletes it.
    fn cookie(&self, name: &str, value: &str, max_age: i64) -> String {
        self.cookie_builder(name, value, max_age)
            .http_only(true)
            .build()
            .to_string()
    }

    /// What every cookie of the gateway's has; `HttpOnly` is the caller's.
    fn cookie_builder<'c>(
        &self,
        name: &'c str,
        value: &'c str,
        max_age: i64,
    ) -> cookie::CookieBuilder<'c> {
        cookie::Cookie::build((name, value))
            .path("/")
            .secure(self.cookie_secure)
            .same_site(cookie::SameSite::Lax)
            .max_age(cookie::time::Duration::seconds(max_age))
    }

    pub fn set_cookie(&self, value: &str) -> String {
        let max_age = self.lifetime.as_secs() as i64 + WIDGET_MEMORY;
        self.cookie(&self.cookie_name, value, max_age)
    }

    /// The name of the cookie that asks the next page with the chat widget to
    /// reset it (set when a session ends, so a shared computer forgets the
    /// last member).
    pub fn chat_reset_name(&self) -> &str {
        &self.chat_reset_name
    }

    /// The chat-reset cookie, set at logout, at a log-in after another
    /// member's, and by the first response that finds a session over. Not
    /// `HttpOnly`: it holds no secret, and the page whose widget reset
    /// clears it, so it stays until a widget really did (see `proxy::widget`).
    pub fn chat_reset_cookie(&self) -> String {
        self.cookie_builder(
            &self.chat_reset_name,
            CHAT_RESET_VALUE,
            CHAT_RESET_WAITS_FOR,
        )
        .build()
        .to_string()
    }

    /// The script statement that clears the chat-reset cookie.
    pub fn chat_reset_clearing(&self) -> &Arc<str> {
        &self.chat_reset_clearing
    }

    pub fn clear_cookie(&self) -> String {
        self.cookie(&self.cookie_name, "", 0)
    }
}

fn visitor(id_hash: [u8; 32], member: &Member, expires_at: i64, last_seen: i64) -> Visitor {
    Visitor {
        id_hash,
        member_id: member.id,
        email: member.email.clone(),
        first_name: member.first_name.clone(),
        last_name: member.last_name.clone(),
        groups: member.groups.clone(),
        expires_at,
        identity: IdentityValues::of(member),
        renewed_from: None,
        last_seen: AtomicI64::new(last_seen),
    }
}

/// A new random session id.
fn fresh_id() -> Result<[u8; 32], String> {
    let mut id = [0u8; 32];
    getrandom::fill(&mut id).map_err(|e| e.to_string())?;
    Ok(id)
}

pub fn hash_id(id: &[u8]) -> [u8; 32] {
    Sha256::digest(id).into()
}
