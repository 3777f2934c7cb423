//! Consumes the payment outcome: `payment.completed` moves an order from `PENDING` to
//! `PAID`, `payment.failed` from `PENDING` to `PAYMENT_FAILED`.
//!
//! The payload type is chosen by the event type the message declares, whatever topic it
//! came from. An event is checked against the order it names before it is trusted: one
//! for an order this service does not have, or with another amount or currency, is
//! poison (`poison.unknown-order`, `poison.amount-mismatch`) and changes nothing.
//!
//! One transaction per batch: the orders named are read, the events' ids go into the
//! inbox (a redelivered event is recognised there and changes nothing), then one `UPDATE`
//! per outcome moves the orders. Only a `PENDING` order moves, so an order's outcome is
//! set once.

use std::collections::{HashMap, HashSet};

use consumer::{class, BatchError, BatchHandler, Failure, Message, Outcome};
use events::{
    Amount, Currency, DecodeError, Envelope, EventType, PaymentCompleted, PaymentFailed,
    TraceContext,
};
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

/// The name this consumer records the events it applied under, in the inbox.
pub const INBOX_NAME: &str = "order-service.payments";

pub struct OnPaymentOutcome {
    pub pool: PgPool,
}

/// What a payment event means for its order.
struct Settlement {
    /// Its place in the batch.
    index: usize,
    event_id: Uuid,
    order_id: Uuid,
    amount: Amount,
    currency: Currency,
    paid: bool,
    correlation_id: Uuid,
    trace: Option<TraceContext>,
}

impl Settlement {
    fn decode(index: usize, message: &Message) -> Result<Self, DecodeError> {
        let bytes = message.payload.as_deref();
        let trace = message.trace.clone();
        let settlement = |event_id, correlation_id, order_id, amount, currency, paid| Self {
            index,
            event_id,
            order_id,
            amount,
            currency,
            paid,
            correlation_id,
            trace,
        };
        match EventType::of(bytes, "payment.completed or payment.failed")? {
            EventType::PaymentCompleted => {
                let e = Envelope::<PaymentCompleted>::decode(bytes)?;
                let p = e.payload;
                Ok(settlement(
                    e.event_id,
                    e.correlation_id,
                    p.order_id,
                    p.amount,
                    p.currency,
                    true,
                ))
            }
            EventType::PaymentFailed => {
                let e = Envelope::<PaymentFailed>::decode(bytes)?;
                let p = e.payload;
                Ok(settlement(
                    e.event_id,
                    e.correlation_id,
                    p.order_id,
                    p.amount,
                    p.currency,
                    false,
                ))
            }
            other => Err(DecodeError::WrongType {
                expected: "payment.completed or payment.failed",
                got: other.name(),
            }),
        }
    }
}

impl BatchHandler for OnPaymentOutcome {
    async fn handle(&self, batch: &[Message]) -> Result<Vec<Outcome>, BatchError> {
        let mut outcomes = vec![Outcome::Applied; batch.len()];
        let mut settlements = Vec::new();
        for (index, message) in batch.iter().enumerate() {
            match Settlement::decode(index, message) {
                Ok(settlement) => settlements.push(settlement),
                Err(e) => {
                    outcomes[index] = Outcome::DeadLetter(Failure::poison(&e));
                }
            }
        }
        if !settlements.is_empty() {
            let settled = settle(&self.pool, &settlements)
                .await
                .map_err(|e| service_kit::db_failure::batch_error("order database", e))?;
            for (index, failure) in settled.untrusted {
                outcomes[index] = Outcome::DeadLetter(failure);
            }
            for settlement in &settlements {
                if outcomes[settlement.index] != Outcome::Applied {
                    continue;
                }
                let duplicate = !settled.fresh.contains(&settlement.event_id);
                if duplicate {
                    outcomes[settlement.index] = Outcome::Duplicate;
                }
                let message = &batch[settlement.index];
                let trace = settlement.trace.as_ref();
                tracing::debug!(
                    topic = %message.topic, partition = message.partition, offset = message.offset,
                    event_id = %settlement.event_id, order_id = %settlement.order_id,
                    correlation_id = %settlement.correlation_id,
                    trace_id = trace.map_or("-", |t| t.trace_id.as_str()),
                    request_id = trace.map_or("-", |t| t.request_id.as_str()),
                    paid = settlement.paid, duplicate,
                    "payment outcome settled"
                );
            }
        }
        Ok(outcomes)
    }
}

/// What [`settle`] found.
struct Settled {
    /// The places and reasons of the events that disagree with their orders.
    untrusted: Vec<(usize, Failure)>,
    /// The events applied for the first time; the other trusted ones were duplicates.
    fresh: HashSet<Uuid>,
}

/// Applies the settlements that agree with their orders, in one transaction.
async fn settle(pool: &PgPool, settlements: &[Settlement]) -> sqlx::Result<Settled> {
    let mut tx = pool.begin().await?;
    let order_ids: Vec<Uuid> = settlements.iter().map(|s| s.order_id).collect();
    let orders: HashMap<Uuid, (Decimal, String)> = sqlx::query_as::<_, (Uuid, Decimal, String)>(
        "SELECT id, amount, currency FROM orders WHERE id = ANY($1)",
    )
    .bind(&order_ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(id, amount, currency)| (id, (amount, currency)))
    .collect();
    let mut untrusted = Vec::new();
    let mut trusted = Vec::with_capacity(settlements.len());
    for settlement in settlements {
        match orders.get(&settlement.order_id) {
            None => untrusted.push((
                settlement.index,
                Failure::new(
                    class::POISON_UNKNOWN_ORDER,
                    format!("no order {} here", settlement.order_id),
                ),
            )),
            Some((amount, currency))
                if *amount != settlement.amount.value()
                    || currency != settlement.currency.code() =>
            {
                untrusted.push((
                    settlement.index,
                    Failure::new(
                        class::POISON_AMOUNT_MISMATCH,
                        format!(
                            "the event says {} {} but order {} is for {amount} {currency}",
                            settlement.amount, settlement.currency, settlement.order_id
                        ),
                    ),
                ));
            }
            Some(_) => trusted.push(settlement),
        }
    }
    let event_ids: Vec<Uuid> = trusted.iter().map(|s| s.event_id).collect();
    let fresh = outbox::inbox::record_new(&mut tx, INBOX_NAME, &event_ids).await?;
    let orders = |paid: bool| -> Vec<Uuid> {
        trusted
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
        untrusted = untrusted.len(),
        paid,
        failed,
        "payments applied"
    );
    Ok(Settled { untrusted, fresh })
}
