//! Consumes `order.created`: charges each order through the payment gateway, stores one
//! payment per order — `COMPLETED` or, when declined, `FAILED` — and queues
//! `payment.completed` or `payment.failed` for it.
//!
//! Per batch:
//! 1. decode every message; what does not decode is poison (dead-lettered by the runner);
//! 2. with a remote gateway, one query finds the orders that already have a payment (a
//!    redelivery or replay): they are not charged again. The simulated gateway costs
//!    nothing to ask again, so the hot path skips that round trip; step 4 keeps one
//!    payment per order either way;
//! 3. the other orders are charged, concurrently when the gateway is remote. A charge
//!    that fails transiently asks the runner to retry that message alone; one the gateway
//!    refuses is dead-lettered;
//! 4. one transaction of set-based statements records the settled events in
//!    `processed_events`, inserts the payments (`ON CONFLICT (order_id) DO NOTHING`, so
//!    an order is never paid twice) and queues their events in the outbox.
//!
//! A database error at any step is an outage: the runner retries the whole batch, and
//! the charges are repeated under the same idempotency key, which cannot charge twice.

use std::collections::{HashMap, HashSet};

use consumer::{BatchHandler, Failure, Incoming, Outcome, Transient};
use events::{
    Amount, Currency, Envelope, EventType, OrderCreated, PaymentCompleted, PaymentFailed, Topics,
};
use futures::StreamExt;
use outbox::OutboxRow;
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use crate::gateway::{Charge, ChargeRequest, Gateway};

/// The name this consumer records its processed events under.
pub const CONSUMER: &str = "payment-service.order-created";

pub struct OrderCreatedHandler {
    pub pool: PgPool,
    pub topics: Topics,
    pub gateway: Gateway,
    /// Most charges in flight at once, for a remote gateway.
    pub gateway_concurrency: usize,
}

impl BatchHandler for OrderCreatedHandler {
    async fn handle(&self, batch: &[Incoming]) -> Result<Vec<Outcome>, Transient> {
        let mut outcomes = vec![Outcome::Done; batch.len()];
        let mut orders: Vec<(usize, Envelope<OrderCreated>)> = Vec::new();
        for (index, message) in batch.iter().enumerate() {
            match Envelope::<OrderCreated>::decode(
                message.payload.as_deref(),
                EventType::OrderCreated,
            ) {
                Ok(event) => orders.push((index, event)),
                Err(e) => outcomes[index] = Outcome::Poison(Failure::new(e.class(), e.to_string())),
            }
        }
        if orders.is_empty() {
            return Ok(outcomes);
        }
        let outage = |e: sqlx::Error| Transient(format!("payment database: {e}"));

        let paid = if self.gateway.is_remote() {
            let order_ids: Vec<Uuid> = orders.iter().map(|(_, e)| e.payload.order_id).collect();
            sqlx::query_scalar("SELECT order_id FROM payments WHERE order_id = ANY($1)")
                .bind(&order_ids)
                .fetch_all(&self.pool)
                .await
                .map_err(outage)?
                .into_iter()
                .collect()
        } else {
            HashSet::new()
        };

        let charges = self.charge_all(&orders, &paid).await;
        let mut settled = Vec::with_capacity(orders.len());
        for (index, event) in &orders {
            match charges.get(&event.payload.order_id) {
                None => settled.push(Settled {
                    event,
                    charge: None,
                }),
                Some(Ok(charge)) => settled.push(Settled {
                    event,
                    charge: Some(charge.clone()),
                }),
                Some(Err(e)) => {
                    let failure = Failure::new(e.class(), e.to_string());
                    outcomes[*index] = match e {
                        crate::gateway::GatewayError::Unavailable(_) => Outcome::Retry(failure),
                        crate::gateway::GatewayError::Refused(_) => Outcome::Poison(failure),
                    };
                }
            }
        }
        self.record(&settled).await.map_err(outage)?;
        Ok(outcomes)
    }
}

/// An event whose order is settled: charged now, or (`charge: None`) paid before.
struct Settled<'a> {
    event: &'a Envelope<OrderCreated>,
    charge: Option<Charge>,
}

