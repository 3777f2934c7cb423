//! Consumes `order.created`: one payment per order, and a `payment.completed` for it.
//!
//! A batch is applied in one transaction of three set-based statements, whatever its
//! size: record the events in `processed_events` (a redelivered event is recognised and
//! skipped), insert the payments of the new ones (`ON CONFLICT (order_id) DO NOTHING`, so
//! an order is never paid twice even if it were published twice under different event
//! ids), and queue a `payment.completed` for each payment actually inserted.

use std::collections::{HashMap, HashSet};

use consumer::{BatchHandler, Incoming, Outcome, Transient};
use events::{Amount, Currency, Envelope, EventType, OrderCreated, PaymentCompleted, Topics};
use outbox::OutboxRow;
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

/// The name this consumer records its processed events under.
pub const CONSUMER: &str = "payment-service.order-created";

pub struct OrderCreatedHandler {
    pub pool: PgPool,
    pub topics: Topics,
}

impl BatchHandler for OrderCreatedHandler {
    async fn handle(&self, batch: &[Incoming]) -> Result<Vec<Outcome>, Transient> {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut orders = Vec::new();
        for message in batch {
            match Envelope::<OrderCreated>::decode(
                message.payload.as_deref(),
                EventType::OrderCreated,
            ) {
                Ok(event) => {
                    orders.push(event);
                    outcomes.push(Outcome::Done);
                }
                Err(e) => outcomes.push(Outcome::Poison(e.to_string())),
            }
        }
        if !orders.is_empty() {
            self.pay(&orders)
                .await
                .map_err(|e| Transient(format!("payment database: {e}")))?;
        }
        Ok(outcomes)
    }
}

impl OrderCreatedHandler {
    async fn pay(&self, orders: &[Envelope<OrderCreated>]) -> sqlx::Result<()> {
        let mut tx = self.pool.begin().await?;
        let event_ids: Vec<Uuid> = orders.iter().map(|e| e.event_id).collect();
        let fresh: HashSet<Uuid> = sqlx::query_scalar::<_, Uuid>(
            "INSERT INTO processed_events (consumer, event_id)
             SELECT $1, e FROM unnest($2::uuid[]) AS e
             ON CONFLICT DO NOTHING RETURNING event_id",
        )
        .bind(CONSUMER)
        .bind(&event_ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();

        let new: Vec<&Envelope<OrderCreated>> = orders
            .iter()
            .filter(|e| fresh.contains(&e.event_id))
            .collect();
        let payment_ids: Vec<Uuid> = new.iter().map(|_| Uuid::now_v7()).collect();
        let order_ids: Vec<Uuid> = new.iter().map(|e| e.payload.order_id).collect();
        let amounts: Vec<Decimal> = new.iter().map(|e| e.payload.amount.value()).collect();
        let currencies: Vec<&str> = new.iter().map(|e| e.payload.currency.code()).collect();
        let paid: Vec<(Uuid, Uuid, Decimal, String)> = sqlx::query_as(
            "INSERT INTO payments (id, order_id, amount, currency, status)
             SELECT p, o, a, c, 'COMPLETED'
             FROM unnest($1::uuid[], $2::uuid[], $3::numeric[], $4::text[]) AS t(p, o, a, c)
             ON CONFLICT (order_id) DO NOTHING
             RETURNING id, order_id, amount, currency",
        )
        .bind(&payment_ids)
        .bind(&order_ids)
        .bind(&amounts)
        .bind(&currencies)
        .fetch_all(&mut *tx)
        .await?;

        let correlations: HashMap<Uuid, Uuid> = new
            .iter()
            .map(|e| (e.payload.order_id, e.correlation_id))
            .collect();
        let mut rows = Vec::with_capacity(paid.len());
        for (payment_id, order_id, amount, currency) in &paid {
            let correlation = correlations.get(order_id).copied().unwrap_or(*order_id);
            let event = Envelope::new(
                EventType::PaymentCompleted,
                correlation,
                PaymentCompleted {
                    payment_id: *payment_id,
                    order_id: *order_id,
                    amount: Amount::new(*amount).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                    currency: currency
                        .parse::<Currency>()
                        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                },
            );
            let row = OutboxRow::event(
                &self.topics.payment_completed,
                &order_id.to_string(),
                &event,
            )
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            rows.push(row);
        }
        outbox::enqueue(&mut tx, &rows).await?;
        tx.commit().await?;
        tracing::debug!(
            events = orders.len(),
            new = new.len(),
            paid = paid.len(),
            "orders paid"
        );
        Ok(())
    }
}
