//! Backing off from a HubSpot account that is down, limiting us or refusing
//! our access token.
//!
//! Without it, every page view of a member without a cached token calls
//! HubSpot again during an outage, and waits up to `mint_timeout` for an
//! answer that will not come: pages slow down for as long as the outage lasts,
//! and a 429 is answered with more calls. After a call fails, calls to that
//! account pause, 1 s after the first failure and twice as long after each
//! further one, up to 5 minutes, or for as long as a `Retry-After` asks (up to
//! an hour). While paused, pages go out at once without identification. When a
//! pause ends, one call at a time tries again; the first that gets an answer
//! ends the back-off.
//!
//! Calls that were already running when a pause began report against an older
//! generation and are ignored, so one outage seen by many members' mints at
//! once counts as one failure, not as many doublings of the pause.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const FIRST_PAUSE: Duration = Duration::from_secs(1);
const LONGEST_PAUSE: Duration = Duration::from_secs(300);
const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// More accounts than any configuration names: the map is cleared past this,
/// so accounts retired by reloads do not pile up.
const MOST_ACCOUNTS: usize = 1024;

/// Which HubSpot account a call goes to: a digest of the site, the API base,
/// the portal and the access token, so that a reload that changes any of
/// them starts afresh.
pub type Account = u64;

#[derive(Default)]
pub struct Backoff {
    accounts: Mutex<HashMap<Account, State>>,
}

#[derive(Default)]
struct State {
    /// Bumped by every failure that counts and by every success.
    generation: u64,
    /// Failures in a row (0: healthy).
    failures: u32,
    resume_at: Option<Instant>,
    /// A call is out after a pause; others wait for its answer.
    probing: bool,
}

/// Leave to call HubSpot once, to be handed back with the call's outcome.
#[derive(Debug)]
pub struct Ticket {
    account: Account,
    generation: u64,
}

impl Backoff {
    /// Whether calls to `account` are paused at `now`. Read-only, for the page
    /// to skip the mint without starting it.
    pub fn paused(&self, account: Account, now: Instant) -> bool {
        let Ok(accounts) = self.accounts.lock() else {
            return false;
        };
        accounts
            .get(&account)
            .is_some_and(|s| s.failures > 0 && (s.probing || s.resume_at.is_some_and(|t| now < t)))
    }

    /// Leave to call `account` now, or `None` while it is paused or another
    /// call is already trying it again after a pause.
    pub fn ticket(&self, account: Account, now: Instant) -> Option<Ticket> {
        let mut accounts = self.accounts.lock().ok()?;
        if accounts.len() >= MOST_ACCOUNTS && !accounts.contains_key(&account) {
            accounts.clear();
        }
        let state = accounts.entry(account).or_default();
        if state.failures > 0 {
            if state.probing || state.resume_at.is_some_and(|t| now < t) {
                return None;
            }
            state.probing = true;
        }
        Some(Ticket {
            account,
            generation: state.generation,
        })
    }

    /// HubSpot answered (with a token, or by refusing this one visitor): it is up.
    pub fn answered(&self, ticket: Ticket) {
        if let Ok(mut accounts) = self.accounts.lock()
            && let Some(state) = accounts.get_mut(&ticket.account)
            && state.failures > 0
        {
            *state = State {
                generation: state.generation + 1,
                ..State::default()
            };
        }
    }

    /// The call failed as an outage fails. Returns the pause it starts, or
    /// `None` when a later outcome has already been counted.
    pub fn failed(
        &self,
        ticket: Ticket,
        now: Instant,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        let mut accounts = self.accounts.lock().ok()?;
        let state = accounts.get_mut(&ticket.account)?;
        if state.generation != ticket.generation {
            return None;
        }
        let doubling = FIRST_PAUSE.saturating_mul(1 << state.failures.min(16));
        let pause = doubling
            .min(LONGEST_PAUSE)
            .max(retry_after.unwrap_or_default().min(LONGEST_RETRY_AFTER));
        state.generation += 1;
        state.failures += 1;
        state.resume_at = Some(now + pause);
        state.probing = false;
        Some(pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Account = 7;

    #[test]
    fn a_failure_pauses_and_one_call_tries_again_after_the_pause() {
        let backoff = Backoff::default();
        let t0 = Instant::now();
        let first = backoff.ticket(A, t0).unwrap();
        let second = backoff.ticket(A, t0).unwrap();
        assert_eq!(
            backoff.failed(first, t0, None),
            Some(Duration::from_secs(1))
        );
        // A call that started before the pause does not double it.
        assert_eq!(backoff.failed(second, t0, None), None);
        assert!(backoff.paused(A, t0));
        assert!(backoff.ticket(A, t0 + Duration::from_millis(999)).is_none());
        // After the pause: one call, and the others wait for its answer.
        let later = t0 + Duration::from_secs(1);
        let probe = backoff.ticket(A, later).unwrap();
        assert!(backoff.ticket(A, later).is_none());
        assert!(backoff.paused(A, later));
        assert_eq!(
            backoff.failed(probe, later, None),
            Some(Duration::from_secs(2))
        );
        let later = later + Duration::from_secs(2);
        let probe = backoff.ticket(A, later).unwrap();
        backoff.answered(probe);
        assert!(!backoff.paused(A, later));
        assert!(backoff.ticket(A, later).is_some());
        assert!(backoff.ticket(A, later).is_some());
    }

    #[test]
    fn pauses_double_up_to_five_minutes_and_follow_retry_after() {
        let backoff = Backoff::default();
        let mut now = Instant::now();
        let mut pauses = Vec::new();
        for _ in 0..12 {
            let ticket = backoff.ticket(A, now).unwrap();
            let pause = backoff.failed(ticket, now, None).unwrap();
            pauses.push(pause.as_secs());
            now += pause;
        }
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        let ticket = backoff.ticket(A, now).unwrap();
        let asked = Some(Duration::from_secs(900));
        assert_eq!(
            backoff.failed(ticket, now, asked),
            Some(Duration::from_secs(900))
        );
        now += Duration::from_secs(900);
        let ticket = backoff.ticket(A, now).unwrap();
        let absurd = Some(Duration::from_secs(86_400 * 365));
        assert_eq!(
            backoff.failed(ticket, now, absurd),
            Some(Duration::from_secs(3600))
        );
    }

    #[test]
    fn accounts_back_off_separately() {
        let backoff = Backoff::default();
        let now = Instant::now();
        let ticket = backoff.ticket(A, now).unwrap();
        backoff.failed(ticket, now, None);
        assert!(backoff.paused(A, now));
        assert!(!backoff.paused(A + 1, now));
        assert!(backoff.ticket(A + 1, now).is_some());
    }
}
