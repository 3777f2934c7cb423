//! The test kit's own Tokio runtime.
//!
//! Each `#[tokio::test]` has a runtime of its own that ends with the test. A container, a
//! Docker API client or an admin pool created on it would break for the next test, so all
//! of that lives here instead, on a small runtime that lasts as long as the process.

use std::future::Future;
use std::sync::LazyLock;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("testkit")
        .enable_all()
        .build()
        .expect("the test kit could not start its Tokio runtime")
});

/// Runs `fut` on the test kit's runtime and waits for it from any runtime (or none).
pub async fn on_testkit<F>(fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match RUNTIME.spawn(fut).await {
        Ok(out) => out,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => panic!("test kit task was cancelled: {err}"),
    }
}

/// Starts `fut` on the test kit's runtime without waiting for it (used from `Drop`).
pub fn spawn_detached<F>(fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    RUNTIME.spawn(fut);
}
