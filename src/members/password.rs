//! Password hashing: argon2id with OWASP's parameters (19 MiB, 2 passes, 1 lane).
//! Hashing is CPU-heavy and each hash holds 19 MiB, so it runs on the
//! blocking pool through [`off_thread`], a few at a time: a flood of login
//! attempts queues instead of growing memory by 19 MiB per attempt, and the
//! queue is bounded: past about a second's work it refuses at once.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Hashes running at once: enough to keep the cores busy, few enough that
/// their memory stays small.
static SLOTS: LazyLock<usize> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    cores.clamp(2, 8)
});
static HASHING: LazyLock<tokio::sync::Semaphore> =
    LazyLock::new(|| tokio::sync::Semaphore::new(*SLOTS));

/// Password work that may wait for a slot, per slot: about a second of it (a
/// hash takes 30 to 40 ms). Logins from many addresses, each within its own
/// limits, would otherwise queue without end, and a member's login would
/// wait behind minutes of them.
pub const WAITING_PER_SLOT: usize = 32;
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// Why password work was not done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotDone {
    /// The queue was full: ask again in a few seconds.
    Busy,
    /// The work panicked.
    Failed,
}

/// Runs password work on the blocking pool once a hashing slot is free, or
/// refuses it at once when too much waits already.
pub async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NotDone> {
    slot().await?.run(work).await
}

/// A hashing slot, held until its work has run: taken before something that
/// cannot be undone (spending a link), so that a full queue refuses first.
pub struct Slot {
    _permit: tokio::sync::SemaphorePermit<'static>,
}

/// Waits for a hashing slot, or refuses at once when too much waits already.
pub async fn slot() -> Result<Slot, NotDone> {
    match HASHING.try_acquire() {
        Ok(_permit) => Ok(Slot { _permit }),
        Err(_) => {
            let _waiting = Waiting::join().ok_or(NotDone::Busy)?;
            let _permit = HASHING.acquire().await.map_err(|_| NotDone::Failed)?;
            Ok(Slot { _permit })
        }
    }
}

impl Slot {
    /// Runs password work on the blocking pool, in this slot.
    pub async fn run<T: Send + 'static>(
        self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NotDone> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| NotDone::Failed)
    }
}

/// A place in the queue for a hashing slot, given back when dropped.
struct Waiting;

impl Waiting {
    fn join() -> Option<Waiting> {
        let limit = *SLOTS * WAITING_PER_SLOT;
        if WAITING.fetch_add(1, Ordering::AcqRel) >= limit {
            WAITING.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Waiting)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Shortest and longest password accepted (long ones only cost hashing time).
pub const MIN_LENGTH: usize = 10;
pub const MAX_LENGTH: usize = 512;

fn hasher() -> Argon2<'static> {
    // OWASP Password Storage Cheat Sheet: m=19456 KiB, t=2, p=1.
    let params = Params::new(19_456, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A hash of a random password, verified against when an email is unknown so
/// that "no such member" takes as long as "wrong password" (catalogue E2).
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| hash(&random_text()).unwrap_or_default());

pub fn hash(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// The outcome of checking a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Wrong,
    Right,
    /// Right, but hashed with other parameters: store a fresh hash.
    RightNeedsRehash,
}

pub fn verify(password: &str, stored: &str) -> Check {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return Check::Wrong;
    };
    if hasher()
        .verify_password(password.as_bytes(), &parsed)
        .is_err()
    {
        return Check::Wrong;
    }
    let current = hasher();
    let same_params = parsed.algorithm == Algorithm::Argon2id.ident()
        && Params::try_from(&parsed).is_ok_and(|p| {
            let want = current.params();
            p.m_cost() == want.m_cost()
                && p.t_cost() == want.t_cost()
                && p.p_cost() == want.p_cost()
        });
    if same_params {
        Check::Right
    } else {
        Check::RightNeedsRehash
    }
}

/// Spends the same work as [`verify`] on a password for an unknown account.
pub fn verify_dummy(password: &str) {
    let _ = verify(password, &DUMMY_HASH);
}

/// Whether a new password is acceptable; the message is shown to the member.
/// Only new passwords are checked: a login compares whatever was stored.
pub fn acceptable(password: &str) -> Result<(), &'static str> {
    let length = password.chars().count();
    if length < MIN_LENGTH {
        return Err("Choose a password of at least 10 characters.");
    }
    if password.len() > MAX_LENGTH {
        return Err("That password is too long.");
    }
    // A line break or tab cannot be typed into a browser's password field:
    // such a password (a piped one given twice, say) would lock its member out.
    if password
        .chars()
        .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
    {
        return Err("A password cannot contain line breaks, tabs or other control characters.");
    }
    Ok(())
}

fn random_text() -> String {
    let mut bytes = [0u8; 24];
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_detect_old_parameters() {
        let h = hash("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert_eq!(verify("correct horse battery", &h), Check::Right);
        assert_eq!(verify("correct horse batterx", &h), Check::Wrong);
        assert_eq!(verify("x", "not a hash"), Check::Wrong);
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8, 1, 1, None).unwrap(),
        );
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let old = weak
            .hash_password(b"correct horse battery", &salt)
            .unwrap()
            .to_string();
        assert_eq!(
            verify("correct horse battery", &old),
            Check::RightNeedsRehash
        );
    }

    #[test]
    fn password_rules() {
        assert!(acceptable("short").is_err());
        assert!(acceptable("long enough!").is_ok());
        assert!(acceptable(&"x".repeat(600)).is_err());
        for bad in [
            "long enough\npassword",
            "long enough\tpw",
            "long\u{0}enough!",
            "long enough\u{2028}",
            "long enough\u{2029}",
        ] {
            assert!(acceptable(bad).is_err(), "{bad:?}");
        }
        assert!(acceptable("lång énough pässword ✓").is_ok());
    }
}
