//! Consumes `order.created`: charges each order through the payment gateway, stores one
//! payment per order — `COMPLETED` or, when declined, `FAILED` — and queues
//! `payment.completed` or `payment.failed` for it.
//!
//! Per batch:
//! 1. decode every message; what does not decode is poison (dead-lettered by the runner);
//! 2. with a remote gateway, one query finds the orders that already have a payment (a
//!    redelivery or replay), so the gateway is not asked again; the simulated gateway
//!    costs nothing to ask again, so the hot path skips that round trip;
//! 3. the other orders are charged ([`crate::charging`]: concurrently when the gateway is
//!    remote; a failure becomes a retry, a wait or a dead letter by what it means);
//! 4. one transaction stores what is new ([`crate::store::store_new`], the one place that
//!    decides it) and queues the new payments' events in the outbox.
//!
//! A database error is an outage (the runner retries the whole batch) unless it is one
//! that would recur however often it is tried — a value the database refuses — which the
//! runner pins to its message by splitting the batch ([`service_kit::db_failure`]).

use std::collections::{HashMap, HashSet};

use consumer::{BatchError, BatchHandler, Failure, Message, Outcome};
use events::{Envelope, OrderCreated, TraceContext};
use outbox::Outbox;
use sqlx::PgPool;
use uuid::Uuid;

use crate::charging::{self, Charging};
use crate::domain::{NewPayment, Payment};
use crate::gateway::{ChargeRequest, Gateway};
use crate::store;

pub struct OnOrderCreated {
    pub pool: PgPool,
    /// Where the payments' events are queued.
    pub outbox: Outbox,
    /// The gateway, and what the process remembers of its answers.
    pub charging: Charging,
}

impl OnOrderCreated {
    pub fn new(pool: PgPool, outbox: Outbox, gateway: Gateway, gateway_concurrency: usize) -> Self {
        Self {
            pool,
            outbox,
            charging: Charging::new(gateway, gateway_concurrency),
        }
    }
}

impl BatchHandler for OnOrderCreated {
    async fn handle(&self, batch: &[Message]) -> Result<Vec<Outcome>, BatchError> {
        let mut outcomes = vec![Outcome::Applied; batch.len()];
        let mut orders: Vec<(usize, Envelope<OrderCreated>)> = Vec::new();
        for (index, message) in batch.iter().enumerate() {
            match Envelope::<OrderCreated>::decode(message.payload.as_deref()) {
                Ok(event) => orders.push((index, event)),
                Err(e) => outcomes[index] = Outcome::DeadLetter(Failure::poison(&e)),
            }
        }
        if orders.is_empty() {
            return Ok(outcomes);
        }
        let database = |e| service_kit::db_failure::batch_error("payment database", e);

        let paid: HashSet<Uuid> = if self.charging.gateway.is_remote() {
            let order_ids: Vec<Uuid> = orders.iter().map(|(_, e)| e.payload.order_id).collect();
            store::paid_orders(&self.pool, &order_ids)
                .await
                .map_err(database)?
                .into_iter()
                .collect()
        } else {
            HashSet::new()
        };

        // Each charge is a hop of its order's trace, and its payment event continues it.
        let hops: HashMap<Uuid, TraceContext> = orders
            .iter()
            .filter_map(|(index, e)| {
                Some((e.payload.order_id, batch[*index].trace.as_ref()?.child()))
            })
            .collect();
        let to_charge = orders
            .iter()
            .filter(|(_, e)| !paid.contains(&e.payload.order_id))
            .map(|(index, e)| charging::Order {
                trace: hops.get(&e.payload.order_id).cloned(),
                request: ChargeRequest {
                    order_id: e.payload.order_id,
                    amount: e.payload.amount,
                    currency: e.payload.currency,
                },
                redriven: batch[*index]
                    .last_header_text(kafka::dead_letter::REDRIVEN_FROM)
                    .is_some(),
            })
            .collect();
        let charges = self.charging.charge_all(to_charge).await;
        let mut applied = Vec::with_capacity(orders.len());
        let mut charged = Vec::with_capacity(orders.len());
        for (index, event) in &orders {
            // A message repeated in the batch shares its order's one charge.
            match charges.get(&event.payload.order_id) {
                // Paid before.
                None => applied.push(event.event_id),
                Some(Ok(charge)) => {
                    applied.push(event.event_id);
                    charged.push(NewPayment {
                        event,
                        charge: charge.clone(),
                        trace: hops
                            .get(&event.payload.order_id)
                            .or(batch[*index].trace.as_ref()),
                    });
                }
                Some(Err(outcome)) => outcomes[*index] = outcome.clone(),
            }
        }
        let mut tx = self.pool.begin().await.map_err(database)?;
        let stored = store::store_new(&mut tx, &applied, &charged)
            .await
            .map_err(database)?;
        let events = self
            .events_of(&stored.payments, &charged)
            .map_err(database)?;
        self.outbox.commit(tx, events).await.map_err(database)?;
        self.charging
            .forget(orders.iter().map(|(_, e)| e.payload.order_id));
        for (index, event) in &orders {
            if !matches!(outcomes[*index], Outcome::Applied) {
                continue;
            }
            let duplicate = !stored.fresh.contains(&event.event_id);
            if duplicate {
                outcomes[*index] = Outcome::Duplicate;
            }
            log_settled(&batch[*index], event, duplicate);
        }
        tracing::debug!(
            events = applied.len(),
            charged = charged.len(),
            stored = stored.payments.len(),
            "orders charged"
        );
        Ok(outcomes)
    }
}

/// One line per order settled, with everything needed to follow it.
fn log_settled(message: &Message, event: &Envelope<OrderCreated>, duplicate: bool) {
    let trace = message.trace.as_ref();
    tracing::debug!(
        topic = %message.topic, partition = message.partition, offset = message.offset,
        event_id = %event.event_id, order_id = %event.payload.order_id,
        correlation_id = %event.correlation_id,
        trace_id = trace.map_or("-", |t| t.trace_id.as_str()),
        request_id = trace.map_or("-", |t| t.request_id.as_str()),
        duplicate,
        "order.created settled"
    );
}

impl OnOrderCreated {
    /// The events of the payments just stored, each with the correlation id and trace of
    /// the order it pays.
    fn events_of(
        &self,
        payments: &[Payment],
        charged: &[NewPayment<'_>],
    ) -> Result<outbox::Events, sqlx::Error> {
        let origins: HashMap<Uuid, &NewPayment> = charged
            .iter()
            .map(|p| (p.event.payload.order_id, p))
            .collect();
        let mut events = self.outbox.events();
        for payment in payments {
            let (correlation, trace) = origins
                .get(&payment.order_id)
                .map_or((payment.order_id, None), |p| {
                    (p.event.correlation_id, p.trace)
                });
            payment
                .queue_event(&mut events, correlation, trace)
                .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        }
        Ok(events)
    }
}
