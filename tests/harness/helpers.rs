//! Set-up shared by the suite.

use std::future::Future;
use std::time::Duration;

/// Runs a test body with an upper bound on its time, so a hung broker fails the test
/// instead of hanging CI.
pub async fn within<T>(limit: Duration, body: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, body).await {
        Ok(out) => out,
        Err(_) => panic!("the test did not finish within {limit:?}"),
    }
}

pub const SECONDS_30: Duration = Duration::from_secs(30);
pub const MINUTES_2: Duration = Duration::from_secs(120);
pub const MINUTES_5: Duration = Duration::from_secs(300);
