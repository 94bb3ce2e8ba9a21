//! Members and their groups, kept in a durable [`MemberStore`].
//!
//! The store also holds sessions and single-use tokens, so that one database
//! is the whole durable state; [`crate::session`] caches sessions in memory.

pub mod email;
pub mod password;
pub mod sqlite;

use std::future::Future;
use std::pin::Pin;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type MemberId = i64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Registered; the email address is not verified yet.
    Pending,
    /// Verified, waiting for an administrator (registration mode `approval`).
    AwaitingApproval,
    Active,
    Disabled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::AwaitingApproval => "awaiting_approval",
            Status::Active => "active",
            Status::Disabled => "disabled",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Some(match text {
            "pending" => Status::Pending,
            "awaiting_approval" => Status::AwaitingApproval,
            "active" => Status::Active,
            "disabled" => Status::Disabled,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: MemberId,
    /// Canonical form, see [`email::canonical`].
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    /// `None` for an invited member who has not chosen a password yet.
    pub password_hash: Option<String>,
    pub status: Status,
    /// Bumped by every change that must end the member's sessions.
    pub epoch: i64,
    /// Bumped by every privilege the member gains (a group): their sessions
    /// live on, each under a new id (see [`SessionRecord::grants`]).
    pub grants: i64,
    pub created_at: i64,
    pub last_login_at: Option<i64>,
    pub groups: Vec<String>,
}

impl Member {
    pub fn display_name(&self) -> String {
        let name = format!("{} {}", self.first_name, self.last_name);
        name.trim().to_owned()
    }
}

/// A display name part: at most 100 characters, no control characters.
pub fn clean_name(value: &str) -> Result<String, &'static str> {
    let value = value.trim();
    if value.chars().count() > 100 {
        return Err("Names are at most 100 characters.");
    }
    if value
        .chars()
        .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
    {
        return Err("Names cannot contain control characters.");
    }
    Ok(value.to_owned())
}

/// How long a registration that was never confirmed is kept: its link lives
/// a day, and the week after leaves time to ask for another. Until it goes,
/// its address is taken, and whoever owns the address is mailed how to
/// finish, not a new account (a stranger may have registered it). Members
/// an administrator invited are kept: they have no password until they
/// accept.
pub const UNCONFIRMED_KEPT_FOR: i64 = 7 * 86_400;

#[derive(Debug, Clone)]
pub struct NewMember {
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub password_hash: Option<String>,
    pub status: Status,
}

/// A session as stored: the id itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id_hash: [u8; 32],
    pub member_id: MemberId,
    /// The member's epoch when the session began; a different epoch ends it.
    pub epoch: i64,
    /// The member's grants when the session began; a different count means
    /// the member gained a privilege since, and the session is renewed under
    /// a new id (catalogue D1).
    pub grants: i64,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_seen_at: i64,
    /// Renewed under a new id: this one no longer logs anyone in, and is kept
    /// only until it expires, shortly after.
    pub replaced: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPurpose {
    Verify,
    Reset,
}

impl TokenPurpose {
    fn as_str(self) -> &'static str {
        match self {
            TokenPurpose::Verify => "verify",
            TokenPurpose::Reset => "reset",
        }
    }
}

/// What [`MemberStore::delete_member`] deleted with the member (their
/// groups went too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    /// Sessions that were live: not expired, nor replaced by a renewal.
    pub sessions: u64,
    /// Verification, reset and invitation links not yet used.
    pub links: u64,
}

/// A pending email change that [`MemberStore::take_email_change`] consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailChange {
    pub member_id: MemberId,
    /// Canonical form, as it was asked for.
    pub new_email: String,
    /// The member's epoch when it was asked for, and still now: the change
    /// is written at it (see [`MemberStore::set_email`]).
    pub epoch: i64,
}

/// A token that [`MemberStore::take_token`] consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub member_id: MemberId,
    /// The epoch the token was checked against: what it allows is written
    /// at this epoch (see [`MemberStore::set_password`]), since the token
    /// alone cannot stop other links taken at the same epoch.
    pub epoch: i64,
}

