//! PostgreSQL access: payments, typed at the edge. SQL only through bound parameters.
//!
//! **What is new is decided here, in [`store_new`], and only here**: a batch's payments
//! are stored in one transaction where
//! 1. the inbox drops events applied before (a redelivery or a replay), and
//! 2. `INSERT … ON CONFLICT (order_id) DO NOTHING` keeps an order that already has a
//!    payment as it is — the unique order id guards the money, whatever the event.
//!
//! Only the payments actually inserted get an outgoing event. [`paid_orders`] is not a
//! decision but a saving: it lets the consumer skip asking a remote gateway again about
//! orders already paid.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use events::Amount;
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{NewPayment, Payment, PaymentStatus};

/// The name the `order.created` consumer records the events it applied under, in the
/// inbox.
pub const INBOX_NAME: &str = "payment-service.order-created";

/// What [`store_new`] wrote.
#[derive(Debug, Default)]
pub struct Stored {
    /// The payments inserted.
    pub payments: Vec<Payment>,
    /// The events settled for the first time; the others of `applied` were duplicates.
    pub fresh: HashSet<Uuid>,
}

/// Stores what is new of `charged` (see the module's documentation) in the caller's
/// transaction. `applied` are the ids of every event settled in this batch, charged now
/// or paid before.
pub async fn store_new(
    tx: &mut PgConnection,
    applied: &[Uuid],
    charged: &[NewPayment<'_>],
) -> sqlx::Result<Stored> {
    let fresh = outbox::inbox::record_new(tx, INBOX_NAME, applied).await?;
    let new: Vec<&NewPayment> = charged
        .iter()
        .filter(|p| fresh.contains(&p.event.event_id))
        .collect();
    let column = |f: fn(&NewPayment) -> Option<String>| -> Vec<Option<String>> {
        new.iter().map(|p| f(p)).collect()
    };
    let ids: Vec<Uuid> = new.iter().map(|_| Uuid::now_v7()).collect();
    let order_ids: Vec<Uuid> = new.iter().map(|p| p.event.payload.order_id).collect();
    let amounts: Vec<Decimal> = new.iter().map(|p| p.event.payload.amount.value()).collect();
    let currencies = column(|p| Some(p.event.payload.currency.code().to_owned()));
    let statuses = column(|p| Some(p.charge.status().as_str().to_owned()));
    let references = column(|p| p.charge.reference().map(str::to_owned));
    let reasons = column(|p| p.charge.decline_reason().map(str::to_owned));
    let rows: Vec<PaymentRow> = sqlx::query_as(
        "INSERT INTO payments (id, order_id, amount, currency, status, gateway_reference, decline_reason)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::numeric[], $4::text[], $5::text[], $6::text[], $7::text[])
         ON CONFLICT (order_id) DO NOTHING
         RETURNING id, order_id, amount, currency, status, decline_reason, created_at",
    )
    .bind(&ids)
    .bind(&order_ids)
    .bind(&amounts)
    .bind(&currencies)
    .bind(&statuses)
    .bind(&references)
    .bind(&reasons)
    .fetch_all(&mut *tx)
    .await?;
    let payments = rows
        .into_iter()
        .map(Payment::try_from)
        .collect::<Result<Vec<_>, _>>()?;

    Ok(Stored { payments, fresh })
}

/// Of `order_ids`, those that already have a payment.
pub async fn paid_orders(pool: &PgPool, order_ids: &[Uuid]) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar("SELECT order_id FROM payments WHERE order_id = ANY($1)")
        .bind(order_ids)
        .fetch_all(pool)
        .await
}

/// The payment of one order.
pub async fn payment_of(pool: &PgPool, order_id: Uuid) -> sqlx::Result<Option<Payment>> {
    let row: Option<PaymentRow> = sqlx::query_as(
        "SELECT id, order_id, amount, currency, status, decline_reason, created_at
         FROM payments WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    row.map(Payment::try_from).transpose()
}

/// Newest first; `before` continues a listing after the last payment of the previous page.
pub async fn list_payments(
    pool: &PgPool,
    limit: u32,
    before: Option<Uuid>,
) -> sqlx::Result<Vec<Payment>> {
    let rows: Vec<PaymentRow> = sqlx::query_as(
        "SELECT id, order_id, amount, currency, status, decline_reason, created_at FROM payments
         WHERE ($1::uuid IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
    )
    .bind(before)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Payment::try_from).collect()
}

#[derive(sqlx::FromRow)]
struct PaymentRow {
    id: Uuid,
    order_id: Uuid,
    amount: Decimal,
    currency: String,
    status: String,
    decline_reason: Option<String>,
    created_at: DateTime<Utc>,
}

/// A stored row that is not a valid payment.
#[derive(Debug, thiserror::Error)]
#[error("stored payment {id} is not valid: {reason}")]
struct Corrupt {
    id: Uuid,
    reason: String,
}

impl TryFrom<PaymentRow> for Payment {
    type Error = sqlx::Error;

    fn try_from(row: PaymentRow) -> Result<Self, Self::Error> {
        let corrupt =
            |reason: String| sqlx::Error::Decode(Box::new(Corrupt { id: row.id, reason }));
        Ok(Payment {
            id: row.id,
            order_id: row.order_id,
            amount: Amount::new(row.amount).map_err(|e| corrupt(e.to_string()))?,
            currency: row
                .currency
                .parse()
                .map_err(|e: events::CurrencyError| corrupt(e.to_string()))?,
            status: PaymentStatus::parse(&row.status)
                .ok_or_else(|| corrupt(format!("unknown status {}", row.status)))?,
            decline_reason: row.decline_reason,
            created_at: row.created_at,
        })
    }
}
