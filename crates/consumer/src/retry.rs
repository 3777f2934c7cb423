//! How long to wait before trying again: one [`RetryPolicy`] for the runner's message
//! retries, its outage retries and its dead-letter writes.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Exponential backoff with jitter, and how many attempts a failing message gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The first pause; it doubles, with jitter, up to `max_delay`.
    pub first_delay: Duration,
    /// The longest pause, of a message or of a whole batch during an outage.
    pub max_delay: Duration,
    /// Attempts a message that keeps failing for a reason of its own gets before it is
    /// dead-lettered. Outages are retried without limit.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_attempts: 5,
        }
    }
}

impl RetryPolicy {
    /// A fresh sequence of pauses under this policy.
    pub fn pauses(&self) -> Pauses {
        let delays = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.first_delay)
            .with_max_delay(self.max_delay)
            .without_max_times()
            .build();
        Pauses {
            delays,
            max: self.max_delay,
        }
    }
}

/// Delays from the policy's first, doubling with jitter, up to its longest, without end.
pub struct Pauses {
    delays: ExponentialBackoff,
    max: Duration,
}

impl Pauses {
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max)
    }
}
