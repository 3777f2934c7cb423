//! Waking relays after a commit, without a notification inside the business transaction.
//!
//! A transaction that calls `pg_notify` takes PostgreSQL's global notification lock at
//! commit and holds it through the WAL flush, so such commits are serialised. Instead,
//! a service calls [`Wake::wake`] after committing rows to the outbox: its own relay
//! wakes at once, in-process, and one `NOTIFY outbox` is sent for the relays of other
//! instances from a transaction of its own that writes nothing (so it flushes no WAL).
//! Wakes that come while a notification is being sent, or within `NOTIFY_GAP` (5 ms) of the
//! last one, are folded into the next one.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Bound on sending one notification.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(2);

/// Least time between two notifications: wakes meanwhile are folded into the next one, so
/// a busy instance sends at most 200 a second (the other relays poll as well).
const NOTIFY_GAP: Duration = Duration::from_millis(5);

/// Cheap to clone; every clone wakes the same relay and notifier.
#[derive(Clone, Default)]
pub struct Wake {
    /// The relay of this process.
    pub(crate) relay: Arc<Notify>,
    /// The task that tells the other instances.
    others: Arc<Notify>,
}

impl Wake {
    /// Rows were committed to the outbox: publish them now.
    pub fn wake(&self) {
        self.relay.notify_one();
        self.others.notify_one();
    }

    /// Sends `NOTIFY outbox` after each wake (several wakes in a row, one notification)
    /// until `stop`.
    pub async fn notify_others(self, pool: PgPool, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.others.notified() => {}
            }
            let notify = sqlx::query("SELECT pg_notify('outbox', '')").execute(&pool);
            match tokio::time::timeout(NOTIFY_TIMEOUT, notify).await {
                Ok(Ok(_)) => {}
                // The other relays poll as well: a lost notification delays, never loses.
                Ok(Err(e)) => tracing::debug!(error = %e, "NOTIFY outbox failed"),
                Err(_) => tracing::debug!("NOTIFY outbox timed out"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(NOTIFY_GAP) => {}
            }
        }
    }
}
