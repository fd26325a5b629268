//! The optional limits on what the child may spend (issue 12, `BOTTLE_MAX_*`): the policy
//! alone, fed the time and the tokens counted so far, so every rule is unit-tested (a leaf).
//!
//! - `BOTTLE_MAX_REQUESTS_PER_MINUTE=N`: at most N requests forwarded within any 60 s (a
//!   sliding window of the times of the last N forwarded requests; a refused request does not
//!   count, so a client that keeps trying is not locked out longer).
//! - `BOTTLE_MAX_TOKENS=N`: once the replies of this run reported N input + output tokens,
//!   every further request is refused until the container restarts. Checked before each
//!   request; a reply already streaming is never cut, so the last one may go past N.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::UsageLimits;

const WINDOW: Duration = Duration::from_secs(60);

/// Why a request is refused, for the 429's message and the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Limited {
    pub(crate) message: String,
    /// Seconds until the request-rate window lets one through (none for the token limit,
    /// which does not lift).
    pub(crate) retry_after: Option<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct Quota {
    limits: UsageLimits,
    /// When the requests of the last minute were forwarded, oldest first (at most N).
    recent: VecDeque<Instant>,
}

impl Quota {
    pub(crate) fn new(limits: UsageLimits) -> Quota {
        Quota {
            limits,
            recent: VecDeque::new(),
        }
    }

    /// May a request be forwarded now, with `tokens_used()` (input + output) counted so far?
    /// When it may, it is counted in the window. `tokens_used` is asked only under a token
    /// limit (it takes the tally's lock).
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        tokens_used: impl FnOnce() -> u64,
    ) -> Result<(), Limited> {
        if let Some(max) = self.limits.tokens
            && let tokens_used = tokens_used()
            && tokens_used >= max
        {
            return Err(Limited {
                message: format!(
                    "bottle-init proxy: BOTTLE_MAX_TOKENS={max} reached ({tokens_used} input and output tokens used in this container run); no more requests are forwarded until the container restarts (or raise BOTTLE_MAX_TOKENS)"
                ),
                retry_after: None,
            });
        }
        let Some(max) = self.limits.requests_per_minute else {
            return Ok(());
        };
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() as u64 >= max {
            let oldest = self.recent.front().copied().unwrap_or(now);
            let wait = WINDOW.saturating_sub(now.saturating_duration_since(oldest));
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(Limited {
                message: format!(
                    "bottle-init proxy: BOTTLE_MAX_REQUESTS_PER_MINUTE={max} reached ({max} requests in the last minute); retry in {secs} s (or raise BOTTLE_MAX_REQUESTS_PER_MINUTE)"
                ),
                retry_after: Some(secs.max(1)),
            });
        }
        self.recent.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(rpm: Option<u64>, tokens: Option<u64>) -> Quota {
        Quota::new(UsageLimits {
            requests_per_minute: rpm,
            tokens,
        })
    }

    #[test]
    fn off_by_default() {
        let mut q = quota(None, None);
        let t = Instant::now();
        for i in 0..10_000 {
            assert_eq!(q.admit(t, || i * 1_000_000), Ok(()));
        }
        // Without a token limit the count is never asked for (it takes a lock).
        assert_eq!(q.admit(t, || unreachable!("asked")), Ok(()));
        assert!(q.recent.is_empty(), "nothing kept when off");
    }

    #[test]
    fn the_request_rate_is_a_sliding_minute() {
        let mut q = quota(Some(3), None);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(q.admit(at(0), || 0), Ok(()));
        assert_eq!(q.admit(at(10), || 0), Ok(()));
        assert_eq!(q.admit(at(20), || 0), Ok(()));
        let e = q.admit(at(30), || 0).unwrap_err();
        assert_eq!(e.retry_after, Some(30));
        assert!(
            e.message
                .contains("BOTTLE_MAX_REQUESTS_PER_MINUTE=3 reached"),
            "{}",
            e.message
        );
        // Refusals do not count: at 60 s the first request has left the window.
        assert!(q.admit(at(59), || 0).is_err());
        assert_eq!(q.admit(at(60), || 0), Ok(()));
        assert_eq!(q.admit(at(61), || 0).unwrap_err().retry_after, Some(9));
        assert_eq!(q.recent.len(), 3);
    }

    #[test]
    fn the_token_limit_holds_for_the_run() {
        let mut q = quota(Some(1000), Some(100));
        let t = Instant::now();
        assert_eq!(q.admit(t, || 0), Ok(()));
        assert_eq!(q.admit(t, || 99), Ok(()));
        let e = q.admit(t, || 100).unwrap_err();
        assert_eq!(e.retry_after, None);
        assert!(
            e.message
                .contains("BOTTLE_MAX_TOKENS=100 reached (100 input and output tokens"),
            "{}",
            e.message
        );
        assert!(q.admit(t + Duration::from_secs(3600), || 250).is_err());
    }
}