impl OrderCreatedHandler {
    /// Charges each order not in `paid`, once per order even if the batch holds it twice.
    async fn charge_all(
        &self,
        orders: &[(usize, Envelope<OrderCreated>)],
        paid: &HashSet<Uuid>,
    ) -> HashMap<Uuid, Result<Charge, crate::gateway::GatewayError>> {
        let mut seen = HashSet::new();
        let requests: Vec<ChargeRequest> = orders
            .iter()
            .map(|(_, e)| &e.payload)
            .filter(|o| !paid.contains(&o.order_id) && seen.insert(o.order_id))
            .map(|o| ChargeRequest {
                order_id: o.order_id,
                amount: o.amount,
                currency: o.currency,
            })
            .collect();
        let concurrency = if self.gateway.is_remote() {
            self.gateway_concurrency.max(1)
        } else {
            1
        };
        futures::stream::iter(requests)
            .map(|request| async move {
                let result = self.gateway.charge(&request).await;
                (request.order_id, result)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await
    }

    /// One transaction: processed events, payments, and their outgoing events.
    async fn record(&self, settled: &[Settled<'_>]) -> sqlx::Result<()> {
        let mut tx = self.pool.begin().await?;
        let event_ids: Vec<Uuid> = settled.iter().map(|s| s.event.event_id).collect();
        let fresh =
            service_kit::processed_events::record_new(&mut tx, CONSUMER, &event_ids).await?;

        let new: Vec<(&Envelope<OrderCreated>, &Charge)> = settled
            .iter()
            .filter(|s| fresh.contains(&s.event.event_id))
            .filter_map(|s| s.charge.as_ref().map(|c| (s.event, c)))
            .collect();
        let payment_ids: Vec<Uuid> = new.iter().map(|_| Uuid::now_v7()).collect();
        let order_ids: Vec<Uuid> = new.iter().map(|(e, _)| e.payload.order_id).collect();
        let amounts: Vec<Decimal> = new.iter().map(|(e, _)| e.payload.amount.value()).collect();
        let currencies: Vec<&str> = new.iter().map(|(e, _)| e.payload.currency.code()).collect();
        let statuses: Vec<&str> = new
            .iter()
            .map(|(_, c)| match c {
                Charge::Approved { .. } => "COMPLETED",
                Charge::Declined { .. } => "FAILED",
            })
            .collect();
        let references: Vec<Option<&str>> = new
            .iter()
            .map(|(_, c)| match c {
                Charge::Approved { reference } => Some(reference.as_str()),
                Charge::Declined { .. } => None,
            })
            .collect();
        let reasons: Vec<Option<&str>> = new
            .iter()
            .map(|(_, c)| match c {
                Charge::Approved { .. } => None,
                Charge::Declined { reason } => Some(reason.as_str()),
            })
            .collect();
        let stored: Vec<(Uuid, Uuid, Decimal, String, Option<String>)> = sqlx::query_as(
            "INSERT INTO payments (id, order_id, amount, currency, status, gateway_reference, decline_reason)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::numeric[], $4::text[], $5::text[], $6::text[], $7::text[])
             ON CONFLICT (order_id) DO NOTHING
             RETURNING id, order_id, amount, currency, decline_reason",
        )
        .bind(&payment_ids)
        .bind(&order_ids)
        .bind(&amounts)
        .bind(&currencies)
        .bind(&statuses)
        .bind(&references)
        .bind(&reasons)
        .fetch_all(&mut *tx)
        .await?;

        let correlations: HashMap<Uuid, Uuid> = new
            .iter()
            .map(|(e, _)| (e.payload.order_id, e.correlation_id))
            .collect();
        let mut rows = Vec::with_capacity(stored.len());
        for (payment_id, order_id, amount, currency, declined) in stored {
            let correlation = correlations.get(&order_id).copied().unwrap_or(order_id);
            let amount = Amount::new(amount).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            let currency = currency
                .parse::<Currency>()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            let key = order_id.to_string();
            let row = match declined {
                None => OutboxRow::event(
                    &self.topics.payment_completed,
                    &key,
                    &Envelope::new(
                        EventType::PaymentCompleted,
                        correlation,
                        PaymentCompleted {
                            payment_id,
                            order_id,
                            amount,
                            currency,
                        },
                    ),
                ),
                Some(reason) => OutboxRow::event(
                    &self.topics.payment_failed,
                    &key,
                    &Envelope::new(
                        EventType::PaymentFailed,
                        correlation,
                        PaymentFailed {
                            payment_id,
                            order_id,
                            amount,
                            currency,
                            reason,
                        },
                    ),
                ),
            }
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            rows.push(row);
        }
        outbox::enqueue(&mut tx, &rows).await?;
        tx.commit().await?;
        tracing::debug!(
            events = settled.len(),
            new = new.len(),
            stored = rows.len(),
            "orders charged"
        );
        Ok(())
    }
}
