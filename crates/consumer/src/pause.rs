//! Pauses between attempts: exponential backoff with jitter, cut short by shutdown.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// Delays from `min`, doubling with jitter, up to `max`, without end.
pub(crate) struct Pauses {
    delays: ExponentialBackoff,
    max: Duration,
}

impl Pauses {
    pub fn new(min: Duration, max: Duration) -> Self {
        let delays = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(min)
            .with_max_delay(max)
            .without_max_times()
            .build();
        Self { delays, max }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max)
    }
}

/// Sleeps for `delay`; `false` if `stop` was cancelled first.
pub(crate) async fn sleep_unless_stopped(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}
