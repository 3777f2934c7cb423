//! Consumes `payment.completed` and moves each paid order from `PENDING` to `PAID`.
//!
//! One transaction per batch: the events' ids go into `processed_events` (a redelivered
//! event is recognised there and changes nothing), then one `UPDATE` marks the orders.

use std::collections::HashSet;

use consumer::{BatchHandler, Incoming, Outcome, Transient};
use events::{Envelope, EventType, PaymentCompleted};
use sqlx::PgPool;
use uuid::Uuid;

/// The name this consumer records its processed events under.
pub const CONSUMER: &str = "order-service.payment-completed";

pub struct PaymentCompletedHandler {
    pub pool: PgPool,
}

impl BatchHandler for PaymentCompletedHandler {
    async fn handle(&self, batch: &[Incoming]) -> Result<Vec<Outcome>, Transient> {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut event_ids = Vec::new();
        let mut order_ids = Vec::new();
        for message in batch {
            match Envelope::<PaymentCompleted>::decode(
                message.payload.as_deref(),
                EventType::PaymentCompleted,
            ) {
                Ok(event) => {
                    event_ids.push(event.event_id);
                    order_ids.push(event.payload.order_id);
                    outcomes.push(Outcome::Done);
                }
                Err(e) => outcomes.push(Outcome::Poison(e.to_string())),
            }
        }
        if !event_ids.is_empty() {
            mark_paid(&self.pool, &event_ids, &order_ids)
                .await
                .map_err(|e| Transient(format!("order database: {e}")))?;
        }
        Ok(outcomes)
    }
}

async fn mark_paid(pool: &PgPool, event_ids: &[Uuid], order_ids: &[Uuid]) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    let fresh: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO processed_events (consumer, event_id)
         SELECT $1, e FROM unnest($2::uuid[]) AS e
         ON CONFLICT DO NOTHING RETURNING event_id",
    )
    .bind(CONSUMER)
    .bind(event_ids)
    .fetch_all(&mut *tx)
    .await?;
    let fresh: HashSet<Uuid> = fresh.into_iter().collect();
    let paid: Vec<Uuid> = event_ids
        .iter()
        .zip(order_ids)
        .filter(|(event, _)| fresh.contains(*event))
        .map(|(_, order)| *order)
        .collect();
    let updated = sqlx::query(
        "UPDATE orders SET status = 'PAID', paid_at = now(), updated_at = now()
         WHERE id = ANY($1) AND status = 'PENDING'",
    )
    .bind(&paid)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    tracing::debug!(
        events = event_ids.len(),
        new = fresh.len(),
        updated,
        "payments applied"
    );
    Ok(())
}
