//! PostgreSQL access. SQL only through bound parameters.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use events::{OrderCreated, TraceContext};
use outbox::Outbox;
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{NewOrder, Order, OrderStatus};

/// The order in one statement: the key claimed (if any), and only if it was, the order
/// and its outbox row (the outbox crate's insert, bound from an [`outbox::Row`]).
static CREATE_ORDER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH claim AS (
             INSERT INTO idempotency_keys (key, fingerprint, order_id)
             SELECT $1, $2, $3 WHERE $1::text IS NOT NULL
             ON CONFLICT (key) DO NOTHING
             RETURNING key),
         allowed AS (SELECT 1 WHERE $1::text IS NULL OR EXISTS (SELECT 1 FROM claim)),
         created AS (
             INSERT INTO orders (id, amount, currency, status)
             SELECT $3, $4, $5, $6 FROM allowed
             RETURNING id, amount, currency, status, created_at),
         queued AS ({} SELECT $7, $8, $9, $10 FROM created)
         SELECT id, amount, currency, status, created_at FROM created",
        outbox::INSERT_ONE
    )
});

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("this Idempotency-Key was already used with a different request")]
    KeyReused,
    #[error("stored order {id} is not valid: {reason}")]
    Corrupt { id: Uuid, reason: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The result of [`create_order`].
#[derive(Debug)]
pub enum Created {
    /// A new order, stored with its event.
    New(Order),
    /// The order first created with this idempotency key; nothing new was written.
    Replayed(Order),
}

/// Stores a new `PENDING` order and its `order.created` event (carrying `trace` in its
/// headers) in **one statement**, so one round trip and atomic on its own: the key, if
/// any, is claimed, and only if it was, the order and its outbox row are written.
///
/// With an idempotency key, a repeat of the same request returns the original order and
/// writes nothing; the same key with a different request is [`StoreError::KeyReused`]. A
/// concurrent request with the same key waits for the first to commit, then replays it.
pub async fn create_order(
    pool: &PgPool,
    outbox: &Outbox,
    new: &NewOrder,
    idempotency_key: Option<&str>,
    trace: Option<&TraceContext>,
) -> Result<Created, StoreError> {
    let id = Uuid::now_v7();
    let event = OrderCreated::event(id, new.amount, new.currency);
    let queued = outbox
        .row(&event, trace)
        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    // The outbox row is written by this statement rather than by `Outbox::commit`, whose
    // statement of its own would cost a second round trip.
    let row: Option<OrderRow> = sqlx::query_as(CREATE_ORDER.as_str())
        .bind(idempotency_key)
        .bind(new.fingerprint())
        .bind(id)
        .bind(new.amount.value())
        .bind(new.currency.code())
        .bind(OrderStatus::Pending.as_str())
        .bind(&queued.topic)
        .bind(&queued.key)
        .bind(&queued.payload)
        .bind(&queued.headers)
        .fetch_optional(pool)
        .await?;
    if let Some(row) = row {
        return Ok(Created::New(Order::try_from(row)?));
    }

    // The key was claimed before (or by a concurrent request, now committed).
    let key = idempotency_key.unwrap_or_default();
    let (fingerprint, order_id): (String, Uuid) =
        sqlx::query_as("SELECT fingerprint, order_id FROM idempotency_keys WHERE key = $1")
            .bind(key)
            .fetch_one(pool)
            .await?;
    if fingerprint != new.fingerprint() {
        return Err(StoreError::KeyReused);
    }
    let original = get_order(pool, order_id)
        .await?
        .ok_or(StoreError::Corrupt {
            id: order_id,
            reason: "its idempotency key outlived it".into(),
        })?;
    Ok(Created::Replayed(original))
}

/// Removes the idempotency keys older than `retention`, in batches; returns how many.
/// Their orders stay.
pub async fn remove_expired_keys(pool: &PgPool, retention: Duration) -> sqlx::Result<u64> {
    outbox::cleanup::delete_in_batches(
        pool,
        "DELETE FROM idempotency_keys WHERE key IN (
             SELECT key FROM idempotency_keys
             WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)",
        retention,
    )
    .await
}

pub async fn get_order(pool: &PgPool, id: Uuid) -> Result<Option<Order>, StoreError> {
    let row: Option<OrderRow> =
        sqlx::query_as("SELECT id, amount, currency, status, created_at FROM orders WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    row.map(Order::try_from).transpose()
}

/// Newest first; `before` continues a listing after the last order of the previous page.
pub async fn list_orders(
    pool: &PgPool,
    limit: u32,
    before: Option<Uuid>,
) -> Result<Vec<Order>, StoreError> {
    let rows: Vec<OrderRow> = sqlx::query_as(
        "SELECT id, amount, currency, status, created_at FROM orders
         WHERE ($1::uuid IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
    )
    .bind(before)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Order::try_from).collect()
}

/// Orders `PENDING` for longer than `older_than`, oldest first, at most `limit`.
pub async fn pending_older_than(
    pool: &PgPool,
    older_than: std::time::Duration,
    limit: u32,
) -> Result<Vec<Order>, StoreError> {
    let rows: Vec<OrderRow> = sqlx::query_as(
        "SELECT id, amount, currency, status, created_at FROM orders
         WHERE status = 'PENDING' AND created_at < now() - make_interval(secs => $1)
         ORDER BY created_at LIMIT $2",
    )
    .bind(older_than.as_secs_f64())
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Order::try_from).collect()
}

/// How long the oldest `PENDING` order has waited, in seconds; `None` when none waits.
pub async fn oldest_pending_age(pool: &PgPool) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM now() - min(created_at))::float8 FROM orders
         WHERE status = 'PENDING'",
    )
    .fetch_one(pool)
    .await
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    amount: Decimal,
    currency: String,
    status: String,
    created_at: DateTime<Utc>,
}

impl TryFrom<OrderRow> for Order {
    type Error = StoreError;

    fn try_from(row: OrderRow) -> Result<Self, Self::Error> {
        let corrupt = |reason: String| StoreError::Corrupt { id: row.id, reason };
        Ok(Order {
            id: row.id,
            amount: events::Amount::new(row.amount).map_err(|e| corrupt(e.to_string()))?,
            currency: row
                .currency
                .parse()
                .map_err(|e: events::CurrencyError| corrupt(e.to_string()))?,
            status: OrderStatus::parse(&row.status)
                .ok_or_else(|| corrupt(format!("unknown status {}", row.status)))?,
            created_at: row.created_at,
        })
    }
}
