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

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use events::{
    Amount, Currency, Envelope, OrderCreated, PaymentCompleted, PaymentFailed, Topics, TraceContext,
};
use outbox::OutboxRow;
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::gateway::Charge;

/// The name the `order.created` consumer records its processed events under.
pub const CONSUMER: &str = "payment-service.order-created";

/// Where a payment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    /// The gateway approved the charge.
    Completed,
    /// The gateway declined the charge; the order is never charged again.
    Failed,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Completed => "COMPLETED",
            PaymentStatus::Failed => "FAILED",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "COMPLETED" => Some(PaymentStatus::Completed),
            "FAILED" => Some(PaymentStatus::Failed),
            _ => None,
        }
    }
}

/// An order charged by the gateway, to be stored as a payment.
#[derive(Debug, Clone)]
pub struct NewPayment<'a> {
    /// The event that asked for it.
    pub event: &'a Envelope<OrderCreated>,
    pub charge: Charge,
    /// The trace the order came with, continued by its payment event.
    pub trace: Option<&'a TraceContext>,
}

/// What [`store_new`] wrote.
#[derive(Debug, Default)]
pub struct Stored {
    /// The payments inserted.
    pub payments: Vec<Payment>,
    /// The events settled for the first time; the others of `applied` were duplicates.
    pub fresh: HashSet<Uuid>,
}

/// A stored payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Payment {
    pub id: Uuid,
    pub order_id: Uuid,
    /// Exact decimal with two places, written as a JSON number.
    #[schema(value_type = f64, example = 222.22)]
    pub amount: Amount,
    #[schema(value_type = String, example = "USD")]
    pub currency: Currency,
    /// `COMPLETED`, or `FAILED` when the gateway declined the charge.
    pub status: PaymentStatus,
    /// The gateway's reason, for a declined charge.
    pub decline_reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The event a payment is published as.
#[derive(Debug, Clone)]
pub enum PaymentEvent {
    Completed(Envelope<PaymentCompleted>),
    Failed(Envelope<PaymentFailed>),
}

impl PaymentEvent {
    pub fn outbox_row(&self, topics: &Topics) -> Result<OutboxRow, serde_json::Error> {
        match self {
            PaymentEvent::Completed(event) => OutboxRow::event(topics, event),
            PaymentEvent::Failed(event) => OutboxRow::event(topics, event),
        }
    }
}

impl Payment {
    /// `payment.completed`, or `payment.failed` with the decline reason, carrying the
    /// correlation id of the order's event.
    pub fn event(&self, correlation_id: Uuid) -> PaymentEvent {
        let (payment_id, order_id, amount, currency) =
            (self.id, self.order_id, self.amount, self.currency);
        match (&self.status, &self.decline_reason) {
            (PaymentStatus::Failed, reason) => PaymentEvent::Failed(Envelope::new(
                correlation_id,
                PaymentFailed {
                    payment_id,
                    order_id,
                    amount,
                    currency,
                    reason: reason.clone().unwrap_or_default(),
                },
            )),
            (PaymentStatus::Completed, _) => PaymentEvent::Completed(Envelope::new(
                correlation_id,
                PaymentCompleted {
                    payment_id,
                    order_id,
                    amount,
                    currency,
                },
            )),
        }
    }
}

/// Stores what is new of `charged` (see the module's documentation) and queues the
/// events of the payments inserted, all in the caller's transaction. `applied` are the
/// ids of every event settled in this batch, charged now or paid before.
pub async fn store_new(
    tx: &mut PgConnection,
    topics: &Topics,
    applied: &[Uuid],
    charged: &[NewPayment<'_>],
) -> sqlx::Result<Stored> {
    let fresh = outbox::inbox::record_new(tx, CONSUMER, applied).await?;
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

    let origins: HashMap<Uuid, (Uuid, Option<&TraceContext>)> = new
        .iter()
        .map(|p| (p.event.payload.order_id, (p.event.correlation_id, p.trace)))
        .collect();
    let mut outgoing = Vec::with_capacity(payments.len());
    for payment in &payments {
        let (correlation, trace) = origins
            .get(&payment.order_id)
            .copied()
            .unwrap_or((payment.order_id, None));
        let row = payment
            .event(correlation)
            .outbox_row(topics)
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?
            .traced(trace);
        outgoing.push(row);
    }
    outbox::enqueue(tx, &outgoing).await?;
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
