//! What waits in the outbox, read in one indexed query: shared by readiness and
//! `/metrics`.

use sqlx::PgPool;

/// The outbox's unpublished rows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// Rows waiting to be published (not parked).
    pub pending: i64,
    /// Age of the oldest of them, in seconds; `None` when none wait.
    pub oldest_pending_seconds: Option<f64>,
    /// Rows parked: Kafka refused them.
    pub parked: i64,
}

/// Reads the backlog of the outbox in `pool`.
pub async fn backlog(pool: &PgPool) -> Result<Backlog, sqlx::Error> {
    let (pending, oldest, parked) = sqlx::query_as::<_, (i64, Option<f64>, i64)>(
        "SELECT count(*) FILTER (WHERE parked_at IS NULL),
                EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE parked_at IS NULL))::float8,
                count(*) FILTER (WHERE parked_at IS NOT NULL)
         FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(Backlog {
        pending,
        oldest_pending_seconds: oldest,
        parked,
    })
}