#[derive(Debug)]
pub enum StoreError {
    /// A member with this canonical email exists.
    Duplicate,
    NotFound,
    /// The member changed (epoch or status) since it was read.
    Stale,
    Backend(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Duplicate => f.write_str("a member with this email exists"),
            StoreError::NotFound => f.write_str("no such member"),
            StoreError::Stale => f.write_str("the member changed meanwhile"),
            StoreError::Backend(e) => write!(f, "member store: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

pub type StoreResult<T> = Result<T, StoreError>;

/// Durable members, groups, sessions and tokens. Every method that changes a
/// member records the change (see [`MemberStore::changes_since`]).
pub trait MemberStore: Send + Sync {
    /// Checks that the store answers (readiness).
    fn ping(&self) -> BoxFuture<'_, StoreResult<()>>;
    fn create_member(&self, new: NewMember, now: i64) -> BoxFuture<'_, StoreResult<Member>>;
    fn member_by_email(&self, canonical_email: &str) -> BoxFuture<'_, StoreResult<Option<Member>>>;
    fn member_by_id(&self, id: MemberId) -> BoxFuture<'_, StoreResult<Option<Member>>>;
    fn list_members(&self) -> BoxFuture<'_, StoreResult<Vec<Member>>>;
    /// Sets a new password hash and bumps the epoch, ending every session.
    /// With `epoch`, only while the member is still at it: `Stale` otherwise,
    /// so a password decided on what was read before another change (a
    /// second reset link's, taken before the first one's password was
    /// written; one that raced a disable) does not overwrite it. `None`
    /// (an administrator's) applies whatever the epoch.
    fn set_password(
        &self,
        id: MemberId,
        hash: &str,
        epoch: Option<i64>,
        now: i64,
    ) -> BoxFuture<'_, StoreResult<()>>;
    /// Replaces the hash of the same password (parameter upgrade) if the
    /// stored hash is still `old`; sessions live on. False when the password
    /// changed meanwhile: the upgrade must not bring the old password back.
    fn rehash_password(
        &self,
        id: MemberId,
        old: &str,
        new: &str,
    ) -> BoxFuture<'_, StoreResult<bool>>;
    /// Moves the member from status `from` to `to`; leaving `Active` bumps
    /// the epoch. `Stale` when the status is no longer `from`: a change made
    /// meanwhile (an administrator's disable, say) is not overwritten by one
    /// decided on what was read before it.
    fn set_status(
        &self,
        id: MemberId,
        from: Status,
        to: Status,
        now: i64,
    ) -> BoxFuture<'_, StoreResult<()>>;
    /// Lifts a disable: the member goes back to the status the disable
    /// found (active for one disabled before that was recorded). `Stale`
    /// when the member is not disabled.
    fn enable(&self, id: MemberId, now: i64) -> BoxFuture<'_, StoreResult<()>>;
    fn set_name(
        &self,
        id: MemberId,
        first: &str,
        last: &str,
        now: i64,
    ) -> BoxFuture<'_, StoreResult<()>>;
    fn record_login(&self, id: MemberId, now: i64) -> BoxFuture<'_, StoreResult<()>>;
    /// Adds a group and, if the member was not in it, bumps their grants:
    /// access grows, sessions are renewed under new ids.
    fn add_to_group(&self, id: MemberId, group: &str, now: i64) -> BoxFuture<'_, StoreResult<()>>;
    /// Removes a group and bumps the epoch: access shrinks, sessions end.
    fn remove_from_group(
        &self,
        id: MemberId,
        group: &str,
        now: i64,
    ) -> BoxFuture<'_, StoreResult<()>>;
    /// Group names with their member counts.
    fn list_groups(&self) -> BoxFuture<'_, StoreResult<Vec<(String, i64)>>>;

    fn create_session(&self, session: SessionRecord) -> BoxFuture<'_, StoreResult<()>>;
    fn session(&self, id_hash: [u8; 32]) -> BoxFuture<'_, StoreResult<Option<SessionRecord>>>;
    fn touch_session(&self, id_hash: [u8; 32], now: i64) -> BoxFuture<'_, StoreResult<()>>;
    fn delete_session(&self, id_hash: [u8; 32]) -> BoxFuture<'_, StoreResult<()>>;
    /// Ends one session at the member's request (log out): deletes it and
    /// records a member change, so that every process drops it from memory.
    fn end_session(
        &self,
        id_hash: [u8; 32],
        member: MemberId,
        now: i64,
    ) -> BoxFuture<'_, StoreResult<()>>;
    /// Renews a session: marks `old` replaced (expiring by `old_expires_by`)
    /// and creates `new`, in one transaction. `false` when `old` was already
    /// replaced or is gone (another request renewed it first).
    fn replace_session(
        &self,
        old: [u8; 32],
        new: SessionRecord,
        old_expires_by: i64,
    ) -> BoxFuture<'_, StoreResult<bool>>;
    /// Ends every session of a member; returns how many there were.
    fn delete_member_sessions(&self, id: MemberId, now: i64) -> BoxFuture<'_, StoreResult<u64>>;
    /// Deletes expired sessions and tokens, old change records, and
    /// registrations never confirmed ([`UNCONFIRMED_KEPT_FOR`] after they
    /// were made, once no link of theirs is live); returns how many sessions
    /// went.
    fn delete_expired(&self, now: i64) -> BoxFuture<'_, StoreResult<u64>>;

    fn create_token(
        &self,
        purpose: TokenPurpose,
        token_hash: [u8; 32],
        member_id: MemberId,
        epoch: i64,
        expires_at: i64,
    ) -> BoxFuture<'_, StoreResult<()>>;
    /// Consumes a token: returns its member if it exists, has not expired and
    /// was issued at the member's current epoch. A token works once.
    fn take_token(
        &self,
        purpose: TokenPurpose,
        token_hash: [u8; 32],
        now: i64,
    ) -> BoxFuture<'_, StoreResult<Option<Taken>>>;

    /// Members changed after change number `after`, and the newest change number.
    fn changes_since(&self, after: i64) -> BoxFuture<'_, StoreResult<(Vec<MemberId>, i64)>>;

    /// Deletes a member with their groups, sessions and links, and records
    /// the change, so that every process drops their cached sessions. Ids
    /// are never given again: a new member at the same address is someone
    /// else to every cache. With `epoch`, only while the member is still
    /// at it (`Stale` otherwise), so a deletion decided on a password
    /// checked before a reset or a disable does not go through; `None` (an
    /// administrator's) deletes whatever the epoch.
    fn delete_member(
        &self,
        id: MemberId,
        epoch: Option<i64>,
        now: i64,
    ) -> BoxFuture<'_, StoreResult<Deleted>>;

    /// Stores a member's request to change their email to `new_email`
    /// (canonical), waiting for the link whose secret hashes to
    /// `token_hash`. A member may have several; the first one confirmed
    /// bumps the epoch, and the others die with it.
    fn create_email_change(
        &self,
        token_hash: [u8; 32],
        member_id: MemberId,
        new_email: &str,
        epoch: i64,
        expires_at: i64,
    ) -> BoxFuture<'_, StoreResult<()>>;
    /// Consumes a pending email change, as [`MemberStore::take_token`] does
    /// a token: once, before it expires, at the member's current epoch.
    fn take_email_change(
        &self,
        token_hash: [u8; 32],
        now: i64,
    ) -> BoxFuture<'_, StoreResult<Option<EmailChange>>>;
    /// Sets a new canonical email and bumps the epoch: every session ends,
    /// and links mailed before (to the old address) die. `Duplicate` when
    /// another member has the address: the unique column decides, so two
    /// changes (or a change and a registration) racing for one address
    /// leave it to one member. With `epoch`, only while the member is still
    /// at it (`Stale` otherwise), as in [`MemberStore::set_password`].
    fn set_email(
        &self,
        id: MemberId,
        canonical_email: &str,
        epoch: Option<i64>,
        now: i64,
    ) -> BoxFuture<'_, StoreResult<()>>;
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
