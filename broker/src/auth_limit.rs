//! Failed authentications, limited per client address: an address that fails more than
//! `max_auth_failures_per_s` times within one second has its next connections refused before
//! their `Hello` is read (`Rejected{RateLimited}` naming the limit, retry when the second is
//! over) — guessing tokens costs a second per handful of guesses. Failures are logged at most
//! once a second, with the count of those the line stands for.
//!
//! Time is passed in: the broker passes its clock's ([`crate::clock`]), so tests pause the
//! window and advance past it.
//!
//! Bounded: at most [`TRACKED`] addresses are remembered; past it, addresses whose second is
//! over are forgotten first, then the oldest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::keys::AuthError;
use crate::refusal_log::RefusalLog;

/// Most addresses tracked at once.
const TRACKED: usize = 4096;
/// The window failures are counted over.
const WINDOW: Duration = Duration::from_secs(1);

/// Failures of one address in its current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    since: Instant,
    failures: u32,
}

/// Counts failed authentications per address and says when an address must wait.
#[derive(Debug)]
pub struct AuthFailures {
    per_second: u32,
    windows: Mutex<HashMap<IpAddr, Window>>,
    log: RefusalLog<()>,
}

impl AuthFailures {
    /// At most `per_second` failures per address per second.
    pub fn new(per_second: u32) -> AuthFailures {
        AuthFailures {
            per_second,
            windows: Mutex::new(HashMap::new()),
            log: RefusalLog::new(WINDOW, 1),
        }
    }

    /// The most failures one address may make per second.
    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    /// Notes a failed authentication from `ip` at `now`, logging it unless a line was written
    /// less than a second ago (that line's successor reports how many were suppressed).
    pub fn failed_at(&self, ip: IpAddr, why: &AuthError, now: Instant) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let window = windows.entry(ip).or_insert(Window {
            since: now,
            failures: 0,
        });
        if now.saturating_duration_since(window.since) >= WINDOW {
            *window = Window {
                since: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
        if windows.len() > TRACKED {
            forget_one(&mut windows, now);
        }
        drop(windows);
        if let Some(suppressed) = self.log.note((), now) {
            tracing::warn!(peer = %ip, error = %why, suppressed, "authentication failed");
        }
    }

    /// `Err(wait)` when `ip` has used up its failures for the current second: refuse its
    /// connection and tell it to come back after `wait`.
    pub fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        match windows.get(&ip) {
            Some(w) if w.failures >= self.per_second => {
                let left = WINDOW.saturating_sub(now.saturating_duration_since(w.since));
                if left.is_zero() {
                    Ok(())
                } else {
                    Err(left)
                }
            }
            _ => Ok(()),
        }
    }
}

/// Makes room for one more address: forgets every address whose window is over, or else the
/// one whose window is oldest.
fn forget_one(windows: &mut HashMap<IpAddr, Window>, now: Instant) {
    windows.retain(|_, w| now.saturating_duration_since(w.since) < WINDOW);
    if windows.len() > TRACKED {
        if let Some(oldest) = windows
            .iter()
            .min_by_key(|(_, w)| w.since)
            .map(|(ip, _)| *ip)
        {
            windows.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_over_its_failures_waits_out_the_second_and_others_do_not() {
        let limit = AuthFailures::new(3);
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limit.check_at(a, t0), Ok(()));
            limit.failed_at(a, &AuthError::BadToken, t0);
        }
        let ms = Duration::from_millis;
        assert_eq!(limit.check_at(a, t0 + ms(400)), Err(ms(600)));
        assert_eq!(
            limit.check_at(b, t0),
            Ok(()),
            "another address is not affected"
        );
        assert_eq!(limit.check_at(a, t0 + ms(1_000)), Ok(()), "a new second");
        limit.failed_at(a, &AuthError::BadToken, t0 + ms(1_000));
        assert_eq!(
            limit.check_at(a, t0 + ms(1_001)),
            Ok(()),
            "counting starts over"
        );
    }

    #[test]
    fn tracked_addresses_are_bounded() {
        let limit = AuthFailures::new(1);
        let t0 = Instant::now();
        for i in 0..(TRACKED as u32 + 100) {
            let ip: IpAddr = std::net::Ipv4Addr::from(i).into();
            limit.failed_at(ip, &AuthError::BadToken, t0);
        }
        assert!(limit.windows.lock().unwrap().len() <= TRACKED);
    }
}
