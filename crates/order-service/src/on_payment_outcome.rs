//! Consumes the payment outcome: `payment.completed` moves an order from `PENDING` to
//! `PAID`, `payment.failed` from `PENDING` to `PAYMENT_FAILED`.
//!
//! The payload type is chosen by the event type the message declares, whatever topic it
//! came from. One transaction per batch: the events' ids go into the inbox (a redelivered
//! event is recognised there and changes nothing), then one `UPDATE` per outcome moves
//! the orders. Only a `PENDING` order moves, so an order's outcome is set once.

use consumer::{BatchHandler, Failure, Outage, Outcome, Record};
use events::{DecodeError, Envelope, EventType, PaymentCompleted, PaymentFailed};
use sqlx::PgPool;
use uuid::Uuid;

/// The name this consumer records its processed events under.
pub const CONSUMER: &str = "order-service.payments";

pub struct OnPaymentOutcome {
    pub pool: PgPool,
}

/// What a payment event means for its order.
struct Settlement {
    event_id: Uuid,
    order_id: Uuid,
    paid: bool,
}

impl Settlement {
    fn decode(message: &Record) -> Result<Self, DecodeError> {
        let bytes = message.payload.as_deref();
        match EventType::of(bytes, "payment.completed or payment.failed")? {
            EventType::PaymentCompleted => {
                let e = Envelope::<PaymentCompleted>::decode(bytes)?;
                Ok(Self {
                    event_id: e.event_id,
                    order_id: e.payload.order_id,
                    paid: true,
                })
            }
            EventType::PaymentFailed => {
                let e = Envelope::<PaymentFailed>::decode(bytes)?;
                Ok(Self {
                    event_id: e.event_id,
                    order_id: e.payload.order_id,
                    paid: false,
                })
            }
            other => Err(DecodeError::WrongType {
                expected: "payment.completed or payment.failed",
                got: other.name(),
            }),
        }
    }
}

impl BatchHandler for OnPaymentOutcome {
    async fn handle(&self, batch: &[Record]) -> Result<Vec<Outcome>, Outage> {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut settlements = Vec::new();
        for message in batch {
            match Settlement::decode(message) {
                Ok(settlement) => {
                    settlements.push(settlement);
                    outcomes.push(Outcome::Applied);
                }
                Err(e) => {
                    outcomes.push(Outcome::DeadLetter(Failure::new(e.class(), e.to_string())));
                }
            }
        }
        if !settlements.is_empty() {
            settle(&self.pool, &settlements)
                .await
                .map_err(|e| Outage(format!("order database: {e}")))?;
        }
        Ok(outcomes)
    }
}

async fn settle(pool: &PgPool, settlements: &[Settlement]) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    let event_ids: Vec<Uuid> = settlements.iter().map(|s| s.event_id).collect();
    let fresh = outbox::inbox::record_new(&mut tx, CONSUMER, &event_ids).await?;
    let orders = |paid: bool| -> Vec<Uuid> {
        settlements
            .iter()
            .filter(|s| s.paid == paid && fresh.contains(&s.event_id))
            .map(|s| s.order_id)
            .collect()
    };
    let paid = sqlx::query(
        "UPDATE orders SET status = 'PAID', paid_at = now(), updated_at = now()
         WHERE id = ANY($1) AND status = 'PENDING'",
    )
    .bind(orders(true))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let failed = sqlx::query(
        "UPDATE orders SET status = 'PAYMENT_FAILED', updated_at = now()
         WHERE id = ANY($1) AND status = 'PENDING'",
    )
    .bind(orders(false))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    tracing::debug!(
        events = settlements.len(),
        new = fresh.len(),
        paid,
        failed,
        "payments applied"
    );
    Ok(())
}
