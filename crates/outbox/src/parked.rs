//! Parked outbox rows: events Kafka refused for good. They are listed, and re-queued once
//! the cause is fixed; later events of their keys wait behind them until then. Also the
//! rows of given keys, whatever became of them ([`rows_of`]), for tracing a stuck order.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// A parked row, for people.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ParkedRow {
    pub id: i64,
    pub topic: String,
    pub message_key: String,
    /// Size of the event, in bytes.
    pub size: i32,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub parked_at: DateTime<Utc>,
}

/// How many rows are parked.
pub async fn count(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL AND published_at IS NULL",
    )
    .fetch_one(pool)
    .await
}

/// The parked rows, oldest first.
pub async fn list(pool: &PgPool) -> sqlx::Result<Vec<ParkedRow>> {
    sqlx::query_as(
        "SELECT id, topic, message_key, length(payload) AS size, attempts, last_error,
                created_at, parked_at
         FROM outbox WHERE parked_at IS NOT NULL AND published_at IS NULL ORDER BY id",
    )
    .fetch_all(pool)
    .await
}

/// Puts parked rows back in line (all of them when `ids` is `None`), with their attempts
/// reset; the relay publishes them in their original order. Returns how many.
pub async fn requeue(pool: &PgPool, ids: Option<&[i64]>) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "UPDATE outbox SET parked_at = NULL, attempts = 0
         WHERE parked_at IS NOT NULL AND published_at IS NULL
           AND ($1::bigint[] IS NULL OR id = ANY($1))",
    )
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// An outbox row of some key, whatever became of it, for people.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyRow {
    pub id: i64,
    pub topic: String,
    pub message_key: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    pub parked_at: Option<DateTime<Utc>>,
}

/// The rows of `keys` still in the outbox (published rows are removed after the
/// retention), oldest first.
pub async fn rows_of(pool: &PgPool, keys: &[String]) -> sqlx::Result<Vec<KeyRow>> {
    sqlx::query_as(
        "SELECT id, topic, message_key, attempts, last_error, created_at, published_at, parked_at
         FROM outbox WHERE message_key = ANY($1) ORDER BY id",
    )
    .bind(keys)
    .fetch_all(pool)
    .await
}
