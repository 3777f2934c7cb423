//! Housekeeping: published outbox rows and old inbox records are removed in small
//! batches, so neither table grows forever; a service's own tables (order-service's
//! idempotency keys) are cleaned at the same rounds ([`Cleanup`]).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How long rows are kept.
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionSettings {
    /// Published outbox rows are removed after this many hours.
    #[arg(long, env = "OUTBOX_RETENTION_HOURS", default_value_t = 24)]
    pub outbox_retention_hours: u64,

    /// Records of processed events are removed after this many hours. Keep it longer than
    /// the topics' retention (7 days by default), so that a replay of anything still in
    /// a topic is recognised.
    #[arg(long, env = "INBOX_RETENTION_HOURS", default_value_t = 336)]
    pub inbox_retention_hours: u64,

    /// How often the clean-up runs, in seconds.
    #[arg(long, env = "CLEANUP_INTERVAL_SECS", default_value_t = 300)]
    pub cleanup_interval_secs: u64,
}

/// Rows removed per statement: small, so that no statement holds locks for long.
pub const CLEANUP_BATCH: i64 = 1000;

/// What one clean-up removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub outbox: u64,
    pub inbox: u64,
}

/// Removes published outbox rows older than `outbox` and inbox records older than
/// `inbox`, [`CLEANUP_BATCH`] rows at a time until none is left. Pending and parked rows
/// are never touched.
pub async fn clean(pool: &PgPool, outbox: Duration, inbox: Duration) -> sqlx::Result<Removed> {
    Ok(Removed {
        outbox: delete_in_batches(
            pool,
            "DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox
                 WHERE published_at < now() - make_interval(secs => $1) LIMIT $2)",
            outbox,
        )
        .await?,
        inbox: delete_in_batches(
            pool,
            "DELETE FROM processed_events WHERE (consumer, event_id) IN (
                 SELECT consumer, event_id FROM processed_events
                 WHERE processed_at < now() - make_interval(secs => $1) LIMIT $2)",
            inbox,
        )
        .await?,
    })
}

/// Runs `delete` — a statement removing at most `$2` rows older than `$1` seconds — with
/// `older_than` and [`CLEANUP_BATCH`] until it removes fewer than a batch; returns how
/// many rows it removed in all. Small batches, so that no statement holds locks for long.
pub async fn delete_in_batches(
    pool: &PgPool,
    delete: &'static str,
    older_than: Duration,
) -> sqlx::Result<u64> {
    let mut removed = 0;
    loop {
        let n = sqlx::query(delete)
            .bind(older_than.as_secs_f64())
            .bind(CLEANUP_BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        removed += n;
        if n < CLEANUP_BATCH as u64 {
            return Ok(removed);
        }
    }
}

/// A service's own clean-up, run at each round after the outbox's: it removes what it
/// no longer needs, in batches, and says how many rows it removed.
#[derive(Clone)]
pub struct Cleanup {
    /// What it removes, for the log line.
    pub what: &'static str,
    pub run: Arc<dyn Fn(PgPool) -> BoxFuture<'static, sqlx::Result<u64>> + Send + Sync>,
}

impl RetentionSettings {
    /// Cleans every `cleanup_interval_secs` until `stop`, the outbox and inbox first,
    /// then each of `also`; failures are logged and tried again at the next round.
    pub async fn run(self, pool: PgPool, stop: CancellationToken, also: Vec<Cleanup>) {
        let outbox = Duration::from_secs(self.outbox_retention_hours * 3600);
        let inbox = Duration::from_secs(self.inbox_retention_hours * 3600);
        let mut rounds =
            tokio::time::interval(Duration::from_secs(self.cleanup_interval_secs.max(1)));
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = rounds.tick() => match clean(&pool, outbox, inbox).await {
                    Ok(removed) if removed != Removed::default() => {
                        tracing::info!(outbox = removed.outbox, inbox = removed.inbox, "old rows removed");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "clean-up failed; will try again"),
                },
            }
            for cleanup in &also {
                match (cleanup.run)(pool.clone()).await {
                    Ok(0) => {}
                    Ok(removed) => tracing::info!(removed, what = cleanup.what, "old rows removed"),
                    Err(e) => {
                        tracing::warn!(error = %e, what = cleanup.what, "clean-up failed; will try again")
                    }
                }
            }
        }
    }
}
